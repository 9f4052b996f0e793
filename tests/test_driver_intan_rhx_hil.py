"""Hardware in the loop: the BSS protocol through the RHX driver and emulator (voltage traces over the
waveform port, current pulses by manual trigger) gives the same stimulus schedule, the same raw samples
and the same evoked counts as the simulated rig driven directly, for the same seed."""

import time
from pathlib import Path

import numpy as np

from fakes import fake_sim_rig
from hil import RIGS, fake_backend, run_direct_and_via_rig_file
from rigctl.drivers import _rhx_wire as rw
from rigctl.protocol import BssSchedule, load_protocol
from rigctl.rigs import open_rig
from rigctl.safety import SafetyLimits



def protocol_uA(tmp_path: Path) -> Path:
    path = tmp_path / "bss_uA.yaml"
    path.write_text(
        "extends: isomura2023_bss.yaml\n"
        "name: bss_current\n"
        "sessions: 2\n"
        "trials_per_session: 10\n"
        "isi_s: 0.2\n"
        "rest_s: 0.4\n"
        "first_trial_s: 0.5\n"
        "pulse: {unit: uA, phase1_amplitude: -10, phase1_us: 200, phase2_amplitude: 10, phase2_us: 200,"
        " interphase_us: 0}\n"
    )
    return path


def drive(amplifier, stimulator, schedule: BssSchedule, lookahead: int) -> tuple[np.ndarray, list]:
    """A minimal loop without DSP: schedule ahead, read, tell the stimulator the clock. -> raw, commands."""
    amplifier.start()
    raw, clock, nxt, commands = [], 0, 0, []
    end = schedule.trial_sample(schedule.n_trials - 1) + int(0.05 * schedule.sample_rate_hz)
    while clock < end:
        while nxt < schedule.n_trials and schedule.trial_sample(nxt) < clock + lookahead:
            cmd = schedule.trial(nxt).command
            if cmd is not None:
                stimulator.schedule(cmd)
                commands.append(cmd)
            nxt += 1
        chunk = amplifier.read()
        assert chunk.first_sample == clock
        raw.append(chunk.samples)
        clock = chunk.end_sample
        stimulator.on_chunk(clock)
    amplifier.stop()
    return np.concatenate(raw)[:end], commands


def _direct_and_via_rhx(direct_rig, schedule: BssSchedule, **open_kw):
    """The schedule driven on `direct_rig`, then through rigs/rhx_sim.yaml (the RHX wire) opened with
    `open_kw`. -> direct raw, direct commands, raw through the wire, the RHX emulator."""
    direct_raw, commands = drive(direct_rig, direct_rig, schedule, 5000)
    rig = open_rig(RIGS / "rhx_sim.yaml", **open_kw)
    try:
        raw, _ = drive(rig.amplifier, rig.stimulator, schedule, 5000)
        return direct_raw, commands, raw, rig.emulators[0]
    finally:
        rig.close()


def test_raw_samples_and_pulses_through_rhx_equal_the_direct_rig(tmp_path):
    """Independent of the signal path: every raw sample and every pulse is the same as without the wire."""
    protocol = load_protocol(protocol_uA(tmp_path)).with_overrides(sessions=1, trials_per_session=8)
    schedule = BssSchedule(protocol, 2, 25000.0)
    direct_raw, commands, raw, emu = _direct_and_via_rhx(fake_sim_rig(2, "voltage"), schedule, seed=2,
                                                         backend_factory=fake_backend)
    assert np.array_equal(raw, direct_raw)
    assert emu.errors == []
    assert [(c.sample, c.electrodes, c.pulse) for c in emu.delivered] == \
        [(c.sample, tuple(sorted(c.electrodes)), c.pulse) for c in commands]


def test_bss_through_rhx_matches_the_direct_rig(tmp_path):
    protocol = protocol_uA(tmp_path)
    seed = 5

    a, b, sa, sb, opened = run_direct_and_via_rig_file(protocol, "rhx_sim.yaml", seed, tmp_path,
                                                       SafetyLimits(n_electrodes=64))
    assert len(a) == len(b) == 20
    assert np.array_equal(a["sample"], b["sample"]) and np.array_equal(a["stimuli"], b["stimuli"])
    assert np.array_equal(a["counts"], b["counts"]) and a["counts"].sum() > 0
    assert np.array_equal(sa["sample"], sb["sample"]) and np.array_equal(sa["electrode"], sb["electrode"])
    emu = opened[0].emulators[0]
    assert emu.errors == []
    delivered = sorted((c.sample, e) for c in emu.delivered for e in c.electrodes)
    assert delivered == sorted(zip(sa["sample"].tolist(), sa["electrode"].tolist()))
    assert all(c.pulse.phase1_amplitude == -10.0 and c.pulse.phase2_us == 200.0 for c in emu.delivered)
    assert opened[0].stimulator.triggers_sent == len(set(sa["sample"].tolist()))


def test_raw_samples_and_pulses_through_rhx_on_the_real_simulated_culture(tmp_path):
    """The same check on rigctl's own culture model (SimRig, voltage mode), not the test double."""
    from rigctl.sim.rig import SimRig

    protocol = load_protocol(protocol_uA(tmp_path)).with_overrides(sessions=1, trials_per_session=5)
    schedule = BssSchedule(protocol, 4, 25000.0)
    direct_raw, commands, raw, emu = _direct_and_via_rhx(SimRig(sample_rate_hz=25000.0, seed=4, mode="voltage"),
                                                         schedule, seed=4)
    assert np.array_equal(raw, direct_raw)
    assert emu.errors == [] and len(emu.delivered) == len(commands) > 0
    assert [c.sample for c in emu.delivered] == [c.sample for c in commands]


def test_the_emulated_controller_stays_near_a_client_that_stops_reading():
    """Accelerated, the emulator paces itself to the driver's reads: while the loop is busy (a checkpoint, a
    report), the controller's clock must not run ahead through the socket buffers (hundreds of ms), or a
    closed loop's next pulse, aimed 80 ms after what it has read, is already past on the controller."""
    rig = open_rig(RIGS / "rhx_sim.yaml", seed=0)
    try:
        amp, emu = rig.amplifier, rig.emulators[0]
        amp.start()
        amp.read()
        before, still_since = emu.timestamp, time.monotonic()
        deadline = still_since + 5.0
        while time.monotonic() - still_since < 0.3 and time.monotonic() < deadline:  # until it stops producing
            if emu.timestamp != before:
                before, still_since = emu.timestamp, time.monotonic()
            time.sleep(0.01)
        write = rw.FRAMES_PER_BLOCK * emu.blocks_per_write
        assert emu.timestamp - amp.stream_clock <= max(emu.lead, 2 * write) + write
        assert emu.timestamp - amp.stream_clock < 0.05 * amp.fs  # far less than an 80-ms decision margin
    finally:
        rig.close()
