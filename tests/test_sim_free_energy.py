"""Issue 6 on the simulated rig itself: the free-energy model fitted to a learning run falls across sessions,
and with plasticity blocked (`--drug apv`) it stays flat. Both runs go through `rigctl run` as a user runs
them; the model's figures come from the run's summary.json (`model.free_energy_fit`).

20 sessions of the paper's protocol (seed 0) are enough: the online mode's L depends only on the past, so its
first 20 sessions are those of a 100-session run (checked: identical). Measured for seeds 0-2 (README): control
drops 525-669 from session 1 to sessions 16-20, APV 17-32."""

import json

import numpy as np
import pytest

from runcli import rigctl

SESSIONS = 20


def _online_fit(tmp_path, *extra: str) -> dict:
    out = tmp_path / ("run" + "".join(extra).replace("-", "_"))
    rigctl("run", "isomura2023_bss", "--rig", "sim-events", "--sessions", str(SESSIONS), "--seed", "0",
           "--out", str(out), "--no-progress", *extra)
    fit = json.loads((out / "summary.json").read_text())["model"]["free_energy_fit"]["online"]
    assert "error" not in fit, fit["error"]  # both ensembles found in sessions 1-10, drug or not
    assert fit["ensembles"]["g1"] and fit["ensembles"]["g2"]
    return fit


@pytest.mark.slow
def test_free_energy_falls_on_a_learning_sim_run_and_not_with_plasticity_blocked(tmp_path):
    drop = {}
    for drug in ("none", "apv"):
        L = np.asarray(_online_fit(tmp_path, "--drug", drug)["L"])
        assert L.shape == (SESSIONS,) and np.isfinite(L).all()
        drop[drug] = float(L[0] - L[-5:].mean())
    # measured 265 vs 34 (seed 0; the issue-16 culture learns by small relative changes, as the released ones
    # do; the culture before it, whose separation came from a gain rise, dropped 669)
    assert drop["none"] > 150, drop
    assert drop["none"] > 4 * abs(drop["apv"]), drop
    assert abs(drop["apv"]) < 100, drop
