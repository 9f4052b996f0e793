"""The Intan RHX driver against its emulator on loopback: data, stimulation timing, refusals, faults."""

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
