"""Hardware in the loop: a BSS protocol through the Pulse Pal driver and emulator gives the same stimulus
schedule and the same evoked counts as the simulated rig driven directly, for the same seed."""

from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory, fake_sim_rig
from rigctl.rigs import open_rig
from rigctl.session import RunOptions, start_run
from rigctl.store import read_stims, read_trials

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
    opts = RunOptions(rig="sim-events", seed=seed, progress=False)
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
