"""The model's part of a run's summary.json (called by `rigctl.report.build_summary`): both modes fitted
to the run's stored trials, B from the run itself. Reads the run; never raises for a short or unusable
run (the reason goes into the summary instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rigctl.errors import RigctlError
from rigctl.model import network as nn
from rigctl.model.batch import batch_baseline, fit_one
from rigctl.model.loading import load_run


def run_model_summary(run_dir: Path, train_sessions: int = nn.N_INIT) -> dict[str, Any]:
    """{"free_energy_fit": {"published": model.json dict | {"error": ...}, "online": ...}}."""
    try:
        tr = load_run(Path(run_dir)).cultures[0]
    except RigctlError as exc:
        return {"free_energy_fit": {"error": str(exc)}}
    out: dict[str, Any] = {}
    for mode in ("published", "online"):
        try:
            if tr.n_sessions <= train_sessions:
                raise RigctlError(f"{tr.n_sessions} sessions recorded; the model needs more than "
                                  f"{train_sessions} (train_sessions) to predict anything")
            b = batch_baseline([tr], mode, train_sessions)
            out[mode] = fit_one(tr, mode, b, train_sessions).to_json()
        except RigctlError as exc:
            out[mode] = {"error": str(exc)}
    return {"free_energy_fit": out}
