"""The Intan RHX driver against its emulator on loopback: data, stimulation timing, refusals, faults."""

import time

import numpy as np
import pytest

from rigctl.drivers import _rhx_wire as rw
from rigctl.drivers.intan_rhx import IntanRHX
from rigctl.errors import DeviceError
from rigctl.sim.rhx_emulator import RHXEmulator
from rigctl.types import BiphasicPulse, StimCommand
from test_emulator_fakes import ClockBackend

NAMES = [f"A-{i:03d}" for i in range(8)] + [f"B-{i:03d}" for i in range(8)]
PULSE = BiphasicPulse.symmetric(10.0, 200.0, "uA")


@pytest.fixture
def setup():
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = RHXEmulator(backend, channel_names=NAMES, step_uA=1.0).start()
    drv = IntanRHX("127.0.0.1", emu.command_port, electrode_channels=NAMES, timeout_s=1.0)
    yield backend, emu, drv
    drv.close()
    emu.close()


def run(drv, n_samples: int) -> np.ndarray:
    out = []
    while drv.clock < n_samples:
        chunk = drv.read()
        out.append(chunk.samples)
        drv.on_chunk(chunk.end_sample)
    return np.concatenate(out)


def test_identity_and_data_in_electrode_order(setup):
    backend, emu, drv = setup
    assert (drv.controller_type, drv.fs, drv.step_uA, drv.version) == ("ControllerStimRecord", 25000.0, 1.0, "3.4.0")
    drv.start()
    x = run(drv, 3000)
    assert np.array_equal(x, ClockBackend.ramp(0, len(x), 16))
    assert drv.uV_per_bit == 0.195 and drv.n_channels == 16


def test_pulses_land_on_the_commanded_samples_and_keys_are_reused(setup):
    backend, emu, drv = setup
    drv.start()
    # at least the loop's look-ahead (0.2 s) ahead: the controller may run that far ahead of what was read
    cmds = [StimCommand(6000, (1, 9), PULSE), StimCommand(6005, (2,), BiphasicPulse(12.0, 80.0, -8.0, 120.0, 40.0, "uA")),
            StimCommand(12000, (1,), PULSE), StimCommand(18000, (2, 9), PULSE)]
    for c in cmds:
        drv.schedule(c)
    run(drv, 20000)
    assert emu.errors == []
    assert [(c.sample, c.electrodes) for c in backend.got] == [(c.sample, c.electrodes) for c in cmds]
    assert backend.got[1].pulse == BiphasicPulse(12.0, 80.0, -8.0, 120.0, 40.0, "uA")
    # F1 is free again for the third command, so B-001 (electrode 9) must leave F1's group; the fourth
    # goes to F2 (F1 is still armed), whose group A-002 + B-001 needs nobody disabled
    sets = [c for c in emu.commands if c.endswith("stimenabled false")]
    assert sets == ["set B-001.stimenabled false"]
    assert drv.triggers_sent == 4 and drv.pending == 0


def test_a_key_answers_only_the_commanded_electrodes(setup):
    backend, emu, drv = setup
    drv.start()
    drv.schedule(StimCommand(6000, (0, 1), PULSE))
    run(drv, 7000)
    drv.schedule(StimCommand(drv.clock + 6000, (1,), PULSE))
    run(drv, 20000)
    assert [(c.sample, c.electrodes) for c in backend.got] == [(6000, (0, 1)), (backend.got[1].sample, (1,))]
    assert backend.got[1].sample > 7000


@pytest.mark.parametrize("pulse, message", [
    (BiphasicPulse.symmetric(1000.0, 200.0, "mV"), "allowed: 'uA'"),
    (BiphasicPulse.symmetric(300.0, 200.0, "uA"), "allowed: 0 to 255 µA in steps of 1 µA"),
    (BiphasicPulse.symmetric(10.5, 200.0, "uA"), "in steps of 1 µA"),
    (BiphasicPulse.symmetric(10.0, 100.0, "uA"), "whole sample periods (40 µs at 25000 Hz)"),
])
def test_unrepresentable_pulses_are_refused_before_anything_is_sent(setup, pulse, message):
    _, emu, drv = setup
    n = len(emu.commands)
    with pytest.raises(DeviceError) as info:
        drv.schedule(StimCommand(5000, (0,), pulse))
    assert message in str(info.value)
    assert len(emu.commands) == n and drv.pending == 0


def test_rhx_error_sentences_become_device_errors(setup):
    _, _, drv = setup
    with pytest.raises(DeviceError, match=r"Invalid value for FirstPhaseAmplitudeMicroAmps command. Acceptable"):
        drv.command(["set a-000.firstphaseamplitudemicroamps 3000"], confirm="RunMode")


def test_recording_controller_cannot_stimulate(setup):
    _, _, drv = setup
    drv.controller_type = "ControllerRecordUSB3"
    with pytest.raises(DeviceError, match="cannot stimulate"):
        drv.schedule(StimCommand(5000, (0,), PULSE))


# ---- faults ---------------------------------------------------------------------------------------------

def test_command_port_lost_mid_run_then_reconnect_when_rhx_listens_again(setup):
    backend, emu, drv = setup
    drv.start()
    run(drv, 1000)
    emu.drop_command_client()
    with pytest.raises(DeviceError, match="command port closed"):
        drv.schedule(StimCommand(drv.clock + 6000, (0,), PULSE))  # arming needs the command port
    assert drv.pending == 0  # safe state: nothing left queued
    with pytest.raises(DeviceError, match="press Connect"):
        drv.reconnect()  # RHX does not listen again on its own
    emu.press_connect()
    drv.reconnect()  # a fresh, known state: the controller is stopped, stimulation disabled
    assert drv.get("RunMode") == "Stop" and not drv.faulted
    drv.start()
    chunk = drv.read()
    assert chunk.n_samples > 0
    drv.schedule(StimCommand(chunk.end_sample + 6000, (0,), PULSE))
    run(drv, chunk.end_sample + 7000)
    assert [c.sample for c in backend.got] == [chunk.end_sample + 6000]


def test_controller_that_stops_answering(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 1000)
    emu.faults.hung = True
    with pytest.raises(DeviceError, match="no waveform data for 1.0 s"):
        run(drv, 10 ** 9)
    with pytest.raises(DeviceError, match="not answering"):
        drv.get("RunMode")


def test_garbage_between_writes_is_skipped_and_counted(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 500)
    emu.faults.garbage_in_next_write = b"\x00\xffnoise\x08\x7a"
    x = run(drv, 4000)
    assert drv.garbage_bytes == 9
    assert np.array_equal(x, ClockBackend.ramp(drv.clock - len(x), len(x), 16))


def test_a_block_out_of_sequence_is_an_error(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 500)
    emu.faults.garbage_in_next_write = rw.build_block(999_999, np.zeros((128, 16), np.uint16))
    with pytest.raises(DeviceError, match="timestamps jumped"):
        run(drv, 10 ** 9)


def test_partial_block_then_disconnect(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 500)
    emu.faults.cut_next_write_at = 1000
    with pytest.raises(DeviceError, match=r"closed by RHX \(\d+ bytes of a partial block dropped\)"):
        run(drv, 10 ** 9)


def test_command_port_not_listening():
    backend = ClockBackend(n_electrodes=16)
    emu = RHXEmulator(backend, channel_names=NAMES).start()
    port = emu.command_port
    emu.close()
    with pytest.raises(DeviceError, match="cannot connect to the command port"):
        IntanRHX("127.0.0.1", port, electrode_channels=NAMES, timeout_s=0.2)


def emulator_stim_enabled(emu) -> list[str]:
    """Channels the controller holds (or has uploaded) with stimulation enabled, asked the way a client
    asks: `get <channel>.StimEnabled` through the emulator's own command handling."""
    on = [n for n in emu.names if emu._get(f"{n}.stimenabled") != "Return: StimEnabled False"]
    return sorted(set(on) | {n.upper() for n, p in emu.uploaded.items() if p["stimenabled"]})


def test_a_channel_armed_in_a_batch_whose_reply_times_out_is_disabled_and_never_fires(setup):
    """Issue 11 item 4: the arming batch reaches the controller (channel enabled, trigger latched) but
    its reply is late. The DeviceError must leave no channel enabled and no pulse may reach the culture."""
    backend, emu, drv = setup
    drv.start()
    run(drv, 1000)
    emu.faults.delay_reply_to = "manualstimtriggerpulse"
    emu.faults.reply_delay_s = 1.5 * drv.timeout_s
    target = drv.clock + 12000  # 480 ms ahead: armed at once (within the 500 ms post-trigger delay)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no reply within 1.0 s"):
        drv.schedule(StimCommand(target, (3,), PULSE))
    assert time.monotonic() - t0 < 2 * drv.timeout_s + 0.5
    assert any(c.lower() == "set a-003.stimenabled true" for c in emu.commands)  # the enable did go out
    assert emulator_stim_enabled(emu) == []
    assert drv.safe_state_verified and drv.pending == 0
    run(drv, target + 2000)  # the controller runs on past the pulse's sample
    assert emu.delivered == [] and backend.got == []


def test_safe_state_with_the_command_port_dead_does_not_raise_and_says_it_is_unverified(setup):
    backend, emu, drv = setup
    drv.start()
    run(drv, 1000)
    drv.schedule(StimCommand(drv.clock + 12000, (3,), PULSE))
    assert drv.triggers_sent == 1
    emu.drop_command_client()
    t0 = time.monotonic()
    drv.safe_state()  # never raises, and gives up within its budget
    assert time.monotonic() - t0 < drv.timeout_s + 0.5
    assert not drv.safe_state_verified and "A-003" in drv.unverified_channels


@pytest.mark.parametrize("item, pattern, value", [
    ("SampleRateHertz", r"Return: SampleRateHertz \S+", "inf"),
    ("SampleRateHertz", r"Return: SampleRateHertz \S+", "0"),
    ("SampleRateHertz", r"Return: SampleRateHertz \S+", "nan"),
    ("SampleRateHertz", r"Return: SampleRateHertz \S+", "1e999"),
    ("SampleRateHertz", r"Return: SampleRateHertz \S+", "fast"),
    ("StimStepSizeMicroAmps", r"Return: StimStepSizeMicroAmps \S+", "0"),
    ("StimStepSizeMicroAmps", r"Return: StimStepSizeMicroAmps \S+", "NaN"),
    ("TCPWaveformDataOutputPort", r"Return: TCPWaveformDataOutputPort \S+", "port"),
    ("TCPWaveformDataOutputPort", r"Return: TCPWaveformDataOutputPort \S+", "9" * 30),
    ("CurrentTimestamp", r"Return: -?\d+", "-5"),
])
def test_impossible_reply_values_are_device_errors(item, pattern, value):
    """Issue 11 item 10: a reply value RHX cannot send (infinite or zero sample rate, zero step size,
    non-numeric, NaN, huge) is a DeviceError naming the item, never ValueError/OverflowError/ZeroDivisionError,
    and the stimulator is left safe."""
    import re

    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = RHXEmulator(backend, channel_names=NAMES, step_uA=1.0).start()
    emu.faults.rewrite_reply = lambda batch, reply: re.sub(pattern, f"Return: {item} {value}"
                                                           if item != "CurrentTimestamp" else f"Return: {value}",
                                                           reply).encode("latin-1")
    drv = None
    try:
        with pytest.raises(DeviceError, match=item):
            drv = IntanRHX("127.0.0.1", emu.command_port, electrode_channels=NAMES, timeout_s=1.0)
            drv.start()
            drv.schedule(StimCommand(drv.clock + 6000, (0,), PULSE))
            run(drv, 10000)
        assert emulator_stim_enabled(emu) == [] and emu.delivered == []
    finally:
        if drv is not None:
            drv.close()
        emu.close()


def test_safe_state_from_another_thread_while_the_driver_is_busy(setup):
    """The loop's watchdog calls safe_state while the loop thread holds the driver (mid-exchange): the
    disable still goes out at once, unverified; the next safe state skips the answers owed to it and
    verifies. No pulse reaches the culture."""
    import threading

    backend, emu, drv = setup
    drv.start()
    run(drv, 1000)
    target = drv.clock + 12000
    drv.schedule(StimCommand(target, (3,), PULSE))
    held, release = threading.Event(), threading.Event()

    def busy():
        with drv._lock:
            held.set()
            release.wait(10.0)

    t = threading.Thread(target=busy)
    t.start()
    held.wait(5.0)
    t0 = time.monotonic()
    drv.safe_state()
    elapsed = time.monotonic() - t0
    release.set()
    t.join()
    assert elapsed < drv.timeout_s + 0.5
    assert not drv.safe_state_verified and "another thread" in drv.safe_state_problem
    drv.safe_state()  # its own read-back comes after the first one's answer, which it skips
    assert drv.safe_state_verified and emulator_stim_enabled(emu) == []
    run(drv, target + 2000)
    assert emu.delivered == [] and backend.got == []
