"""The RHX emulator speaks RHX v3.4.0's TCP interface on loopback (spec: ../shared/spec/devices.md §2)."""

import socket
import time

import numpy as np
import pytest

from rigctl.drivers import _rhx_wire as rw
from rigctl.sim.rhx_emulator import RHXEmulator
from test_emulator_fakes import ClockBackend


@pytest.fixture
def emu():
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    e = RHXEmulator(backend, channel_names=[f"A-{i:03d}" for i in range(8)] + [f"B-{i:03d}" for i in range(8)],
                    step_uA=0.5).start()
    yield e
    e.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ask(s: socket.socket, text: str, until: str) -> str:
    s.sendall(text.encode())
    buf = b""
    deadline = time.monotonic() + 2.0
    while until.encode() not in buf:
        assert time.monotonic() < deadline, buf
        buf += s.recv(65536)
    return buf.decode()


def test_replies_are_unterminated_sets_silent_errors_are_sentences(emu):
    s = connect(emu.command_port)
    assert ask(s, "get type", "Record") == "Return: Type ControllerStimRecord"
    assert ask(s, "GET SampleRateHertz;get stimstepsizemicroamps", "Amps 0.5") == \
        "Return: SampleRateHertz 25000Return: StimStepSizeMicroAmps 0.5"
    reply = ask(s, "set a-001.firstphaseamplitudemicroamps 12.5;get A-001.FirstPhaseAmplitudeMicroAmps", "Amps 12.5")
    assert reply == "Return: FirstPhaseAmplitudeMicroAmps 12.5"  # the set said nothing
    reply = ask(s, "set a-001.firstphaseamplitudemicroamps 3000;set a-001.bogus 1;set x;get runmode", "RunMode Stop")
    assert reply == ("Invalid value for FirstPhaseAmplitudeMicroAmps command. Acceptable: [ 0 , 2550 ]"
                     "Unrecognized parameterError - Command 3: Set commands require a parameter and a value"
                     "Return: RunMode Stop")
    assert ask(s, "set a-002.pulsetrainperiodmicroseconds 1000000;get a-002.pulsetrainperiodmicroseconds",
               "e+06") == "Return: PulseTrainPeriodMicroseconds 1e+06"  # doubles print with %g
    assert ask(s, "get currenttimestamp", "-1") == "Return: -1"  # stopped
    s.close()


def test_one_client_and_no_listening_after_it_leaves(emu):
    s = connect(emu.command_port)
    ask(s, "get runmode", "Stop")
    assert emu.command_status == "Connected"
    s.close()
    deadline = time.monotonic() + 2.0
    while emu.command_status != "Disconnected":
        assert time.monotonic() < deadline
        time.sleep(0.001)
    with pytest.raises(OSError):
        connect(emu.command_port)
    emu.press_connect()
    s = connect(emu.command_port)
    assert ask(s, "get runmode", "Stop") == "Return: RunMode Stop"
    s.close()


def read_blocks(w: socket.socket, n_words: int, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    buf = bytearray()
    stamps, words = [], []
    while sum(len(x) for x in stamps) < n_blocks * rw.FRAMES_PER_BLOCK:
        buf.extend(w.recv(65536))
        t, x, skipped = rw.parse_blocks(buf, n_words)
        assert skipped == 0
        stamps.append(t)
        words.append(x)
    return np.concatenate(stamps), np.concatenate(words)


def test_waveform_blocks_frame_order_and_the_run_batch_rule(emu):
    s = connect(emu.command_port)
    ask(s, "execute clearalldataoutputs;set b-000.tcpdataoutputenabled true;set a-003.tcpdataoutputenabled true;"
           "set a-003.tcpdataoutputenabledstim true;set tcpnumberdatablocksperwrite 3;get tcpnumberdatablocksperwrite",
        "Write 3")
    port = int(ask(s, "execute connecttcpwaveformdataoutput;get tcpwaveformdataoutputport", "Port ").split()[-1])
    w = connect(port)
    s.sendall(b"set runmode run;get runmode")  # RHX: the get waits until the run stops
    stamps, words = read_blocks(w, 3, 6)
    assert np.array_equal(stamps, np.arange(len(stamps)))
    assert len(stamps) % (3 * rw.FRAMES_PER_BLOCK) == 0 or len(stamps) >= 6 * rw.FRAMES_PER_BLOCK
    ramp = ClockBackend.ramp(0, len(stamps), 16)
    # frame order: A-003 WIDE, A-003 STIM, B-000 WIDE (electrode 8), whatever order they were enabled in
    assert np.array_equal(words[:, 0].astype(np.int32) - 32768, ramp[:, 3])
    assert np.all(words[:, 1] == 0)
    assert np.array_equal(words[:, 2].astype(np.int32) - 32768, ramp[:, 8])
    assert emu.commands[-1] == "set runmode run"  # the get has not been executed yet
    reply = ask(s, "set runmode stop", "RunMode")
    assert reply == "Return: RunMode Stop"  # the deferred get ran after the stop
    w.close()
    s.close()


def test_manual_trigger_lands_post_trigger_delay_after_the_held_clock(emu):
    s = connect(emu.command_port)
    ask(s, "execute clearalldataoutputs;set a-005.tcpdataoutputenabled true;set a-005.tcpdataoutputenabledstim true;"
           "set tcpnumberdatablocksperwrite 1;get tcpnumberdatablocksperwrite", "Write 1")
    port = int(ask(s, "execute connecttcpwaveformdataoutput;get tcpwaveformdataoutputport", "Port ").split()[-1])
    w = connect(port)
    s.sendall(b"set runmode run;")
    read_blocks(w, 2, 2)
    now = int(ask(s, "get currenttimestamp", "Return: ").split()[-1]) + 1
    batch = ("set a-005.stimenabled true;set a-005.source keypressf3;set a-005.polarity positivefirst;"
             "set a-005.firstphasedurationmicroseconds 200;set a-005.secondphasedurationmicroseconds 120;"
             "set a-005.firstphaseamplitudemicroamps 5;set a-005.secondphaseamplitudemicroamps 8.5;"
             "set a-005.pulseortrain singlepulse;set a-005.posttriggerdelaymicroseconds 20000;"
             "execute uploadstimparameters a-005;execute manualstimtriggerpulse f3;get uploadinprogress")
    assert ask(s, batch, "False") == "Return: UploadInProgress False"
    onset = now + 500  # 20 ms at 25 kHz
    stamps, words = read_blocks(w, 2, (onset + 300) // 128 + 1)
    got = emu.backend.got
    assert len(got) == 1 and got[0].sample == onset and got[0].electrodes == (5,)
    p = got[0].pulse
    assert (p.phase1_amplitude, p.phase2_amplitude, p.phase1_us, p.phase2_us, p.unit) == (5.0, -8.5, 200.0, 120.0, "uA")
    stim = dict(zip(stamps.tolist(), words[:, 1].tolist()))
    assert stim[onset - 1] == 0
    assert [stim[onset + k] for k in (0, 4)] == [rw.stim_word(10, False)] * 2  # 5 µA = 10 steps of 0.5, positive
    assert [stim[onset + k] for k in (5, 7)] == [rw.stim_word(17, True)] * 2  # 3 samples of -8.5 µA
    assert stim[onset + 8] == 0
    ask(s, "set runmode stop;get runmode", "Stop")
    w.close()
    s.close()


def test_not_emulated_outputs_are_refused_not_faked(emu):
    s = connect(emu.command_port)
    reply = ask(s, "set a-000.tcpdataoutputenabledlow true;set runmode record;get runmode", "RunMode")
    assert reply.startswith("TCPDataOutputEnabledLow is not emulated") and "Recording to disk is not emulated" in reply
    s.close()
