"""Online mode on recorded data: replay a culture trial by trial through `OnlineFreeEnergy` (the same code
the real-time loop runs) and collect the result as a `CultureFit`. Pure numpy, no I/O."""

from __future__ import annotations

import numpy as np

from rigctl.errors import ModelInputError
from rigctl.model import network as nn
from rigctl.model.data import Trials
from rigctl.model.ensembles import ensemble_response
from rigctl.model.metrics import weight_correlation
from rigctl.model.online import OnlineFreeEnergy, init_baseline
from rigctl.model.result import build_fit
from rigctl.model.trajectory import Trajectory
from rigctl.types import TrialRecord


def online_baseline(batch: list[Trials], train_sessions: int = nn.N_INIT) -> float:
    """Batch B (spec 2.3) with ensembles chosen on sessions 1..Ninit only; uses no later session."""
    return float(np.mean([init_baseline(tr.r, tr.s, tr.session, train_sessions, tr.name) for tr in batch]))


def replay(tr: Trials, model: OnlineFreeEnergy) -> OnlineFreeEnergy:
    """Feed every session of `tr` through the hooks, in the loop's order: begin, update per trial, end."""
    counts = tr.r.astype(np.int32)
    for k, label in enumerate(tr.session_labels):
        idx = np.flatnonzero(tr.sess == k)
        model.begin_session(int(label), tr.o[idx])
        for n, t in enumerate(idx, start=1):
            model.update(TrialRecord.bss(int(label), n, int(t), tr.s[t], tr.o[t], counts[t]))
        model.end_session(int(label))
    return model


def fit_online(tr: Trials, baseline: float | None, train_sessions: int = nn.N_INIT, lam: float = nn.LAMBDA,
               gain: float = nn.GAIN):
    """One culture in online mode; `baseline` None means the culture's own sessions 1..Ninit."""
    if tr.n_sessions <= train_sessions:
        raise ModelInputError(f"{tr.name}: online mode needs more than {train_sessions} sessions "
                              f"(got {tr.n_sessions}) to predict anything")
    model = replay(tr, OnlineFreeEnergy(tr.o.shape[1], train_sessions, lam, gain, baseline))
    if model.status != "active":
        raise ModelInputError(f"{tr.name}: online model inactive: {model.reason}")
    h, st = model.hist, model.stepper
    w1, w0, w1p, w0p = (np.array(h[k]) for k in ("w1", "w0", "w1p", "w0p"))
    sessions = model.sessions
    traj = Trajectory(st.phi1.copy(), st.phi0.copy(), w1, w0, w1p, w0p,
                      np.array([p["L"] for p in sessions]), np.concatenate(h["xp"]),
                      np.array([p["err_x"] for p in sessions]), np.array([p["err_W"] for p in sessions]),
                      weight_correlation(w1[-1] - w0[-1], w1p[-1] - w0p[-1]))
    x = np.concatenate(h["x"])
    notes = ("online: ensembles, normalisation, baseline and phi from sessions 1..%d; drift of session k > %d "
             "from session k-1" % (train_sessions, train_sessions),)
    return build_fit(tr, "online", model.ensembles, ensemble_response(tr.r, model.ensembles), x, traj,
                     model.baseline, train_sessions, lam, gain, notes)
