"""The Pulse Pal driver against its emulator on a real pty: timing, refusals, faults, interoperability."""

import time

import pytest

from rigctl.drivers import _pulsepal_wire as w
from rigctl.drivers.pulsepal import PulsePal
from rigctl.errors import DeviceError, SafetyViolation
from rigctl.safety import GuardedStimulator, SafetyLimits
from rigctl.sim._emulator_backend import StimulusBus
from rigctl.sim.pulsepal_emulator import PulsePalEmulator
from rigctl.types import BiphasicPulse, StimCommand
from test_emulator_fakes import ClockBackend

WIRING = {1: (0,), 2: (1,), 3: (2, 3), 4: (4,)}
PULSE = BiphasicPulse.symmetric(1250.0, 200.0, "mV")  # exactly representable by the 12-bit DAC


@pytest.fixture
def setup():
    backend = ClockBackend(chunk_samples=1250)
    bus = StimulusBus(backend)
    emu = PulsePalEmulator(bus, WIRING, sample_rate_hz=25000.0).start()
    # generous reply deadline: a loaded CI machine must not turn a slow thread switch into a fault
    drv = PulsePal(emu.port, WIRING, 25000.0, timeout_s=1.0)
    yield backend, bus, emu, drv
    drv.close()
    emu.close()


def run_chunks(bus, backend, drv, n):
    for _ in range(n):
        bus.read()
        drv.on_chunk(backend.now_sample)


def test_connect_programs_a_safe_rest_state(setup):
    _, _, emu, drv = setup
    assert drv.firmware_version == 21 and emu.client_id == "RIGCTL"
    assert emu.ops[:3] == [w.OP_HANDSHAKE, w.OP_CLIENT_ID, w.OP_PROGRAM_ALL]
    for ch in range(1, 5):
        p = emu.params[ch]
        assert (p["link1"], p["link2"]) == (0, 0)  # hardware trigger inputs cannot start anything
        assert w.code_to_volts(p["phase1_v"]) == 0.0 and w.code_to_volts(p["resting_v"]) == 0.0


def test_pulses_land_on_the_commanded_samples(setup):
    backend, bus, emu, drv = setup
    cmds = [StimCommand(25000, (0, 2, 3), PULSE), StimCommand(31250, (1,), PULSE),
            StimCommand(37500, (4,), BiphasicPulse(-1000.0, 100.0, 500.0, 200.0, 50.0, "mV"))]
    for c in cmds:
        drv.schedule(c)
    run_chunks(bus, backend, drv, 40)
    assert emu.errors == []
    assert [(c.sample, c.electrodes) for c in backend.got] == [(c.sample, c.electrodes) for c in cmds]
    assert backend.got[0].pulse == PULSE
    last = backend.got[2].pulse
    assert (last.phase1_us, last.interphase_us, last.phase2_us) == (100.0, 50.0, 200.0)
    assert last.phase1_amplitude == pytest.approx(-1000.0, abs=5.0)  # within one 12-bit DAC step (4.9 mV)
    assert last.phase2_amplitude == pytest.approx(500.0, abs=5.0)
    assert drv.triggers_sent == 3 and drv.pending == 0


def test_outputs_are_reprogrammed_only_when_the_pulse_changes(setup):
    backend, bus, emu, drv = setup
    drv.schedule(StimCommand(25000, (1,), PULSE))
    run_chunks(bus, backend, drv, 22)
    n_ops = len(emu.ops)
    drv.schedule(StimCommand(50000, (1,), PULSE))  # same offset from the arming chunk: nothing to reprogram
    drv.schedule(StimCommand(75625, (1,), PULSE))  # a different offset: only the train delay changes
    run_chunks(bus, backend, drv, 42)
    new = emu.ops[n_ops:]
    assert new == [w.OP_SOFT_TRIGGER, w.OP_PROGRAM_ONE, w.OP_PROGRAM_ONE, w.OP_SOFT_TRIGGER, w.OP_PROGRAM_ONE]
    assert [c.sample for c in backend.got] == [25000, 50000, 75625]


@pytest.mark.parametrize("command, message", [
    (StimCommand(25000, (0,), BiphasicPulse.symmetric(10.0, 200.0, "uA")), "allowed: 'mV'"),
    (StimCommand(25000, (0,), BiphasicPulse.symmetric(10500.0, 200.0, "mV")), "allowed: [-10000, 10000] mV"),
    (StimCommand(25000, (0,), BiphasicPulse.symmetric(1000.0, 120.0, "mV")), "multiples of 50 µs"),
    (StimCommand(25000, (2,), PULSE), "leaves out [3]"),
    (StimCommand(25000, (9,), PULSE), "not wired to any Pulse Pal output"),
])
def test_unrepresentable_commands_are_refused_before_anything_is_sent(setup, command, message):
    _, _, emu, drv = setup
    n_ops = len(emu.ops)
    with pytest.raises(DeviceError) as info:
        drv.schedule(command)
    assert message in str(info.value)
    assert emu.ops[n_ops:] == [] and drv.pending == 0


def test_core_safety_rejects_before_the_driver(setup):
    _, _, emu, drv = setup
    guarded = GuardedStimulator(drv, SafetyLimits(max_amplitude_mV=1000.0, n_electrodes=5), 25000.0)
    n_ops = len(emu.ops)
    with pytest.raises(SafetyViolation):
        guarded.schedule(StimCommand(25000, (0,), PULSE))
    assert emu.ops[n_ops:] == [] and drv.pending == 0


def test_a_pulse_too_close_to_deliver_is_an_error_not_a_late_pulse(setup):
    backend, bus, emu, drv = setup
    run_chunks(bus, backend, drv, 2)
    with pytest.raises(DeviceError, match="already past"):
        drv.schedule(StimCommand(backend.now_sample - 1, (0,), PULSE))


# ---- faults -------------------------------------------------------------------------------------------

def test_unplug_mid_run_gives_device_error_then_reconnects(setup):
    backend, bus, emu, drv = setup
    drv.schedule(StimCommand(25000, (0,), PULSE))
    run_chunks(bus, backend, drv, 22)
    emu.unplug()
    drv.schedule(StimCommand(50000, (1,), PULSE))
    with pytest.raises(DeviceError, match="disconnected"):
        run_chunks(bus, backend, drv, 20)
    drv.safe_state()  # never raises, even with the cable out
    assert drv.pending == 0
    with pytest.raises(DeviceError, match="fault state"):
        drv.schedule(StimCommand(75000, (1,), PULSE))
    emu.replug()
    drv.reconnect()
    drv.schedule(StimCommand(backend.now_sample + 5000, (1,), PULSE))
    run_chunks(bus, backend, drv, 6)
    assert [c.sample for c in backend.got] == [25000, backend.got[-1].sample]
    assert backend.got[-1].electrodes == (1,)


def test_device_that_stops_answering_is_detected_at_the_trigger(setup):
    backend, bus, emu, drv = setup
    emu.faults.hung = True
    drv.schedule(StimCommand(25000, (4,), PULSE))
    with pytest.raises(DeviceError, match="not answering"):
        run_chunks(bus, backend, drv, 22)
    assert drv.faulted and drv.pending == 0


def test_late_replies_time_out(setup):
    backend, bus, emu, drv = setup
    emu.faults.reply_delay_s = 2.0
    drv.schedule(StimCommand(25000, (0,), BiphasicPulse.symmetric(500.0, 200.0, "mV")))
    with pytest.raises(DeviceError, match="within 1.0 s"):
        run_chunks(bus, backend, drv, 22)


def test_garbage_instead_of_an_ack(setup):
    backend, bus, emu, drv = setup
    emu.faults.garbage_before_next_reply = b"\x7f\x00"
    drv.schedule(StimCommand(25000, (0,), BiphasicPulse.symmetric(500.0, 200.0, "mV")))
    with pytest.raises(DeviceError, match="garbage"):
        run_chunks(bus, backend, drv, 22)


def test_partial_handshake_reply():
    backend = ClockBackend()
    emu = PulsePalEmulator(StimulusBus(backend), WIRING, sample_rate_hz=25000.0).start()
    try:
        emu.faults.truncate_next_reply_to = 3
        with pytest.raises(DeviceError, match="no complete handshake reply"):
            PulsePal(emu.port, WIRING, 25000.0, timeout_s=0.2)
        drv = PulsePal(emu.port, WIRING, 25000.0, timeout_s=0.2)  # the next attempt succeeds
        drv.close()
    finally:
        emu.close()


def test_pulse_pal_1_is_refused():
    backend = ClockBackend()
    emu = PulsePalEmulator(StimulusBus(backend), WIRING, sample_rate_hz=25000.0, firmware_version=21).start()
    emu.firmware_version = 5  # what firmware 1.1 reports
    try:
        with pytest.raises(DeviceError, match="allowed: Pulse Pal 2"):
            PulsePal(emu.port, WIRING, 25000.0, timeout_s=0.2)
    finally:
        emu.close()


def test_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceError, match="cannot open the port"):
        PulsePal(str(tmp_path / "ttyNope"), WIRING, 25000.0)


def test_abort_stops_an_armed_pulse():
    """A pulse armed on the device but not yet due is cancelled by abort (the culture never sees it)."""
    backend = ClockBackend(chunk_samples=1250)
    bus = StimulusBus(backend, horizon_s=0.0)  # the culture is told of a pulse only in the chunk before it
    emu = PulsePalEmulator(bus, WIRING, sample_rate_hz=25000.0).start()
    drv = PulsePal(emu.port, WIRING, 25000.0, timeout_s=0.2)
    try:
        drv.schedule(StimCommand(25000, (0,), PULSE))
        run_chunks(bus, backend, drv, 19)  # armed at 23750, two chunks ahead: the device waits out the delay
        assert emu.channel_busy(1) and backend.got == []
        drv.abort()
        deadline = time.monotonic() + 2.0
        while emu.channel_busy(1) and time.monotonic() < deadline:
            time.sleep(0.001)
        run_chunks(bus, backend, drv, 6)
        assert backend.got == [] and not emu.channel_busy(1)
    finally:
        drv.close()
        emu.close()


# ---- interoperability -------------------------------------------------------------------------------------

def test_vendor_python_client_talks_to_the_emulator():
    pypulsepal = pytest.importorskip("pypulsepal")
    backend = ClockBackend()
    bus = StimulusBus(backend)
    emu = PulsePalEmulator(bus, WIRING, sample_rate_hz=25000.0).start()
    pp = None
    try:
        pp = pypulsepal.PulsePal(emu.port)
        assert pp.firmware_version == 21 and pp.model == 2
        cfg = pp.channel_configs[1]
        cfg.isBiphasic = True
        cfg.phase1Voltage, cfg.phase2Voltage = -2.5, 2.5
        cfg.phase1Duration = cfg.phase2Duration = 0.0002
        cfg.interPhaseInterval = 0.0
        cfg.pulseTrainDuration = 0.0004
        assert pp.sync_all_params()
        assert pp.program_one_param(channel=1, param_name="pulseTrainDelay", param_value=0.01)
        pp.trigger_selected_channels(channel_2=True)
        deadline = time.monotonic() + 2.0
        while w.OP_SOFT_TRIGGER not in emu.ops and time.monotonic() < deadline:
            time.sleep(0.001)
        bus.deliver_until(10 ** 6)
        assert len(backend.got) == 1
        got = backend.got[0]
        assert got.electrodes == (1,) and got.sample == round((1 + 200 + 1) * 1.25)
        assert got.pulse.phase1_amplitude == pytest.approx(-2500.0, abs=5) and got.pulse.phase1_us == 200.0
    finally:
        if pp is not None:
            pp.close()
        emu.close()


# ---- connect on a port that fails at once (issue 11 item 10) ----------------------------------------------

@pytest.mark.parametrize("failure", ["hang_up", "port_closed"])
def test_port_that_fails_right_after_opening_is_a_device_error(monkeypatch, failure):
    """The cable is pulled (the pty's far end hangs up: termios.error EIO) or the port is closed under
    the driver (SerialException) between opening it and flushing its input: a DeviceError, port released."""
    import os
    import pty

    import serial

    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    opened: list[serial.Serial] = []

    class FailsAfterOpen(serial.Serial):
        def open(self):
            super().open()
            opened.append(self)
            if failure == "hang_up":
                os.close(master)  # the real kernel pty now fails every termios call on the port
            else:
                self.close()

    monkeypatch.setattr(serial, "Serial", FailsAfterOpen)
    try:
        with pytest.raises(DeviceError, match=f"Pulse Pal at {name}"):
            PulsePal(name, WIRING, 25000.0, timeout_s=0.2)
        assert opened and not opened[0].is_open  # nothing left holding the port
    finally:
        if failure != "hang_up":
            os.close(master)
