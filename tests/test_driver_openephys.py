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


def test_a_stream_joined_mid_block_starts_at_the_first_whole_block(setup):
    """The subscription missed the first channels of the first block (a slow ZMQ join, or a GUI that was already
    acquiring): nothing was delivered yet, so the stream starts at the next whole block instead of faulting; a
    loss after that is still a fault (below)."""
    _, emu, drv = setup
    emu.faults.drop_next = 3
    drv.start()
    chunk = drv.read()
    assert (chunk.first_sample, chunk.n_samples) == (200, 200)
    assert np.array_equal(chunk.samples, ClockBackend.ramp(200, 200, 16))
    assert drv.read().first_sample == 400


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
        # a stop mid-block leaves a partial block: reported as such, within the same read deadline
        with pytest.raises(DeviceError, match=r"no (data for|complete block within) 1.0 s"):
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


# ---- hostile messages (issue 11 item 10) ----------------------------------------------------------------

def _rewrite_header(change):
    """An emulator rewrite that edits every data message's JSON header with `change(header, channel)`."""
    def rewrite(frames):
        header = json.loads(frames[1])
        change(header, header["content"]["channel_num"])
        return [frames[0], json.dumps(header).encode(), *frames[2:]]
    return rewrite


def _nan_in_channel_3(frames):
    header = json.loads(frames[1])
    if header["content"]["channel_num"] != 3:
        return frames
    values = np.frombuffer(frames[2], "<f4").copy()
    values[5] = np.nan
    return [frames[0], frames[1], values.tobytes()]


@pytest.mark.parametrize("rewrite, garbage, message", [
    (_nan_in_channel_3, None, r"channel 3 sample \d+ is nan"),
    (None, [b"DATA\x00", b"[" * 100_000 + b"]" * 100_000], "malformed ZMQ message header"),  # RecursionError
    (None, [b"DATA\x00", b'{"message_num": 1e400}'], "message_num"),  # OverflowError
    (_rewrite_header(lambda h, ch: h.update(content=[h["content"]])), None, "content"),  # AttributeError
    (_rewrite_header(lambda h, ch: h["content"].update(num_samples=1e400)), None, "num_samples"),
    (_rewrite_header(lambda h, ch: ch == 3 and h["content"].update(channel_num="3")), None, "channel_num"),
], ids=["nan_sample", "deep_nesting", "infinite_message_num", "content_a_list", "infinite_num_samples",
        "channel_num_a_string"])
def test_hostile_zmq_messages_are_device_errors(setup, rewrite, garbage, message):
    """NaN samples, deeply nested or wrong-typed JSON headers, infinite numbers: DeviceError naming what is
    wrong, never RecursionError/AttributeError/OverflowError, and never a NaN silently turned into 0."""
    _, emu, drv = setup
    drv.start()
    read_until(drv, 1000)
    emu.faults.rewrite, emu.faults.garbage_next = rewrite, garbage
    with pytest.raises(DeviceError, match=message):
        read_until(drv, 50_000)  # past what the sockets may hold from before the fault


@pytest.mark.parametrize("change, message", [
    (lambda h, ch: h["content"].update(sample_num=h["content"]["sample_num"] + ch * 10 ** 9),
     "blocks .* wait for channels"),  # every channel's block at its own sample: none ever completes
    (lambda h, ch: h["content"].update(stream="another_stream"), "no complete block within 1.0 s"),
], ids=["blocks_never_complete", "only_another_stream"])
def test_messages_that_never_complete_a_block_time_out_with_bounded_memory(change, message):
    """Messages keep arriving but no block of ours completes: read() must raise within its deadline,
    holding a bounded number of incomplete blocks, not wait (and accumulate) forever."""
    import threading
    import time

    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = OpenEphysEmulator(backend, block_samples=200).start()
    drv = OpenEphysGUI("127.0.0.1", emu.http_port, timeout_s=1.0)
    outcome: dict = {}

    def reader():
        try:
            read_until(drv, 10 ** 9)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["exc"] = exc
        outcome["t"] = time.monotonic()

    try:
        drv.start()
        read_until(drv, 1000)
        emu.faults.rewrite = _rewrite_header(change)
        t0 = time.monotonic()
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(3 * drv.timeout_s)
        assert not t.is_alive(), "read() did not return while messages kept arriving"
        assert isinstance(outcome["exc"], DeviceError) and outcome["t"] - t0 < drv.timeout_s + 0.5
        assert __import__("re").search(message, str(outcome["exc"]))
    finally:
        emu.faults.stalled = True  # lets a reader that never returned time out before the socket closes
        t.join(5.0) if "t" in locals() else None
        drv.stop()
        emu.close()
