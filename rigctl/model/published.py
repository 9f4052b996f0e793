"""Published mode: the authors' analysis exactly (spec 2.2-2.3, 3.4-3.6, 4.2), for a batch of cultures.
Ensembles, drift removal and z-scoring use all sessions, as in the original (spec 4.4.2). Pure numpy."""

from __future__ import annotations

import numpy as np

from rigctl.model import network as nn
from rigctl.model import normalise as nz
from rigctl.model.data import Trials
from rigctl.model.ensembles import ensemble_response, require_nonempty, select_ensembles
from rigctl.model.result import CultureFit, build_fit
from rigctl.model.trajectory import fit_trajectory


def published_baseline(batch: list[Trials], train_sessions: int = nn.N_INIT) -> float:
    """B over the batch: mean over (culture, ensemble) of mean_{k<=Ninit} X̄_k(i), with each culture's
    all-session ensembles (spec 2.3)."""
    means = []
    for tr in batch:
        ens = select_ensembles(tr.r, tr.sess, tr.state, tr.n_sessions)
        require_nonempty(ens, tr.name)
        xbar = nz.session_means(ensemble_response(tr.r, ens), tr.sess, tr.n_sessions)
        means.append(xbar[:train_sessions].mean(axis=0))
    return nz.batch_baseline(means)


def fit_published(tr: Trials, baseline: float, train_sessions: int = nn.N_INIT, lam: float = nn.LAMBDA,
                  gain: float = nn.GAIN) -> CultureFit:
    """One culture, spec 4.2 steps 3-10 with the batch baseline B given."""
    sess, state, k = tr.sess, tr.state, tr.n_sessions
    ens = select_ensembles(tr.r, sess, state, k)  # spec 2.2, all sessions
    require_nonempty(ens, tr.name)
    x_raw = ensemble_response(tr.r, ens)  # spec 2.3 step 1
    drift = nz.drift_own_session(nz.session_means(x_raw, sess, k), sess)  # spec 2.3 step 3
    stats = nz.fit_stats(x_raw, sess, state, drift, np.ones(tr.n_steps, bool), baseline)  # steps 2-5
    x = nz.apply_stats(x_raw, state, drift, stats)  # spec 2.3 steps 2-6
    traj = fit_trajectory(x, tr.o, sess, k, train_sessions, lam, gain)
    return build_fit(tr, "published", ens, x_raw, x, traj, baseline, train_sessions, lam, gain)
