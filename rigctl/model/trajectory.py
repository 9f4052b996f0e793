"""From normalised activity x to the model's trajectory: φ (spec 3.4.2), effective connectivity and cost per
session (spec 3.4.3-4), forward prediction of sessions Ninit+1.. (spec 3.5) and errors (spec 3.6).
Both modes use this; they differ only in how x was produced. Pure numpy, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.checkpoint import checkpointable
from rigctl.errors import ModelInputError
from rigctl.model import metrics
from rigctl.model import network as nn


@dataclass(frozen=True, eq=False)
class Trajectory:
    """phi1, phi0 [2]; W1, W0, W1p, W0p [K, 2, M] (empirical and predicted weights in force during each
    session); L, err_x, err_w [K]; xp [T, 2] predicted activity; weight_corr at the last session."""

    phi1: np.ndarray
    phi0: np.ndarray
    w1: np.ndarray
    w0: np.ndarray
    w1p: np.ndarray
    w0p: np.ndarray
    L: np.ndarray
    xp: np.ndarray
    err_x: np.ndarray
    err_w: np.ndarray
    weight_corr: float


@checkpointable
class Stepper:
    """Session-by-session state of spec 3.4.3-3.5 once φ is known: the empirical accumulators (λ) and the
    prediction accumulators (gλ). Used by the batch fit and by the per-trial online model alike.

    Per session k (0-based): `weights()` gives (W1_k, W0_k, W1p_k, W0p_k) in force during session k;
    `predict(o)` gives x^P for stimuli o (before the session's responses are seen); `finish(x, o, xp)`
    scores the session and folds it into both accumulators."""

    def __init__(self, n_stimuli: int, phi1: np.ndarray, phi0: np.ndarray, train_sessions: int = nn.N_INIT,
                 lam: float = nn.LAMBDA, gain: float = nn.GAIN):
        self.phi1, self.phi0 = np.asarray(phi1, float), np.asarray(phi0, float)
        self.train_sessions, self.gain = train_sessions, gain
        self.emp = nn.Plasticity.prior(n_stimuli, lam, 1.0)  # spec 3.4.3: Hebb λ/2, Home λ
        self.pred = nn.Plasticity.prior(n_stimuli, lam, gain)  # spec 3.5: Hebb gλ/2, Home gλ
        self.k = 0

    @property
    def predicting(self) -> bool:
        """True from session Ninit+1 on: x^P then comes from the predicted weights alone (spec 3.5)."""
        return self.k >= self.train_sessions

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        w1, w0 = self.emp.weights()  # data up to session k-1 (spec 3.4.3)
        if self.predicting:
            w1p, w0p = self.pred.weights()  # spec 3.5: logit(Hebb ⊘ Home) of the prediction accumulators
        else:
            w1p, w0p = w1, w0  # spec 3.5: sessions 1..Ninit use the empirical weights
        return w1, w0, w1p, w0p

    def predict(self, o: np.ndarray) -> np.ndarray:
        """x^P = σ(Wp o + h1 - h0) with h from Wp and the fixed φ (spec 3.5)."""
        _, _, w1p, w0p = self.weights()
        h1, h0 = nn.thresholds(w1p, w0p, self.phi1, self.phi0)
        return nn.activity(o.astype(np.float64), w1p, w0p, h1, h0)

    def finish(self, x: np.ndarray, o: np.ndarray, xp: np.ndarray) -> dict:
        """Score session k (L_k with W_k, spec 3.4.4; err_x, err_W, spec 3.6) and accumulate it."""
        of = o.astype(np.float64)
        w1, w0, w1p, w0p = self.weights()
        h1, h0 = nn.thresholds(w1, w0, self.phi1, self.phi0)
        out = {"w1": w1, "w0": w0, "w1p": w1p, "w0p": w0p, "L": nn.cost(x, of, w1, w0, h1, h0),
               "err_x": metrics.err_x(x, xp),
               "err_w": 0.0 if self.k == 0 else metrics.err_w(w1, w0, w1p, w0p)}
        if self.predicting:
            self.pred.add(xp, of, 1.0)  # spec 3.5: predicted x with weight 1
        else:
            self.pred.add(x, of, self.gain)  # spec 3.5: empirical x with weight g
        self.emp.add(x, of)  # spec 3.4.3
        self.k += 1
        return out


def fit_trajectory(x: np.ndarray, o: np.ndarray, sess: np.ndarray, n_sessions: int,
                   train_sessions: int = nn.N_INIT, lam: float = nn.LAMBDA,
                   gain: float = nn.GAIN) -> Trajectory:
    """Spec 3.4-3.6 for one culture. x [T, 2] normalised activity, o [T, M], sess [T] 0-based sessions.

    W_k uses data up to session k-1 and L_k is evaluated with W_k on session k (spec 4.2.8). The
    prediction uses only φ (sessions 1..Ninit), the empirical W up to Ninit and the stimuli o."""
    if not 1 <= train_sessions <= n_sessions:
        raise ModelInputError(f"train_sessions must be in 1..{n_sessions}, got {train_sessions}")
    m = o.shape[1]
    phi1, phi0 = nn.estimate_phi(x[sess < train_sessions])  # spec 3.4.2
    st = Stepper(m, phi1, phi0, train_sessions, lam, gain)
    shape = (n_sessions, 2, m)
    w1, w0, w1p, w0p = (np.empty(shape) for _ in range(4))
    L, ex, ew = np.empty(n_sessions), np.empty(n_sessions), np.empty(n_sessions)
    xp = np.empty_like(x)
    for k in range(n_sessions):
        idx = np.flatnonzero(sess == k)
        xp[idx] = st.predict(o[idx])
        r = st.finish(x[idx], o[idx], xp[idx])
        w1[k], w0[k], w1p[k], w0p[k] = r["w1"], r["w0"], r["w1p"], r["w0p"]
        L[k], ex[k], ew[k] = r["L"], r["err_x"], r["err_w"]
    corr = metrics.weight_correlation(w1[-1] - w0[-1], w1p[-1] - w0p[-1])
    return Trajectory(phi1, phi0, w1, w0, w1p, w0p, L, xp, ex, ew, corr)
