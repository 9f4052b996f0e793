"""Per-session conditional means (spec 2.1) and the normalisation of ensemble responses into the model's
activity x in [0, 1] (spec 2.3). Pure numpy, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.checkpoint import checkpointable
from rigctl.errors import ModelInputError
from rigctl.model.data import STATE_LABELS


def session_onehot(sess: np.ndarray, n_sessions: int) -> np.ndarray:
    """float [T, K] explicit per-session masks (spec 2.1: masks, not reshape, spec 4.4.3)."""
    return (sess[:, None] == np.arange(n_sessions)[None, :]).astype(np.float64)


def session_means(values: np.ndarray, sess: np.ndarray, n_sessions: int) -> np.ndarray:
    """r̄_k(e): mean of values [T, E] over the steps of each session k (spec 2.1) -> [K, E]."""
    mask = session_onehot(sess, n_sessions)
    n = mask.sum(axis=0)
    if (n == 0).any():
        raise ModelInputError(f"session {int(np.argmin(n)) + 1} (0-based {int(np.argmin(n))}) has no steps")
    return (mask.T @ values) / n[:, None]


def state_session_means(values: np.ndarray, sess: np.ndarray, state: np.ndarray,
                        n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """r̄_k^{ab}(e) for ab in (11, 10, 01, 00) (spec 2.1) -> (means [K, 4, E], counts [K, 4]).

    A state absent from a session has count 0 and mean NaN here; callers decide what that means
    (it never reaches the model output)."""
    k4 = sess * 4 + state
    mask = session_onehot(k4, n_sessions * 4)
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (mask.T @ values) / n[:, None]
    return means.reshape(n_sessions, 4, -1), n.reshape(n_sessions, 4)


@checkpointable
@dataclass(frozen=True, eq=False)
class NormStats:
    """Everything spec 2.3 steps 2-5 need, so the same numbers can be applied to new steps (online mode).

    state_ref [4, 2]: X̄_1^{ab}(i) of session 1 (step 2); ref_mean [2]: X̄_1(i) (steps 3 and 5);
    z_mean, z_sd [2]: z-score statistics (step 4, sd with N-1); baseline: B in spikes/stim or None
    (then the B term of step 5 is omitted)."""

    state_ref: np.ndarray
    ref_mean: np.ndarray
    z_mean: np.ndarray
    z_sd: np.ndarray
    baseline: float | None

    @property
    def offset(self) -> np.ndarray:
        """The baseline-excitability term (X̄_1(i) - B) / (4B) of spec 2.3 step 5 ([2]; 0 without B)."""
        if self.baseline is None:
            return np.zeros_like(self.ref_mean)
        return (self.ref_mean - self.baseline) / (4.0 * self.baseline)


def session1_state_means(x_raw: np.ndarray, sess: np.ndarray, state: np.ndarray) -> np.ndarray:
    """X̄_1^{ab}(i) [4, 2] (spec 2.3 step 2); every state must occur in session 1, else ModelInputError."""
    first = sess == 0
    out = np.empty((4, x_raw.shape[1]))
    for code, label in enumerate(STATE_LABELS):
        m = first & (state == code)
        if not m.any():
            raise ModelInputError(
                f"state s=({label[0]},{label[1]}) never occurs in session 1; spec 2.3 step 2 subtracts the "
                "session-1 mean of every state, so session 1 must contain all four states")
        out[code] = x_raw[m].mean(axis=0)
    return out


def drift_own_session(session_mean: np.ndarray, sess: np.ndarray) -> np.ndarray:
    """Per-step drift X̄_{k(t)}(i) - X̄_1(i) from each step's own session (spec 2.3 step 3) -> [T, 2]."""
    return session_mean[sess] - session_mean[0]


def drift_previous_session(session_mean: np.ndarray, sess: np.ndarray) -> np.ndarray:
    """Causal drift (online mode, docs/model.md): session k uses X̄_{k-1} - X̄_1, session 1 uses 0."""
    prev = np.maximum(sess - 1, 0)
    return session_mean[prev] - session_mean[0]


def centre(x_raw: np.ndarray, state: np.ndarray, drift: np.ndarray, state_ref: np.ndarray) -> np.ndarray:
    """Spec 2.3 steps 2-3: X_t - X̄_1^{s_t} - drift_t."""
    return x_raw - state_ref[state] - drift


def fit_stats(x_raw: np.ndarray, sess: np.ndarray, state: np.ndarray, drift: np.ndarray,
              fit_mask: np.ndarray, baseline: float | None) -> NormStats:
    """Statistics of spec 2.3 steps 2-5 from the steps in `fit_mask` (all steps in published mode)."""
    state_ref = session1_state_means(x_raw, sess, state)
    ref_mean = x_raw[sess == 0].mean(axis=0)
    y = centre(x_raw, state, drift, state_ref)[fit_mask]
    if y.shape[0] < 2:
        raise ModelInputError("normalisation needs at least two steps")
    z_sd = y.std(axis=0, ddof=1)  # spec 2.3 step 4: std with N-1
    if not (z_sd > 0).all():
        raise ModelInputError("an ensemble response is constant over the fitting steps; cannot z-score it "
                              "(spec 2.3 step 4)")
    if baseline is not None and not baseline > 0:
        raise ModelInputError(f"baseline B must be positive spikes/stim, got {baseline}")
    return NormStats(state_ref, ref_mean, y.mean(axis=0), z_sd, baseline)


def apply_stats(x_raw: np.ndarray, state: np.ndarray, drift: np.ndarray, stats: NormStats) -> np.ndarray:
    """Spec 2.3 steps 2-6: x = clip(1/2 + z/2 + (X̄_1 - B)/(4B), 0, 1)."""
    z = (centre(x_raw, state, drift, stats.state_ref) - stats.z_mean) / stats.z_sd
    return np.clip(0.5 + z / 2.0 + stats.offset, 0.0, 1.0)


def batch_baseline(init_means: list[np.ndarray]) -> float:
    """B of spec 2.3: mean over (culture, ensemble) of mean_{k=1..Ninit} X̄_k(i).

    `init_means` holds one [2] array per culture: that culture's mean_{k<=Ninit} X̄_k(i)."""
    if not init_means:
        raise ModelInputError("a batch baseline needs at least one culture")
    return float(np.mean(np.stack(init_means)))
