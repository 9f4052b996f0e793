"""The Pulse Pal emulator speaks firmware 2.0.1's bytes on a real pty (spec: ../shared/spec/devices.md §1)."""

import struct
import time

import pytest
import serial

from rigctl.drivers import _pulsepal_wire as w
from rigctl.sim._emulator_backend import StimulusBus
from rigctl.sim.pulsepal_emulator import PulsePalEmulator
from test_emulator_fakes import ClockBackend

WIRING = {1: (0,), 2: (1,), 3: (2, 3), 4: (4,)}


@pytest.fixture
def rig():
    backend = ClockBackend()
    bus = StimulusBus(backend, horizon_s=0.05)
    emu = PulsePalEmulator(bus, WIRING, sample_rate_hz=backend.sample_rate_hz).start()
    port = serial.Serial(emu.port, 115200, timeout=1.0)
    yield backend, bus, emu, port
    port.close()
    emu.close()


def wait_for(cond, timeout_s=2.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


def test_worked_example_bytes(rig):
    """Spec §1.10 byte for byte: handshake, client id, op-74 writes (one ack each), trigger, abort, disconnect."""
    backend, bus, emu, port = rig
    port.write(bytes.fromhex("D5 48"))
    assert port.read(5) == bytes.fromhex("4B 15 00 00 00")
    port.write(bytes.fromhex("D5 59 50 59 54 48 4F 4E"))
    for hexmsg in ("D5 4A 01 01 01", "D5 4A 02 01 00 C0", "D5 4A 03 01 00 40", "D5 4A 04 01 02 00 00 00",
                   "D5 4A 05 01 00 00 00 00", "D5 4A 06 01 02 00 00 00", "D5 4A 07 01 20 4E 00 00",
                   "D5 4A 0A 01 14 00 00 00"):
        port.write(bytes.fromhex(hexmsg))
        assert port.read(1) == b"\x01", hexmsg
    assert emu.client_id == "PYTHON"
    p = emu.params[1]
    assert (p["is_biphasic"], p["phase1_v"], p["phase2_v"], p["phase1_dur"], p["interphase"], p["phase2_dur"],
            p["interpulse"], p["train_dur"]) == (1, 0xC000, 0x4000, 2, 0, 2, 20000, 20)
    port.write(bytes.fromhex("D5 4D 01"))  # soft trigger output 1: no reply
    wait_for(lambda: emu.ops[-1] == w.OP_SOFT_TRIGGER)
    bus.deliver_until(10_000)
    assert len(backend.got) == 1  # train of 1 ms, pulse period 1 s: exactly one pulse
    cmd = backend.got[0]
    assert cmd.electrodes == (0,)
    # +5 V / -5 V through the 12-bit DAC; 2 ticks = 100 µs each; first phase 2 ticks after the trigger
    assert cmd.pulse.phase1_amplitude == pytest.approx(5000.0) and cmd.pulse.phase2_amplitude == pytest.approx(-5000.0)
    assert (cmd.pulse.phase1_us, cmd.pulse.phase2_us, cmd.pulse.unit) == (100.0, 100.0, "mV")
    assert cmd.sample == round(2 * 25000 / 20000)
    port.write(bytes.fromhex("D5 50 D5 51"))
    wait_for(lambda: emu.ops[-1] == w.OP_DISCONNECT)
    assert not emu.connected
    assert port.in_waiting == 0  # abort and disconnect are silent


def test_stray_bytes_ignored_unknown_ops_silent(rig):
    _, _, emu, port = rig
    port.write(b"\x00\x13garbage\xff" + bytes.fromhex("D5 63") + bytes.fromhex("D5 48"))
    assert port.read(5) == bytes.fromhex("4B 15 00 00 00")
    assert 0x63 in emu.ops


def test_program_all_is_178_bytes_and_acked(rig):
    _, _, emu, port = rig
    times = list(range(1, 33))
    volts = [w.volts_to_code(v) for v in (1, -1, 0, 2, -2, 0, 3, -3, 0, 4, -4, 0)]
    bytes8 = [1, 0, 0, 0] * 4
    payload = struct.pack("<32I12H16B8B2B", *times, *volts, *bytes8, *([1, 0, 1, 0] + [0, 1, 0, 1]), 1, 2)
    assert len(payload) == 178
    port.write(bytes((0xD5, 73)) + payload)
    assert port.read(1) == b"\x01"
    assert emu.params[2]["phase1_dur"] == 9 and emu.params[2]["train_delay"] == 16
    assert emu.params[4]["phase2_v"] == w.volts_to_code(-4)
    assert (emu.params[1]["link1"], emu.params[2]["link1"], emu.params[2]["link2"]) == (1, 0, 1)
    assert emu.trigger_modes == [1, 2]


def test_partial_message_is_a_comm_failure_until_the_joystick_click(rig):
    """A message byte later than 500 ms: firmware completes it with zeros, then ignores the host."""
    _, _, emu, port = rig
    port.write(bytes.fromhex("D5 4A 04 01 02"))  # 3 value bytes missing
    assert port.read(1) == b"\x01"  # executed with zeros and acked, as the firmware does (after 500 ms)
    wait_for(lambda: emu.comm_failure)
    assert emu.params[1]["phase1_dur"] == 2  # the zero-completed value 0x00000002
    port.write(bytes.fromhex("D5 48"))
    assert port.read(5) == b""  # nothing answers during COMM. FAILURE (timeout 1 s)
    emu.click_joystick()
    assert not emu.comm_failure and emu.params[1] == emu.params[2]  # defaults reloaded
    port.write(bytes.fromhex("D5 48"))
    assert port.read(5)[:1] == b"K"


def test_train_is_cut_at_train_duration_and_bursts_gate_pulses(rig):
    backend, bus, emu, port = rig
    msgs = [w.program_one(w.P_IS_BIPHASIC, 2, 1), w.program_one(w.P_PHASE1_V, 2, w.volts_to_code(-1.25)),
            w.program_one(w.P_PHASE2_V, 2, w.volts_to_code(1.25)), w.program_one(w.P_PHASE1_DUR, 2, 4),
            w.program_one(w.P_INTERPHASE, 2, 0), w.program_one(w.P_PHASE2_DUR, 2, 4),
            w.program_one(w.P_INTERPULSE, 2, 12), w.program_one(w.P_TRAIN_DUR, 2, 46),
            w.program_one(w.P_TRAIN_DELAY, 2, 18)]
    for m in msgs:
        port.write(m)
        assert port.read(1) == b"\x01"
    port.write(w.message(w.OP_SOFT_TRIGGER, b"\x02"))
    wait_for(lambda: emu.ops[-1] == w.OP_SOFT_TRIGGER)
    bus.deliver_until(100_000)
    got = backend.got
    # onset at tick 1 + 18 = 19, period 8 + 12 = 20 ticks: pulses at 19, 39, 59; the train ends at 19 + 46 = 65,
    # so the third pulse is cut after 6 ticks (4 of phase 1, 2 of phase 2)
    assert [c.sample for c in got] == [round((t + 1) * 1.25) for t in (19, 39, 59)]
    assert all(c.electrodes == (1,) for c in got)
    assert got[0].pulse.phase1_amplitude == -1250.0 and got[0].pulse.phase2_amplitude == 1250.0
    assert (got[2].pulse.phase1_us, got[2].pulse.phase2_us) == (200.0, 100.0)
    # bursts: 30 ticks on, 30 off; a pulse whose phase 1 cannot finish inside the burst waits for the next
    for m in (w.program_one(w.P_BURST_DUR, 2, 30), w.program_one(w.P_INTERBURST, 2, 30),
              w.program_one(w.P_TRAIN_DUR, 2, 120), w.program_one(w.P_TRAIN_DELAY, 2, 0)):
        port.write(m)
        assert port.read(1) == b"\x01"
    backend.got.clear()
    backend.now_sample = 1000  # tick 800
    port.write(w.message(w.OP_SOFT_TRIGGER, b"\x02"))
    wait_for(lambda: emu.ops.count(w.OP_SOFT_TRIGGER) == 2)
    bus.deliver_until(200_000)
    onsets = [round(c.sample / 1.25) - 1 - 801 for c in backend.got]
    assert onsets == [0, 20, 60, 80]  # 40 and 100 fall in the 30-tick gaps between bursts


def test_trigger_while_playing_is_remembered(rig):
    """Firmware 2.0.1 clears a soft trigger only when the output is idle: it replays after the train."""
    backend, bus, emu, port = rig
    for m in (w.program_one(w.P_IS_BIPHASIC, 1, 1), w.program_one(w.P_TRAIN_DUR, 1, 40),
              w.program_one(w.P_INTERPULSE, 1, 100)):
        port.write(m)
        assert port.read(1) == b"\x01"
    port.write(w.message(w.OP_SOFT_TRIGGER, b"\x01") + w.message(w.OP_SOFT_TRIGGER, b"\x01"))
    wait_for(lambda: emu.ops.count(w.OP_SOFT_TRIGGER) == 2)
    bus.deliver_until(100_000)
    assert [round(c.sample / 1.25) - 1 for c in backend.got] == [1, 1 + 40 + 1]


def test_abort_cancels_pulses_not_yet_handed_to_the_culture(rig):
    backend, bus, emu, port = rig
    for m in (w.program_one(w.P_IS_BIPHASIC, 4, 1), w.program_one(w.P_TRAIN_DELAY, 4, 20000)):  # 1 s delay
        port.write(m)
        assert port.read(1) == b"\x01"
    port.write(w.message(w.OP_SOFT_TRIGGER, b"\x08") + w.message(w.OP_ABORT))
    wait_for(lambda: emu.ops[-1] == w.OP_ABORT)
    bus.deliver_until(10 ** 7)
    assert backend.got == [] and emu.trains == {}


def test_unplug_and_replug_keep_the_port_path(rig):
    _, _, emu, port = rig
    path = emu.port
    emu.unplug()
    with pytest.raises(serial.SerialException):
        port.write(bytes.fromhex("D5 48"))
        port.read(5)
    emu.replug()
    assert emu.port == path
    again = serial.Serial(path, 115200, timeout=1.0)
    try:
        again.write(bytes.fromhex("D5 48"))
        assert again.read(5) == bytes.fromhex("4B 15 00 00 00")
    finally:
        again.close()
