"""Issue 16: the figures that compare raw responses (rigctl.model.realism), on made-up data, on the released
cultures (the issue's table), and the simulated culture's spontaneous network bursts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rigctl.model.realism import RELEASED_SOURCE_ELECTRODES, response_figures

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isomura2023"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"released data not found at {DATA} (../shared absent)")


def _made_up(gain_last: float = 1.0):
    """20 sessions x 64 steps, 8 electrodes: 0-1 respond to s1 (6 on / 1 off), 4-5 to s2, 2 and 6 stimulate but
    never respond; the last 10 sessions are scaled by gain_last."""
    rng = np.random.default_rng(0)
    t = 20 * 64
    s = np.tile(rng.integers(0, 2, (64, 2)), (20, 1)).astype(np.uint8)  # one sequence, repeated per session
    session = np.repeat(np.arange(1, 21), 64)
    r = np.full((t, 8), 0.2)
    r[:, 0:2] = np.where(s[:, :1] == 1, 6.0, 1.0)
    r[:, 4:6] = np.where(s[:, 1:] == 1, 6.0, 1.0)
    r[session > 10] *= gain_last
    r[~s.any(axis=1)] = 0.2  # nothing stimulated: spontaneous only
    return s, r, session


def test_made_up_figures_are_what_was_put_in():
    s, r, session = _made_up(gain_last=1.2)
    fig = response_figures(s, r, session, ([0, 2], [4, 5, 6]))
    assert fig.ensemble_sizes == (2, 2)
    assert fig.own_stim_share == (0.5, 1.0)  # G1 = {0, 1}: 0 stimulates for s1, 1 does not
    on, off = fig.on_off_counts[0]
    assert on == pytest.approx(6.0)
    assert 0.2 < off < 1.0  # 1 spike when s2 alone, 0.2 when nothing
    assert fig.source_ratio[0] == pytest.approx(on / off)
    assert fig.gain == pytest.approx(0.2, abs=1e-9)
    assert fig.spont_per_window == pytest.approx(0.2)


@needs_data
def test_released_mix0_culture_1_matches_the_issue_table():
    from rigctl.model.loading import load_mat

    tr = load_mat(DATA / "response_data_mix0.mat").cultures[0]
    fig = response_figures(tr.s, tr.r, tr.session, RELEASED_SOURCE_ELECTRODES)
    on, off = fig.on_off_counts[0]
    assert on == pytest.approx(8.8, abs=0.05) and off == pytest.approx(0.58, abs=0.01)  # "8.8 vs 0.58 spikes"
    assert fig.own_stim_share == pytest.approx((13 / 15, 16 / 17))  # the issue's 0.56-0.94 over mix0 cultures
    assert fig.ensemble_sizes == (15, 17)
    assert -0.14 <= fig.gain <= 0.07
    assert fig.spont_per_window == pytest.approx(0.17, abs=0.01)


def test_spontaneous_run_has_network_bursts_in_the_published_range(tmp_path):
    """A 2-minute spontaneous run of the simulated culture: bursts 1-20 per minute lasting 50 ms - 2 s
    (docs/culture.md, Wagenaar et al. 2006; van Pelt et al. 2004), 0.1-0.3 spikes per electrode per 20 ms."""
    from runcli import rigctl

    out = tmp_path / "spont"
    rigctl("run", "spontaneous", "--rig", "sim-events", "--seed", "0", "--out", str(out), "--no-progress",
           "--set", "duration_s=120")
    sp = json.loads((out / "summary.json").read_text())["spontaneous"]
    b = sp["bursts"]
    assert 1.0 <= b["rate_per_min"] <= 20.0
    assert 50.0 <= b["median_duration_ms"] <= 2000.0
    assert 0.1 <= sp["count_per_20ms_window"] <= 0.3
    assert b["fraction_of_spikes"] >= 0.2  # bursts carry a good part of the spikes, as in cultures
