"""Online mode: the free-energy model run trial by trial, strictly predictive (nothing from the future).

Choices (docs/model.md, "Online mode"):
- sessions 1..Ninit are only stored; at the end of session Ninit the ensembles (spec 2.2 criteria), the
  normalisation statistics (spec 2.3), the baseline B (given, or this culture's own sessions 1..Ninit) and φ
  (spec 3.4.2) are fixed from those sessions alone;
- drift (spec 2.3 step 3) is removed causally: a step of session k > Ninit subtracts X̄_{k-1} - X̄_1, the
  previous session's mean (inside 1..Ninit, each session's own mean, as in the spec: all of it is past by
  the time anything is fitted);
- from session Ninit+1 on, `begin_session` returns x^P for the coming session (spec 3.5) before any of its
  responses exist; `end_session` scores it (spec 3.6) and folds it into the weights.

No I/O: the loop stores what the hooks return.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from rigctl.errors import ModelInputError
from rigctl.model import network as nn
from rigctl.model import normalise as nz
from rigctl.model.data import make_trials
from rigctl.model.ensembles import Ensembles, ensemble_response, require_nonempty, select_ensembles
from rigctl.model.trajectory import Stepper
from rigctl.types import TrialRecord

_ROUND = 6  # decimals in JSON payloads


def _r(v: Any) -> Any:
    return np.round(np.asarray(v, dtype=float), _ROUND).tolist()


def _selectivity(x: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Spec 2.4.1 for one session: mean x(j) given s_j = 1 / 0 (the session mean when one is absent)."""
    out: dict[str, float] = {}
    for j in range(2):
        for v, tag in ((1, "on"), (0, "off")):
            m = s[:, j] == v
            out[f"x_s{j + 1}_{tag}"] = float(x[m, j].mean() if m.any() else x[:, j].mean())
    out["separation"] = 0.5 * ((out["x_s1_on"] - out["x_s1_off"]) + (out["x_s2_on"] - out["x_s2_off"]))
    return out


def init_baseline(r: np.ndarray, s: np.ndarray, session: np.ndarray, train_sessions: int,
                  name: str = "culture") -> float:
    """This culture's mean_{k<=Ninit} X̄_k(i) over both ensembles chosen on sessions 1..Ninit: its term of
    the batch baseline (spec 2.3) in online mode. Raises ModelInputError on an empty ensemble."""
    tr = make_trials(s, np.zeros((len(s), 1), np.uint8), r, session, name=name)
    keep = tr.sess < train_sessions
    ens = select_ensembles(tr.r[keep], tr.sess[keep], tr.state[keep], min(train_sessions, tr.n_sessions))
    require_nonempty(ens, tr.name)
    xbar = nz.session_means(ensemble_response(tr.r[keep], ens), tr.sess[keep], min(train_sessions, tr.n_sessions))
    return float(xbar.mean())


class OnlineFreeEnergy:
    """The per-trial model hook (rigctl.online.TrialModel). JSON-able returns; picklable state."""

    name = "free_energy"

    def __init__(self, n_stimuli: int = 32, train_sessions: int = nn.N_INIT, lam: float = nn.LAMBDA,
                 gain: float = nn.GAIN, baseline: float | None = None, keep_history: bool = True):
        if train_sessions < 1:
            raise ModelInputError(f"train_sessions must be >= 1, got {train_sessions}")
        self.n_stimuli, self.train_sessions, self.lam, self.gain = n_stimuli, train_sessions, lam, gain
        self.baseline_given = baseline
        self.keep_history = keep_history
        self.status = "collecting"  # collecting -> active, or inactive (with self.reason)
        self.reason: str | None = None
        self.baseline: float | None = None
        self.ensembles: Ensembles | None = None
        self.stats: nz.NormStats | None = None
        self.stepper: Stepper | None = None
        self.n_done = 0  # completed sessions
        self.labels: list[int] = []  # session labels in order
        self.session_raw_mean: list[np.ndarray] = []  # X̄_k [2] per completed session (raw spikes/stim)
        self.sessions: list[dict] = []  # end_session payloads
        self.hist: dict[str, list] = {k: [] for k in ("x", "xp", "w1", "w0", "w1p", "w0p")}
        self._buf: dict[str, list] = {k: [] for k in ("r", "s", "o", "sess")}  # sessions 1..Ninit
        self._cur: dict[str, list] = {k: [] for k in ("x", "raw", "s", "o")}  # current session (active)
        self._plan: np.ndarray | None = None  # stimuli of the coming session, as announced
        self._fast: tuple | None = None  # per-trial constants, rebuilt on activation/set_state
        self._n_electrodes = 0

    # ---- hooks -------------------------------------------------------------------------------------------
    def begin_session(self, session: int, stimuli: np.ndarray) -> dict | None:
        """From session Ninit+1 on: the prediction x^P (spec 3.5) for the announced stimuli, made before
        the session is recorded."""
        if self.status != "active":
            return None
        self._plan = np.asarray(stimuli, dtype=np.uint8).copy()
        xp = self.stepper.predict(self._plan)
        return {"session": int(session), "model_session": self.n_done + 1, "n_trials": int(len(xp)),
                "x_pred": _r(xp), "x_pred_mean": _r(xp.mean(axis=0)) if len(xp) else [None, None],
                "basis": f"phi and W from sessions 1..{self.train_sessions}, predicted weights after"}

    def update(self, trial: TrialRecord) -> None:
        """Store a trial (sessions 1..Ninit) or normalise it into x (spec 2.3, causal drift)."""
        if self.status == "active":
            wmat, ref_d, inv_2sd, offset = self._fast
            raw = trial.counts @ wmat  # X_t(i): mean over G_i (spec 2.3 step 1)
            src = trial.sources
            code = (1 - int(src[0])) * 2 + (1 - int(src[1]))  # STATE_LABELS order
            # spec 2.3 steps 2-6: ½ + (X - X̄_1^{s} - drift - mean)/(2 sd) + (X̄_1 - B)/(4B), clipped to [0, 1]
            x = np.minimum(np.maximum((raw - ref_d[code]) * inv_2sd + offset, 0.0), 1.0)
            cur = self._cur
            cur["x"].append(x)
            cur["raw"].append(raw)
            cur["s"].append(src.copy())
            cur["o"].append(trial.stimuli.copy())
        elif self.status == "collecting":
            b = self._buf
            b["r"].append(trial.counts.copy())  # the caller may reuse its buffers
            b["s"].append(trial.sources.copy())
            b["o"].append(trial.stimuli.copy())
            b["sess"].append(self.n_done)

    def end_session(self, session: int) -> dict:
        self.labels.append(int(session))
        if self.status == "collecting":
            self.n_done += 1
            if self.n_done < self.train_sessions:
                return {"session": int(session), "status": "collecting",
                        "sessions_until_fit": self.train_sessions - self.n_done}
            return self._activate(int(session))
        if self.status != "active":
            self.n_done += 1
            return {"session": int(session), "status": "inactive", "reason": self.reason}
        cur = self._cur
        n = len(cur["x"])
        if n == 0:
            self.n_done += 1
            self.session_raw_mean.append(self.session_raw_mean[-1])
            return {"session": int(session), "status": "active", "trials": 0, "note": "no trials recorded"}
        x, o, s = np.array(cur["x"]), np.array(cur["o"], dtype=np.uint8), np.array(cur["s"], dtype=np.uint8)
        as_planned = self._plan is not None and self._plan.shape == o.shape and bool((self._plan == o).all())
        xp = self.stepper.predict(o)  # same weights as at begin_session: nothing learned from this session
        res = self.stepper.finish(x, o, xp)
        self.session_raw_mean.append(np.array(cur["raw"]).mean(axis=0))
        self._record(x, xp, res)
        out = self._session_payload(int(session), x, xp, s, res)
        out["prediction_as_announced"] = as_planned
        self.sessions.append(out)
        self._cur = {k: [] for k in cur}
        self._plan = None
        self.n_done += 1
        self._refresh_fast()
        return out

    def summary(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "mode": "online", "status": self.status,
                               "train_sessions": self.train_sessions, "lambda": self.lam, "gain": self.gain,
                               "sessions_completed": self.n_done}
        if self.reason:
            out["reason"] = self.reason
        if self.status != "active":
            return out
        t = self.stepper
        scored = [p for p in self.sessions if p.get("predicted")]
        out.update({
            "baseline": self.baseline, "phi1": _r(t.phi1), "phi0": _r(t.phi0),
            "ensembles": {"g1": [int(e) + 1 for e in self.ensembles.g1],
                          "g2": [int(e) + 1 for e in self.ensembles.g2], "numbering": "1-based electrodes"},
            "L": [p["L"] for p in self.sessions], "err_x": [p["err_x"] for p in self.sessions],
            "err_W": [p["err_W"] for p in self.sessions],
            "separation": [p["separation"] for p in self.sessions],
            "err_x_last10": float(np.mean([p["err_x"] for p in scored[-10:]])) if scored else None,
            "L_first": self.sessions[0]["L"], "L_last": self.sessions[-1]["L"],
        })
        if self.keep_history and self.hist["w1"]:
            w = self.hist["w1"][-1] - self.hist["w0"][-1]
            wp = self.hist["w1p"][-1] - self.hist["w0p"][-1]
            from rigctl.model.metrics import weight_correlation
            out["weight_corr_last"] = weight_correlation(w, wp)
        return out

    def get_state(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_fast"}
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(copy.deepcopy(state))
        self._refresh_fast()

    # ---- internals ---------------------------------------------------------------------------------------
    def _deactivate(self, reason: str, session: int) -> dict:
        self.status, self.reason = "inactive", reason
        self._buf = {k: [] for k in self._buf}
        return {"session": session, "status": "inactive", "reason": reason}

    def _activate(self, session: int) -> dict:
        """End of session Ninit: fix ensembles, normalisation, B and φ from sessions 1..Ninit (see module
        docstring) and replay those sessions through the stepper (spec 3.4.3-4, 3.5)."""
        b = self._buf
        try:
            tr = make_trials(np.array(b["s"]), np.array(b["o"]), np.array(b["r"]), np.array(b["sess"]) + 1)
            sess, state, k = tr.sess, tr.state, tr.n_sessions
            if k < self.train_sessions:
                raise ModelInputError(f"only {k} of the first {self.train_sessions} sessions held trials")
            if tr.o.shape[1] != self.n_stimuli:
                raise ModelInputError(f"trials carry {tr.o.shape[1]} stimuli, model expects {self.n_stimuli}")
            ens = select_ensembles(tr.r, sess, state, k)  # spec 2.2 on sessions 1..Ninit
            require_nonempty(ens, f"after sessions 1..{k}")
            x_raw = ensemble_response(tr.r, ens)
            xbar = nz.session_means(x_raw, sess, k)
            baseline = self.baseline_given if self.baseline_given is not None else float(xbar.mean())
            drift = nz.drift_own_session(xbar, sess)  # past sessions: their own means (spec 2.3 step 3)
            stats = nz.fit_stats(x_raw, sess, state, drift, np.ones(tr.n_steps, bool), baseline)
            x = nz.apply_stats(x_raw, state, drift, stats)
            phi1, phi0 = nn.estimate_phi(x)  # spec 3.4.2
        except ModelInputError as exc:
            return self._deactivate(str(exc), session)
        self.ensembles, self.stats, self.baseline = ens, stats, baseline
        self._n_electrodes = int(tr.r.shape[1])
        self.stepper = Stepper(tr.o.shape[1], phi1, phi0, self.train_sessions, self.lam, self.gain)
        self.session_raw_mean = [xbar[i] for i in range(k)]
        self.status = "active"
        for i in range(k):
            m = sess == i
            xp = self.stepper.predict(tr.o[m])
            res = self.stepper.finish(x[m], tr.o[m], xp)
            self._record(x[m], xp, res)
            self.sessions.append(self._session_payload(self.labels[i], x[m], xp, tr.s[m], res))
        self._buf = {k2: [] for k2 in b}
        self._refresh_fast()
        out = dict(self.sessions[-1])
        out["fitted"] = {"phi1": _r(phi1), "phi0": _r(phi0), "baseline": baseline,
                         "g1": [int(e) + 1 for e in ens.g1], "g2": [int(e) + 1 for e in ens.g2],
                         "L_training": [p["L"] for p in self.sessions]}
        return out

    def _record(self, x: np.ndarray, xp: np.ndarray, res: dict) -> None:
        if self.keep_history:
            self.hist["x"].append(x)
            self.hist["xp"].append(xp)
            for key in ("w1", "w0", "w1p", "w0p"):
                self.hist[key].append(res[key])

    def _session_payload(self, session: int, x: np.ndarray, xp: np.ndarray, s: np.ndarray, res: dict) -> dict:
        out: dict[str, Any] = {"session": session, "status": "active", "trials": int(len(x)),
                               "predicted": self.stepper.k > self.train_sessions,
                               "L": res["L"], "err_x": res["err_x"], "err_W": res["err_w"]}
        out.update(_selectivity(x, s))
        out["x_mean"] = _r(x.mean(axis=0))
        out["x_pred_mean"] = _r(xp.mean(axis=0))
        return out

    def _refresh_fast(self) -> None:
        """Constants of the per-trial path: ensemble indices, session-1 state means, the causal drift of
        the coming session (previous session's mean - session 1's) folded into the z-score mean."""
        if self.status != "active":
            self._fast = None
            return
        st, ens = self.stats, self.ensembles
        wmat = np.zeros((self._n_electrodes, 2))
        wmat[ens.g1, 0] = 1.0 / ens.g1.size  # X_t(i) = counts @ wmat[:, i] (spec 2.3 step 1)
        wmat[ens.g2, 1] = 1.0 / ens.g2.size
        drift = self.session_raw_mean[-1] - self.session_raw_mean[0]  # causal drift, docs/model.md
        # x = ½ + (X - ref[s] - drift - μ)/(2σ) + off = (X - ref_d[s]) / (2σ) + (½ + off)
        self._fast = (wmat, st.state_ref + drift + st.z_mean, 1.0 / (2.0 * st.z_sd), 0.5 + st.offset)
