"""The MaxLab Live driver against its emulator on loopback (real TCP sockets, real ZMQ): the command wire,
the raw stream, stimulation timing and the chip's limits, faults that leave stimulation off, and one BSS
session through the emulator equal to the direct simulated rig."""

import argparse
import functools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rigctl.drivers import _maxlab_wire as mw
from rigctl.drivers.maxlab import MaxLab
from rigctl.errors import DeviceError
from rigctl.rigs import open_rig
from rigctl.session import RunOptions, start_run
from rigctl.sim.maxlab_emulator import MaxLabEmulator, default_electrodes
from rigctl.store import read_spikes, read_stims, read_trials
from rigctl.types import BiphasicPulse, StimCommand
from test_emulator_fakes import ClockBackend

RIGS = Path(__file__).resolve().parents[1] / "rigs"

PULSE = BiphasicPulse(-1000.5, 200.0, 1000.5, 200.0, 0.0, "mV")  # 345 DAC steps of 2.9 mV


def make(n: int = 16, *, columns=None, wells: int = 1, per_well: int = 32, frames_per_message: int = 1,
         timeout_s: float = 0.5, seed: int = 0, **driver):
    backend = ClockBackend(sample_rate_hz=20000.0, chunk_samples=200, n_electrodes=n)
    columns = list(range(3, 3 + n)) if columns is None else columns
    holder: list = []
    emu = MaxLabEmulator(backend, columns=columns, wells=wells, channels_per_well=per_well, seed=seed,
                         frames_per_message=frames_per_message,
                         clock=lambda: holder[0].frame_clock if holder else None).start()
    drv = MaxLab("127.0.0.1", emu.command_port, channels=columns, electrodes=default_electrodes(n), wells=wells,
                 channels_per_well=per_well, data_port=emu.data_port, timeout_s=timeout_s, **driver)
    holder.append(drv)
    return backend, emu, drv


@pytest.fixture
def setup():
    backend, emu, drv = make()
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


# ---- wire round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames_per_message", [1, 50])
def test_stream_round_trip_in_electrode_order(frames_per_message):
    backend, emu, drv = make(frames_per_message=frames_per_message)
    try:
        assert drv.lsb_mV == 2.9 and drv.sample_rate_hz == 20000.0 and drv.n_channels == 16
        assert emu.commands[0] == "system_query_dac_lsb_mv"
        assert list(emu.commands)[1:3] == ["mea_array_new online", "mea_set_stimulation_unit -1 0 0 0 0 0 0"]
        drv.start()
        x = run(drv, 3000)
        assert np.array_equal(x, ClockBackend.ramp(0, len(x), 16))  # µV in float32 and back, sample-exact
        assert drv.frame0 == 0 and drv.clipped_samples == 0
    finally:
        drv.close()
        emu.close()


def test_six_wells_and_columns_in_any_well():
    columns = [5 * 16 + c for c in range(8)] + [2 * 16 + c for c in range(8)]  # wells 5 and 2 of 16 channels
    backend, emu, drv = make(columns=columns, wells=6, per_well=16)
    try:
        drv.start()
        x = run(drv, 1000)
        assert np.array_equal(x, ClockBackend.ramp(0, len(x), 16))
    finally:
        drv.close()
        emu.close()


def test_noise_columns_are_deterministic_for_a_seed():
    def noise(seed: int) -> np.ndarray:
        backend, emu, drv = make(n=8, seed=seed, per_well=16)
        try:
            return emu._noise_frames(0, 100)
        finally:
            drv.close()
            emu.close()

    a, b, c = noise(1), noise(1), noise(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(a[:, 3:11] == 0) and np.std(a[:, 11:]) > 1.0  # culture columns vs noise-only columns


def test_pulses_land_on_the_commanded_samples_through_the_spec_commands(setup):
    backend, emu, drv = setup
    drv.start()
    run(drv, 400)
    gap = BiphasicPulse(580.0, 100.0, -290.0, 200.0, 50.0, "mV")
    drv.schedule(StimCommand(3000, (1, 5), PULSE))
    drv.schedule(StimCommand(6003, (2,), gap))
    run(drv, 10000)
    assert emu.errors == []
    assert [(c.sample, c.electrodes, c.pulse) for c in backend.got] == [(3000, (1, 5), PULSE), (6003, (2,), gap)]
    sent = list(emu.commands)
    # units 0 and 1 (lowest free) for MEA electrodes of rig electrodes 1 and 5, voltage mode, DAC0
    assert "mea_array_command online\nmea_array_connect_electrode_to_stimulation 4432" in sent
    assert "mea_array_command online\nmea_array_download" in sent
    assert "mea_set_stimulation_unit 0 1 1 0 0 0 0" in sent and "mea_set_stimulation_unit 1 1 1 0 0 0 0" in sent
    seq = [c.split("\n", 1)[1] for c in sent if c.startswith("sequence_append seq1\n")]
    assert seq == ["system_delay_samples 2600", "mea_set_dac 0 857 512", "system_delay_samples 4",
                   "mea_set_dac 0 167 512", "system_delay_samples 4", "mea_set_dac 0 512 512"]
    assert "sequence_send seq1" in sent and "sequence_delete seq1" in sent
    assert drv.powered_units == () and not any(u.power for u in emu.units)  # down again after each pulse
    assert drv.triggers_sent == 2 and drv.pending == 0


def test_abort_after_the_sequence_is_on_the_hub_leaves_its_dac_steps_on_no_electrode(setup):
    backend, emu, drv = setup
    drv.start()
    run(drv, 400)
    drv.schedule(StimCommand(4000, (1, 2), PULSE))
    assert "sequence_send seq1" in emu.commands and drv.pending == 0  # armed: the hub holds it
    drv.abort()
    assert drv.safe_state_verified and _all_down(emu)
    run(drv, 8000)
    assert backend.got == [] and emu.delivered == [] and emu.errors == []


def test_delivered_pulse_is_on_the_dac_grid(setup):
    _, _, drv = setup
    assert drv.delivered_pulse(BiphasicPulse.symmetric(1000.0, 200.0, "mV")) == PULSE  # 344.8 -> 345 steps
    assert drv.delivered_pulse(PULSE) == PULSE


# ---- the chip's limits ---------------------------------------------------------------------------------------
def test_more_electrodes_than_units_are_refused_before_anything_is_sent():
    backend, emu, drv = make(n=40, per_well=64, timeout_s=1.0)
    try:
        drv.start()
        run(drv, 400)
        n = len(emu.commands)
        with pytest.raises(DeviceError, match="33 electrodes in one command; allowed: at most 32"):
            drv.schedule(StimCommand(3000, tuple(range(33)), PULSE))
        assert len(emu.commands) == n and drv.pending == 0
        drv.schedule(StimCommand(3000, tuple(range(20)), PULSE))  # armed at once: 20 units busy
        n = len(emu.commands)
        with pytest.raises(DeviceError, match=r"allowed: at most 12 \(free stimulation units; 20 busy"):
            drv.schedule(StimCommand(3500, tuple(range(20, 40)), PULSE))
        assert len(emu.commands) == n
        run(drv, 5000)
        assert [(c.sample, len(c.electrodes)) for c in backend.got] == [(3000, 20)]
    finally:
        drv.close()
        emu.close()


@pytest.mark.parametrize("pulse, message", [
    (BiphasicPulse.symmetric(10.0, 200.0, "uA"), "allowed: 'mV'"),
    (BiphasicPulse.symmetric(1600.0, 200.0, "mV"), "allowed: -1481.9 to 1481.9 mV (511 DAC steps of 2.9 mV)"),
    (BiphasicPulse.symmetric(500.0, 120.0, "mV"), "whole samples of 50 µs"),
    (BiphasicPulse(-1.0, 200.0, 1.0, 200.0, 0.0, "mV"), "each at least one DAC step (2.9 mV)"),
])
def test_unrepresentable_pulses_are_refused_before_anything_is_sent(setup, pulse, message):
    _, emu, drv = setup
    n = len(emu.commands)
    with pytest.raises(DeviceError) as info:
        drv.schedule(StimCommand(5000, (0,), pulse))
    assert message in str(info.value) and len(emu.commands) == n and drv.pending == 0


# ---- faults: a DeviceError, and stimulation left off ---------------------------------------------------------
def _all_down(emu) -> bool:
    return not any(u.power for u in emu.units) and emu.dacs == [512, 512, 512]


def test_error_reply_mid_arming_is_a_device_error_and_powers_the_units_down(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 400)
    emu.faults.error_on = "sequence_new"  # after the units were powered up
    with pytest.raises(DeviceError, match="MaxLab refused 'sequence_new' \\(reply 'Error'\\)"):
        drv.schedule(StimCommand(3000, (1, 2, 3), PULSE))
    assert _all_down(emu) and drv.safe_state_verified and drv.pending == 0 and drv.powered_units == ()
    assert emu.commands[-3] == "mea_set_stimulation_unit -1 0 0 0 0 0 0"


@pytest.mark.parametrize("verb, reply, message", [
    ("sequence_new", "seq 1", "sequence_new answered 'seq 1'"),
    ("query_stimulation_at_electrode", "99", "answered '99'; allowed: a unit 0..31 or nothing"),
    ("query_stimulation_at_electrode", "", "got no stimulation unit"),
])
def test_malformed_replies_are_device_errors_with_stimulation_off(setup, verb, reply, message):
    _, emu, drv = setup
    drv.start()
    run(drv, 400)
    emu.faults.rewrite_reply = lambda cmd, out: (reply if verb in cmd else out).encode() + mw.END_MARKER
    with pytest.raises(DeviceError, match=message):
        drv.schedule(StimCommand(3000, (1,), PULSE))
    emu.faults.rewrite_reply = None
    assert _all_down(emu) and drv.pending == 0


def test_impossible_lsb_is_refused_at_connect():
    backend = ClockBackend(sample_rate_hz=20000.0, chunk_samples=200, n_electrodes=4)
    emu = MaxLabEmulator(backend, columns=[0, 1, 2, 3], channels_per_well=8).start()
    try:
        for bad in (b"nan", b"", b"-2.9", b"2.9 mV"):
            emu.faults.rewrite_reply = lambda cmd, out, bad=bad: (bad if "lsb" in cmd else out.encode()) + mw.END_MARKER
            with pytest.raises(DeviceError, match="system_query_dac_lsb_mv answered"):
                MaxLab("127.0.0.1", emu.command_port, channels=[0, 1], channels_per_well=8, data_port=emu.data_port)
        emu.faults.rewrite_reply = lambda cmd, out: b"2.9"  # no end marker, then silence
        t = time.monotonic()
        with pytest.raises(DeviceError, match="no complete reply within 0.3 s"):
            MaxLab("127.0.0.1", emu.command_port, channels=[0, 1], channels_per_well=8, timeout_s=0.3)
        assert time.monotonic() - t < 2.0
    finally:
        emu.close()


def test_a_hung_server_times_out_and_abort_confirms_once_it_answers(setup):
    _, emu, drv = setup
    drv.start()
    run(drv, 400)
    emu.faults.hung = True
    t = time.monotonic()
    with pytest.raises(DeviceError, match="no complete reply within 0.5 s \\(MaxLab not answering\\)"):
        drv.schedule(StimCommand(3000, (1,), PULSE))
    assert time.monotonic() - t < 3.0  # the command, then one safe-state attempt; no hang
    assert not drv.safe_state_verified and "not answering" in drv.safe_state_problem and drv.pending == 0
    emu.faults.hung = False
    drv.abort()
    assert drv.safe_state_verified and _all_down(emu)


def test_server_gone_is_a_device_error_naming_the_cause(setup):
    _, emu, drv = setup
    emu.faults.refuse_connections = True  # accepted and closed at once
    with pytest.raises(DeviceError, match="closed the connection before the reply's end marker|connection failed"):
        drv.command("system_query_dac_lsb_mv")
    emu.close()
    with pytest.raises(DeviceError, match="cannot connect to the command port"):
        drv.command("system_query_dac_lsb_mv")
    drv.safe_state()  # never raises
    assert not drv.safe_state_verified


@pytest.mark.parametrize("fault, message", [
    (("stalled", True), "no data for 0.5 s on the raw stream"),
    (("skip_frames_next", 1), "frame number jumped from .*: 1 frame\\(s\\) lost"),
    (("garbage_next", [b"\x01\x02", b"xyz"]), "malformed data message: a frame number of 2 bytes"),
    (("garbage_next", [bytes(8), bytes(13)]), "a payload of 13 bytes"),
    (("nan_next", True), "channel 3 frame [0-9]+ is nan \\(not a finite value\\)"),
])
def test_stream_faults_are_device_errors(setup, fault, message):
    _, emu, drv = setup
    drv.start()
    run(drv, 400)
    setattr(emu.faults, *fault)
    with pytest.raises(DeviceError, match=message):
        run(drv, 10 ** 6)


# ---- rig file, `rigctl emulate maxlab`, and one BSS session -------------------------------------------------------
def test_the_rig_file_opens_and_closes():
    rig = open_rig(RIGS / "maxlab_sim.yaml", seed=0)
    try:
        d = rig.description
        assert d["amplifier"]["driver"] == "maxlab" and d["stimulator"]["driver"] == "maxlab"
        assert rig.amplifier.n_channels == 64 and rig.amplifier.sample_rate_hz == 20000.0
        assert rig.limits.n_electrodes == 64 and rig.stimulator is rig.amplifier
    finally:
        rig.close()
    assert not any(u.power for u in rig.emulators[0].units)


def test_emulate_maxlab_prints_where_to_connect_and_serves_the_driver():
    from rigctl.commands.emulate import run_emulator

    args = argparse.Namespace(device="maxlab", seed=3, realtime=False, drug="none", sample_rate_hz=None,
                              mode="voltage", host="127.0.0.1", port=0, duration_s=20.0, wells=6)
    info: dict = {}
    ready, stop = threading.Event(), threading.Event()
    factory = lambda a, mode: ClockBackend(sample_rate_hz=a.sample_rate_hz, chunk_samples=200, n_electrodes=8)  # noqa: E731
    t = threading.Thread(target=run_emulator, args=(args, factory),
                         kwargs={"ready": lambda d: (info.update(d), ready.set()), "stop": stop})
    t.start()
    try:
        assert ready.wait(5.0)
        assert "6 well(s) x 1024 channels at 20000 Hz" in info["stream"]
        port = int(info["raw_stream"].split(":")[2].split(" ")[0])
        drv = MaxLab("127.0.0.1", info["command_port"], channels=list(range(8)), wells=6, data_port=port)
        drv.start()
        x = drv.read().samples
        assert np.array_equal(x, ClockBackend.ramp(0, len(x), 8))
        drv.close()
    finally:
        stop.set()
        t.join(5.0)
    assert not t.is_alive()


def test_bss_session_through_the_maxlab_emulator_equals_the_direct_rig(tmp_path):
    """Done-when of issue 18 item 5: 256 trials of `isomura2023_bss_maxlab` through rigs/maxlab_sim.yaml
    (driver, TCP commands, ZMQ stream, stimulation units, DAC sequences) give byte-identical trials,
    stimuli and spikes to the simulated rig at 20 kHz given the same pulse (±1000.5 mV = 345 DAC steps,
    which the DAC makes exactly; each sequence's delay is aimed at the commanded sample)."""
    opts = dict(seed=4, sessions=1, progress=False)
    hil = start_run("isomura2023_bss_maxlab", RunOptions(rig=str(RIGS / "maxlab_sim.yaml"), **opts), tmp_path / "hil")
    ref = start_run("isomura2023_bss_maxlab", RunOptions(rig="sim", **opts), tmp_path / "ref",
                    rig_factory=functools.partial(open_rig, sample_rate_hz=20000.0))
    assert len(read_trials(hil)) == 256
    for reader in (read_trials, read_stims, read_spikes):
        assert reader(hil).tobytes() == reader(ref).tobytes(), reader.__name__
