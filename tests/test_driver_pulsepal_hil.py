"""Hardware in the loop: a BSS protocol through the Pulse Pal driver and emulator gives the same stimulus
schedule and the same evoked counts as the simulated rig driven directly, for the same seed."""

from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory, fake_sim_rig
from rigctl.rigs import open_rig
from rigctl.session import RunOptions, start_run
from rigctl.store import read_spikes, read_stims, read_trials
from rigctl.types import BiphasicPulse

RIGS = Path(__file__).resolve().parents[1] / "rigs"


def four_electrode_protocol(tmp_path: Path) -> Path:
    path = tmp_path / "bss4.yaml"
    path.write_text(
        "extends: isomura2023_bss.yaml\n"
        "name: bss_four_outputs\n"
        "sessions: 2\n"
        "trials_per_session: 16\n"
        "isi_s: 0.2\n"
        "rest_s: 1.0\n"
        "first_trial_s: 0.5\n"
        "stim_groups: {A: [0, 2], B: [4, 6]}\n"
        "pulse: {unit: mV, phase1_amplitude: -1250, phase1_us: 200, phase2_amplitude: 1250, phase2_us: 200,"
        " interphase_us: 0}\n"
        "response_window_ms: [10, 30]\n"
    )
    return path


def fake_backend(*, sample_rate_hz, seed, mode, drug, chunk_ms, realtime):  # noqa: ARG001
    return fake_sim_rig(seed, mode, chunk_ms)


@pytest.mark.parametrize("seed", [3])
def test_bss_through_pulsepal_matches_the_direct_rig(tmp_path, seed):
    protocol = four_electrode_protocol(tmp_path)
    # the rig's own 50-ms chunks, as the Pulse Pal rig reads them (the fake culture's stand-in learning depends
    # on chunking; without --chunk-ms this open-loop run would read 1-s chunks)
    opts = RunOptions(rig="sim-events", seed=seed, progress=False, chunk_ms=50.0)
    direct = start_run(str(protocol), opts, tmp_path / "direct", rig_factory=fake_rig_factory)
    opened = []

    def via_pulsepal(spec, **kw):
        rig = open_rig(spec, backend_factory=fake_backend, **kw)
        opened.append(rig)
        return rig

    opts = RunOptions(rig=str(RIGS / "pulsepal_sim.yaml"), seed=seed, progress=False)
    hil = start_run(str(protocol), opts, tmp_path / "hil", rig_factory=via_pulsepal)
    a, b = read_trials(direct), read_trials(hil)
    assert len(a) == len(b) == 32
    assert np.array_equal(a["sample"], b["sample"]) and np.array_equal(a["stimuli"], b["stimuli"])
    assert np.array_equal(a["counts"], b["counts"])
    assert a["counts"].sum() > 0
    sa, sb = read_stims(direct), read_stims(hil)
    assert np.array_equal(sa["sample"], sb["sample"]) and np.array_equal(sa["electrode"], sb["electrode"])
    rig = opened[0]
    assert rig.description["stimulator"]["driver"] == "pulsepal"
    assert rig.stimulator.triggers_sent > 0
    # what the emulated device put on the electrodes is exactly what was commanded
    emu = rig.emulators[0]
    assert emu.errors == []
    delivered = sorted((c.sample, e) for c in emu.delivered for e in c.electrodes)
    assert delivered == sorted(zip(sa["sample"].tolist(), sa["electrode"].tolist()))
    assert all(c.pulse.phase1_amplitude == -1250.0 and c.pulse.phase2_us == 200.0 for c in emu.delivered)


def test_bss_through_pulsepal_on_the_real_simulated_culture(tmp_path):
    """The same check on rigctl's own culture model (SimRig), not the test double."""
    protocol = four_electrode_protocol(tmp_path)
    seed = 11
    direct = start_run(str(protocol), RunOptions(rig="sim-events", seed=seed, progress=False), tmp_path / "direct",
                       rig_factory=open_rig)
    opened = []

    def via_pulsepal(spec, **kw):
        rig = open_rig(spec, **kw)
        opened.append(rig)
        return rig

    hil = start_run(str(protocol), RunOptions(rig=str(RIGS / "pulsepal_sim.yaml"), seed=seed, progress=False),
                    tmp_path / "hil", rig_factory=via_pulsepal)
    a, b = read_trials(direct), read_trials(hil)
    assert len(a) == len(b) == 32
    assert np.array_equal(a["counts"], b["counts"]) and a["counts"].sum() > 0
    sa, sb = read_stims(direct), read_stims(hil)
    assert np.array_equal(sa["sample"], sb["sample"]) and np.array_equal(sa["electrode"], sb["electrode"])
    assert opened[0].emulators[0].errors == []


def full_session_protocol(tmp_path: Path, name: str, pulse: BiphasicPulse) -> Path:
    """The reference BSS session (256 trials, 1 s apart) on the Pulse Pal's four electrodes, with `pulse`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "extends: isomura2023_bss.yaml\n"
        f"name: {name}\n"
        "sessions: 1\n"
        "stim_groups: {A: [0, 2], B: [4, 6]}\n"
        f"pulse: {{unit: mV, phase1_amplitude: {pulse.phase1_amplitude!r}, phase1_us: {pulse.phase1_us!r},"
        f" phase2_amplitude: {pulse.phase2_amplitude!r}, phase2_us: {pulse.phase2_us!r},"
        f" interphase_us: {pulse.interphase_us!r}}}\n"
    )
    return path


def test_full_session_through_pulsepal_equals_the_direct_rig_given_the_dac_output(tmp_path):
    """A whole 256-trial session of the reference ±1 V pulse through the Pulse Pal over rigctl's culture.

    ±1 V is no level of the Pulse Pal's 12-bit DAC: the culture gets −1000.977 / +996.094 mV, so its
    counts equal the direct rig's only when the direct rig is given that pulse. Given the commanded
    ±1000 mV instead, the direct rig's counts part from the Pulse Pal's at trial 48 for this seed.
    """
    from rigctl.rigs import open_rig as open_any_rig

    seed = 5
    commanded = BiphasicPulse(-1000.0, 200.0, 1000.0, 200.0, 0.0, unit="mV")  # the reference protocol's
    opened = []

    def via_pulsepal(spec, **kw):
        rig = open_rig(spec, **kw)
        opened.append(rig)
        return rig

    hil = start_run(str(full_session_protocol(tmp_path, "commanded", commanded)),
                    RunOptions(rig=str(RIGS / "pulsepal_sim.yaml"), seed=seed, progress=False), tmp_path / "hil",
                    rig_factory=via_pulsepal)
    rig = opened[0]
    delivered = rig.stimulator.output_pulse(commanded)
    assert delivered == BiphasicPulse(-1000.9765625, 200.0, 996.09375, 200.0, 0.0, unit="mV")
    emu = rig.emulators[0]
    assert emu.errors == [] and {c.pulse for c in emu.delivered} == {delivered}

    direct = start_run(str(full_session_protocol(tmp_path, "delivered", delivered)),
                       RunOptions(rig="sim-events", seed=seed, progress=False), tmp_path / "direct",
                       rig_factory=open_any_rig)
    a, b = read_trials(direct), read_trials(hil)
    assert len(b) == 256 and b["counts"].sum() > 0
    assert (direct / "trials.bin").read_bytes() == (hil / "trials.bin").read_bytes()
    assert (direct / "spikes.bin").read_bytes() == (hil / "spikes.bin").read_bytes() and len(read_spikes(hil)) > 0
    # both record what they were told to deliver: same samples and electrodes, each its own amplitudes
    sa, sb = read_stims(direct), read_stims(hil)
    assert np.array_equal(sa["sample"], sb["sample"]) and np.array_equal(sa["electrode"], sb["electrode"])
    assert {(float(x), float(y)) for x, y in zip(sb["phase1_amplitude"], sb["phase2_amplitude"])} == {(-1000.0, 1000.0)}
    assert {(float(x), float(y)) for x, y in zip(sa["phase1_amplitude"], sa["phase2_amplitude"])} == {
        (-1000.9765625, 996.09375)}
    delivered_stims = sorted((c.sample, e) for c in emu.delivered for e in c.electrodes)
    assert delivered_stims == sorted(zip(sb["sample"].tolist(), sb["electrode"].tolist()))

    # the difference matters: the direct rig given the commanded pulse responds otherwise
    as_commanded = start_run(str(full_session_protocol(tmp_path, "as_commanded", commanded)),
                             RunOptions(rig="sim-events", seed=seed, progress=False), tmp_path / "as_commanded",
                             rig_factory=open_any_rig)
    c = read_trials(as_commanded)
    assert np.array_equal(c["stimuli"], b["stimuli"]) and not np.array_equal(c["counts"], b["counts"])
