"""Rig files: what they open, and errors that name the file, line, field, value and what is allowed."""

import argparse
import contextlib
import threading
import time
from pathlib import Path

import pytest

from fakes import fake_sim_rig
from rigctl.drivers.pulsepal import PulsePal
from rigctl.errors import DeviceError
from rigctl.rigfile import RigFileError
from rigctl.rigs import open_rig

RIGS = Path(__file__).resolve().parents[1] / "rigs"


def fake_backend(*, sample_rate_hz, seed, mode, drug, chunk_ms, realtime):  # noqa: ARG001
    return fake_sim_rig(seed, mode, chunk_ms)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return path


GOOD = """name: t
amplifier: {driver: sim, mode: events}
stimulator:
  driver: pulsepal
  port: emulate
  outputs: {1: [0], 2: [2, 3]}
safety: {max_amplitude_mV: 1200, allowed_electrodes: [0, 2, 3]}
"""


def test_example_rig_opens_with_an_emulated_pulse_pal():
    rig = open_rig(RIGS / "pulsepal_sim.yaml", seed=1, backend_factory=fake_backend)
    try:
        assert isinstance(rig.stimulator, PulsePal) and rig.stimulator.firmware_version == 21
        assert rig.amplifier.n_channels == 64 and rig.amplifier.sample_rate_hz == 25000.0
        assert rig.limits.allowed_electrodes == frozenset({0, 2, 4, 6}) and rig.limits.n_electrodes == 64
        assert rig.description["mode"] == "events" and rig.description["stimulator"]["outputs"][3] == [4]
        assert rig.amplifier.can_skip
    finally:
        rig.close()
    assert rig.emulators[0].ops[-1] == 81  # closing disconnects the device (op 81) after aborting


def test_rigs_open_rig_dispatches_yaml_paths_here(tmp_path, monkeypatch):
    import rigctl.rigfile as rigfile

    monkeypatch.setattr(rigfile, "sim_backend", fake_backend)
    rig = open_rig(str(write(tmp_path, GOOD)), seed=0)
    try:
        assert rig.limits.max_amplitude_mV == 1200 and rig.stimulator.channels_for((2, 3)) == (2,)
    finally:
        rig.close()


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("driver: sim", "driver: maxwell"), "amplifier.driver='maxwell'; allowed: "),
    (GOOD.replace("driver: pulsepal", "driver: stg"), "stimulator.driver='stg'; allowed: "),
    (GOOD.replace("mode: events", "mode: spikes"), "amplifier.mode='spikes'; allowed: voltage, events"),
    (GOOD.replace("{1: [0], 2: [2, 3]}", "{5: [0]}"), "stimulator.outputs.5=5; allowed: output numbers 1, 2, 3, 4"),
    (GOOD.replace("{1: [0], 2: [2, 3]}", "{1: [70]}"), "stimulator.outputs=[70]; allowed: electrodes 0..63"),
    (GOOD.replace("{1: [0], 2: [2, 3]}", "{1: []}"), "a non-empty list of electrode indices"),
    (GOOD.replace("  outputs: {1: [0], 2: [2, 3]}\n", ""), "stimulator.outputs is required"),
    (GOOD.replace("port: emulate", "port: 7"), "stimulator.port=7; allowed: a serial device"),
    (GOOD.replace("name: t", "name: t\nextra: 1"), "unknown field rig.extra"),
    (GOOD.replace("port: emulate", "port: emulate\n  baud: 9600"), "unknown field stimulator.baud; allowed: driver, port"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_voltage: 3"), "unknown safety limit(s) ['max_voltage']"),
    ("amplifier: {driver: sim}\n", "section 'stimulator' is required"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_amplitude_mV: .nan"), "rig.yaml:7: safety.max_amplitude_mV=nan"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_amplitude_mV: 9000"), "safety.max_amplitude_mV=9000"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_charge_per_phase_nC: .nan"), "safety.max_charge_per_phase_nC=nan"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_rate_hz: 0"), "safety.max_rate_hz=0"),
    (GOOD.replace("max_amplitude_mV: 1200", "max_rate_hz: .inf"), "safety.max_rate_hz=inf"),
    (GOOD.replace("port: emulate", "port: emulate\n  timeout_s: .nan"), "stimulator.timeout_s=nan; allowed: a finite"),
    (GOOD.replace("port: emulate", "port: emulate\n  mV_per_volt: .inf"), "stimulator.mV_per_volt=inf"),
    (GOOD.replace("port: emulate", "port: emulate\n  timeout_s: 0"), "stimulator.timeout_s=0.0; allowed: seconds > 0"),
    ("amplifier: [\n", "not valid YAML"),
])
def test_errors_name_file_field_value_and_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RigFileError) as info:
        open_rig(path, seed=0, backend_factory=fake_backend)
    msg = str(info.value)
    assert expected in msg and str(path) in msg


def test_error_names_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace("{1: [0], 2: [2, 3]}", "{1: [0], 9: [2]}"))
    with pytest.raises(RigFileError, match=r"rig.yaml:6: stimulator.outputs.9"):
        open_rig(path, seed=0, backend_factory=fake_backend)


def test_missing_file_and_unreachable_device(tmp_path):
    with pytest.raises(RigFileError, match="no such file"):
        open_rig(tmp_path / "nope.yaml", seed=0)
    path = write(tmp_path, GOOD.replace("port: emulate", f"port: {tmp_path / 'ttyACM9'}"))
    with pytest.raises(DeviceError, match=r"rig.yaml:5: .*cannot open the port"):
        open_rig(path, seed=0, backend_factory=fake_backend)


def test_emulated_stimulator_needs_an_emulated_culture(tmp_path):
    from rigctl.rigfile import Ctx, _build_pulsepal, parse_rig
    from rigctl.yamlcheck import load_located

    doc = load_located(write(tmp_path, GOOD), error=RigFileError)
    ctx = Ctx(doc, 0, "none", False, None, fake_backend, emulators=[])
    amp = fake_sim_rig(0, "events")
    with pytest.raises(RigFileError, match="emulated stimulator needs an emulated culture"):
        _build_pulsepal(ctx, parse_rig(doc).stimulator, amp, [])


@contextlib.contextmanager
def emulator_running(**overrides):
    """Runs `rigctl emulate` (run_emulator) on the fake culture in a thread; yields what it printed as ready."""
    from rigctl.commands.emulate import _parse_outputs, run_emulator

    fields = dict(device="pulsepal", seed=0, realtime=False, drug="none", sample_rate_hz=25000.0, mode="voltage",
                  outputs=_parse_outputs("1:0"), host="127.0.0.1", port=0, duration_s=20.0)
    fields.update(overrides)
    info: dict = {}
    ready = threading.Event()
    stop = threading.Event()

    def on_ready(d):
        info.update(d)
        ready.set()

    t = threading.Thread(target=run_emulator, args=(argparse.Namespace(**fields),
                                                    lambda a, mode: fake_sim_rig(a.seed, mode)),
                         kwargs={"ready": on_ready, "stop": stop})
    t.start()
    try:
        assert ready.wait(5.0)
        yield info
    finally:
        stop.set()
        t.join(5.0)
    assert not t.is_alive()


def test_emulate_command_prints_where_to_connect_and_serves_the_vendor_protocol():
    from rigctl.commands.emulate import _parse_outputs

    with emulator_running(outputs=_parse_outputs("1:0,2:2+3"), port=None, duration_s=10.0) as info:
        assert info["outputs"] == {1: [0], 2: [2, 3]}
        drv = PulsePal(info["port"], {1: (0,), 2: (2, 3)}, 25000.0)
        assert drv.firmware_version == 21
        drv.close()
    with pytest.raises(argparse.ArgumentTypeError, match="allowed: 1..4"):
        _parse_outputs("7:1")


@pytest.mark.parametrize("name, amp_driver, stim_driver", [
    ("pulsepal_sim.yaml", "sim", "pulsepal"), ("rhx_sim.yaml", "rhx", "rhx"),
    ("openephys_pulsepal.yaml", "openephys", "pulsepal")])
def test_every_example_rig_opens_and_closes(name, amp_driver, stim_driver):
    rig = open_rig(RIGS / name, seed=0, backend_factory=fake_backend)
    try:
        assert rig.description["amplifier"]["driver"] == amp_driver
        assert rig.description["stimulator"]["driver"] == stim_driver
        assert rig.amplifier.n_channels == 64 and rig.amplifier.sample_rate_hz == 25000.0
        assert rig.limits.n_electrodes == 64
    finally:
        rig.close()


RHX = """amplifier:
  driver: rhx
  host: emulate
  channels: A-000..A-031, B-000..B-031
stimulator: {driver: rhx}
"""


@pytest.mark.parametrize("text, expected", [
    (RHX.replace("A-000..A-031, B-000..B-031", "A-000..A-031"), "amplifier.channels='32 channels'; allowed: 64"),
    (RHX.replace("A-000..A-031, B-000..B-031", "A-000..A-031, Z-001"), "amplifier.channels='Z-001'; allowed: a list"),
    (RHX.replace("A-000..A-031, B-000..B-031", "A-000..A-031, A-000..A-031"), "each channel once"),
    (RHX.replace("host: emulate", "host: emulate\n  blocks_per_write: 500"), "amplifier.blocks_per_write=500; allowed: 1 to 100"),
    (RHX.replace("host: emulate", "host: emulate\n  emulator: {step_uA: 3}"), "step_uA=3.0; allowed"),
    (GOOD.replace("driver: pulsepal\n  port: emulate\n  outputs: {1: [0], 2: [2, 3]}", "driver: rhx"),
     "stimulator.driver='rhx'; allowed: rhx only together with amplifier.driver: rhx"),
    ("amplifier: {driver: openephys, host: emulate, channels: [0, -1]}\nstimulator: {driver: none}\n",
     "amplifier.channels=[0, -1]; allowed: a list of stream channel indices"),
])
def test_device_section_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RigFileError) as info:
        open_rig(path, seed=0, backend_factory=fake_backend)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_recording_only_rig_refuses_commands(tmp_path):
    from rigctl.types import BiphasicPulse, StimCommand

    rig = open_rig(write(tmp_path, "amplifier: {driver: sim}\nstimulator: {driver: none}\n"), seed=0,
                   backend_factory=fake_backend)
    try:
        with pytest.raises(DeviceError, match="no stimulator"):
            rig.stimulator.schedule(StimCommand(100, (0,), BiphasicPulse.symmetric(1.0, 100.0)))
    finally:
        rig.close()


@pytest.mark.parametrize("device", ["rhx", "openephys"])
def test_emulate_command_serves_data_devices(device):
    from rigctl.drivers.intan_rhx import IntanRHX
    from rigctl.drivers.openephys import OpenEphysGUI

    with emulator_running(device=device) as info:
        if device == "rhx":
            drv = IntanRHX("127.0.0.1", info["command_port"],
                           electrode_channels=[f"A-{i:03d}" for i in range(32)] + [f"B-{i:03d}" for i in range(32)])
            drv.start()
            assert drv.read().samples.shape[1] == 64
            drv.close()
            # the command stands in for the operator: RHX listens again after a client leaves
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    again = IntanRHX("127.0.0.1", info["command_port"], electrode_channels=["A-000"])
                    break
                except DeviceError:
                    assert time.monotonic() < deadline, "the command port never listened again"
                    time.sleep(0.01)
            again.close()
        else:
            port = int(info["http"].rsplit(":", 1)[1].split("/")[0])
            drv = OpenEphysGUI("127.0.0.1", port)
            drv.start()
            assert drv.read().samples.shape[1] == 64
            drv.stop()
