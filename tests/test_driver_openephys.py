"""The Open Ephys driver against its emulator (HTTP + ZMQ on loopback): data, control, faults, the vendor's
own client, and hardware in the loop with an emulated Pulse Pal."""

import json

import numpy as np
import pytest

from hil import run_direct_and_via_rig_file
from rigctl.drivers.openephys import OpenEphysGUI
from rigctl.errors import DeviceError
from rigctl.safety import SafetyLimits
from rigctl.sim.openephys_emulator import OpenEphysEmulator
from test_emulator_fakes import ClockBackend



@pytest.fixture
def setup():
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = OpenEphysEmulator(backend, block_samples=200).start()
    drv = OpenEphysGUI("127.0.0.1", emu.http_port, timeout_s=1.0)
    yield backend, emu, drv
    drv.stop()
    emu.close()


def read_until(drv, n_samples: int) -> np.ndarray:
    out = []
    while drv.clock < n_samples:
        out.append(drv.read().samples)
    return np.concatenate(out)


def test_discovers_stream_and_port_and_streams_exact_samples(setup):
    backend, emu, drv = setup
    assert (drv.stream, drv.fs, drv.n_channels, drv.data_port) == ("example_data", 25000.0, 16, emu.data_port)
    drv.start()
    assert emu.mode == "ACQUIRE"
    x = read_until(drv, 3000)
    assert np.array_equal(x, ClockBackend.ramp(0, len(x), 16))  # float µV -> int16 at 0.195 µV/bit, exactly
    drv.message("stim 3")
    assert emu.messages == ["stim 3"]
    drv.stop()
    assert emu.mode == "IDLE"


def test_channel_selection_and_order():
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = OpenEphysEmulator(backend, block_samples=100).start()
    drv = OpenEphysGUI("127.0.0.1", emu.http_port, channels=[5, 2, 9], timeout_s=0.5)
    try:
        drv.start()
        x = read_until(drv, 500)
        assert np.array_equal(x, ClockBackend.ramp(0, len(x), 16)[:, [5, 2, 9]])
        with pytest.raises(DeviceError, match="allowed: 0..15"):
            OpenEphysGUI("127.0.0.1", emu.http_port, channels=[16])
    finally:
        drv.stop()
        emu.close()


# ---- faults ---------------------------------------------------------------------------------------------

def test_stalled_stream_times_out(setup):
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    emu.faults.stalled = True
    with pytest.raises(DeviceError, match="no data for 1.0 s"):
        read_until(drv, 10 ** 9)


def test_acquisition_restarted_in_the_gui_is_a_fault(setup):
    """Someone presses stop and start in the GUI mid-run: the plugin's count restarts, the data are not
    continuous, and the driver says so (rather than "messages lost")."""
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    drv.http("/api/status", {"mode": "IDLE"})
    drv.http("/api/status", {"mode": "ACQUIRE"})
    with pytest.raises(DeviceError, match="acquisition restarted in the GUI"):
        read_until(drv, 10 ** 9)


def test_lost_messages_are_detected(setup):
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    emu.faults.drop_next = 1
    with pytest.raises(DeviceError, match="message\\(s\\) lost"):
        read_until(drv, 10 ** 9)


@pytest.mark.parametrize("garbage, message", [
    ([b"\x00garbage"], "malformed ZMQ message"),
    ([b"DATA\x00", b"{not json"], "malformed ZMQ message header"),
    ([b"DATA\x00", json.dumps({"message_num": -1}).encode()], "message_num jumped"),
])
def test_garbage_messages(setup, garbage, message):
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    emu.faults.garbage_next = garbage
    with pytest.raises(DeviceError, match=message):
        read_until(drv, 10 ** 9)


def test_partial_data_message(setup):
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    emu.faults.truncate_next_payload = 10
    with pytest.raises(DeviceError, match="partial data message"):
        read_until(drv, 10 ** 9)


def test_http_errors_are_device_errors(setup):
    _, emu, drv = setup
    drv.record = True
    with pytest.raises(DeviceError, match="HTTP 400: RECORD is not emulated"):
        drv.start()
    drv.record = False
    emu.faults.http_down = True
    with pytest.raises(DeviceError, match="HTTP 503"):
        drv.start()
    emu.faults.http_down = False
    drv.start()  # the GUI answers again: acquisition starts
    assert drv.read().n_samples == 200


def test_gui_not_running():
    backend = ClockBackend(n_electrodes=16)
    emu = OpenEphysEmulator(backend).start()
    port = emu.http_port
    emu.close()
    with pytest.raises(DeviceError, match="is the GUI running"):
        OpenEphysGUI("127.0.0.1", port, timeout_s=0.3)


# ---- the vendor's client --------------------------------------------------------------------------------

def test_open_ephys_python_tools_controls_the_emulator():
    control = pytest.importorskip("open_ephys.control")
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = OpenEphysEmulator(backend).start()
    drv = OpenEphysGUI("127.0.0.1", emu.http_port, timeout_s=1.0)
    try:
        gui = control.OpenEphysHTTPServer("127.0.0.1")
        gui.address = f"http://127.0.0.1:{emu.http_port}"  # the client hard-codes 37497
        assert gui.status() == "IDLE"
        names = [p["name"] for p in gui.get_processors()]
        assert "ZMQ Interface" in names
        drv.start()  # our driver subscribes and starts acquisition; the vendor client sees it
        assert gui.status() == "ACQUIRE"
        assert drv.read().n_samples > 0
        gui.message("hello")
        assert emu.messages == ["hello"]
        gui.idle()  # the vendor client stops acquisition under our driver: it reports the stall
        assert emu.mode == "IDLE" and gui.status() == "IDLE"
        with pytest.raises(DeviceError, match="no data for 1.0 s"):
            read_until(drv, 10 ** 9)
        gui.acquire()
        assert gui.status() == "ACQUIRE"
    finally:
        drv.stop()
        emu.close()


# ---- hardware in the loop ------------------------------------------------------------------------------------

def test_bss_through_open_ephys_and_pulse_pal_matches_the_direct_rig(tmp_path):
    protocol = tmp_path / "bss4.yaml"
    protocol.write_text(
        "extends: isomura2023_bss.yaml\nname: bss_four_outputs\nsessions: 2\ntrials_per_session: 8\n"
        "isi_s: 0.2\nrest_s: 0.4\nfirst_trial_s: 0.5\nstim_groups: {A: [0, 2], B: [4, 6]}\n"
        "pulse: {unit: mV, phase1_amplitude: -1250, phase1_us: 200, phase2_amplitude: 1250, phase2_us: 200,"
        " interphase_us: 0}\n")
    seed = 7

    a, b, sa, sb, opened = run_direct_and_via_rig_file(
        protocol, "openephys_pulsepal.yaml", seed, tmp_path,
        SafetyLimits(n_electrodes=64, allowed_electrodes=frozenset({0, 2, 4, 6})))
    assert len(a) == len(b) == 16
    assert np.array_equal(a["sample"], b["sample"]) and np.array_equal(a["counts"], b["counts"])
    assert a["counts"].sum() > 0
    assert np.array_equal(sa["sample"], sb["sample"]) and np.array_equal(sa["electrode"], sb["electrode"])
    oe, pp = opened[0].emulators
    assert oe.errors == [] and pp.errors == []
    delivered = sorted((c.sample, e) for c in pp.delivered for e in c.electrodes)
    assert delivered == sorted(zip(sa["sample"].tolist(), sa["electrode"].tolist()))
