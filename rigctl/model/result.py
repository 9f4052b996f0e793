"""One culture's fitted model (either mode) and its JSON form (the model.json schema, docs/model.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rigctl.model import metrics
from rigctl.model import normalise as nz
from rigctl.model.data import STATE_LABELS, Trials
from rigctl.model.ensembles import Ensembles, session_selectivity
from rigctl.model.network import sigmoid
from rigctl.model.trajectory import Trajectory

#: Sessions at the end of a run used for calibration and the err_x summary (spec 3.6: sessions 91-100).
LAST_SESSIONS = 10


@dataclass(frozen=True, eq=False)
class CultureFit:
    """Everything the plots and model.json need. x, xp [T, 2]; selectivity arrays [K] (spec 2.4.1);
    state_means [2, K, 4] raw ensemble responses (spec 2.1/2.3 step 1)."""

    name: str
    mode: str
    trials: Trials
    ensembles: Ensembles
    x_raw: np.ndarray
    x: np.ndarray
    traj: Trajectory
    baseline: float | None
    train_sessions: int
    lam: float
    gain: float
    selectivity: dict[str, np.ndarray]
    state_means: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def n_sessions(self) -> int:
        return self.trials.n_sessions

    def last_mask(self) -> np.ndarray:
        """Steps of the last LAST_SESSIONS sessions (sessions 91-100 in the released data)."""
        return self.trials.sess >= self.n_sessions - LAST_SESSIONS

    def calibration(self) -> dict[str, list]:
        m = self.last_mask()
        return metrics.calibration(self.x[m], self.traj.xp[m])

    def err_x_last(self) -> float:
        return float(self.traj.err_x[-LAST_SESSIONS:].mean())

    def _err_w_qa(self) -> dict[str, Any] | None:
        """Spec 3.6 err_W_qA per session for the empirical weights, when the mixing is known (released
        condition tags: the culture name's prefix); None otherwise."""
        a = metrics.MIXING_BY_CONDITION.get(self.name.split(":")[0])
        if a is None:
            return None
        qa11, qa10 = metrics.ideal_likelihood(a, self.traj.w1.shape[2])
        vals = [metrics.err_w_qa(w1, w0, qa11, qa10) for w1, w0 in zip(self.traj.w1, self.traj.w0)]
        return {"mixing_a": a, "columns": ["W1 ensemble 1", "W1 ensemble 2", "W0 ensemble 1", "W0 ensemble 2"],
                "per_session": np.array(vals).tolist()}

    def to_json(self) -> dict[str, Any]:
        t = self.traj
        w_last, wp_last = t.w1[-1] - t.w0[-1], t.w1p[-1] - t.w0p[-1]
        return {
            "culture": self.name, "mode": self.mode, "train_sessions": self.train_sessions,
            "lambda": self.lam, "gain": self.gain, "baseline": self.baseline,
            "sessions": [int(v) for v in self.trials.session_labels],
            "ensembles": {"g1": [int(e) + 1 for e in self.ensembles.g1],
                          "g2": [int(e) + 1 for e in self.ensembles.g2], "numbering": "1-based columns of r"},
            "phi1": t.phi1.tolist(), "phi0": t.phi0.tolist(),
            "L": t.L.tolist(), "err_x": t.err_x.tolist(), "err_W": t.err_w.tolist(),
            "summary": {"err_x_last10": self.err_x_last(), "weight_corr_last": t.weight_corr,
                        "L_first": float(t.L[0]), "L_last": float(t.L[-1]),
                        "separation_last10": float(self.selectivity["separation"][-LAST_SESSIONS:].mean())},
            "selectivity": {k: v.tolist() for k, v in self.selectivity.items()},
            "ensemble_response": {f"ensemble{i + 1}": {lab: self.state_means[i, :, j].tolist()
                                                       for j, lab in enumerate(STATE_LABELS)} for i in range(2)},
            "calibration_last10": self.calibration(),
            "err_W_qA": self._err_w_qa(),
            "weights_last": {"W": w_last.tolist(), "Wp": wp_last.tolist(),
                             "qA11": sigmoid(t.w1[-1]).tolist(), "qA10": sigmoid(t.w0[-1]).tolist()},
            "notes": list(self.notes),
        }


def build_fit(tr: Trials, mode: str, ens: Ensembles, x_raw: np.ndarray, x: np.ndarray, traj: Trajectory,
              baseline: float | None, train_sessions: int, lam: float, gain: float,
              notes: tuple[str, ...] = ()) -> CultureFit:
    sess, k = tr.sess, tr.n_sessions
    cond, _ = nz.state_session_means(x_raw, sess, tr.state, k)
    state_means = np.nan_to_num(np.moveaxis(cond, 2, 0), nan=0.0)
    return CultureFit(tr.name, mode, tr, ens, x_raw, x, traj, baseline, train_sessions, lam, gain,
                      session_selectivity(x, tr.s, sess, k), state_means, notes)
