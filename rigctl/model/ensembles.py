"""Source-preferring electrode ensembles (spec 2.2), their raw responses (spec 2.3 step 1) and the
per-session separation of the normalised ensemble activity (spec 2.4.1). Pure numpy, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.checkpoint import checkpointable
from rigctl.errors import ModelInputError
from rigctl.model import normalise as nz
from rigctl.model.data import make_trials

#: Eligibility (spec 2.2 / 4.1): mean_k r̄_k(e) > 1 spike/stim and min_k r̄_k(e) > 0.1.
ELIGIBLE_MEAN = 1.0
ELIGIBLE_MIN = 0.1
#: Selectivity threshold (spec 2.2): Δ(e) > +0.5 -> G1, Δ(e) < -0.5 -> G2 (spikes/stim).
DELTA_THRESHOLD = 0.5


@checkpointable
@dataclass(frozen=True, eq=False)
class Ensembles:
    """G1, G2 as 0-based electrode indices (spec 2.2), with Δ(e) and eligibility for inspection."""

    g1: np.ndarray
    g2: np.ndarray
    delta: np.ndarray  # float [N], mean over the selection sessions of r̄^{10} - r̄^{01}
    eligible: np.ndarray  # bool [N]

    @property
    def empty(self) -> tuple[bool, bool]:
        return (self.g1.size == 0, self.g2.size == 0)


def select_ensembles(r: np.ndarray, sess: np.ndarray, state: np.ndarray, n_sessions: int,
                     use_sessions: int | None = None) -> Ensembles:
    """Spec 2.2 over sessions 0..use_sessions-1 (all sessions when None: the published choice).

    Sessions where state 10 or 01 is absent are left out of Δ (the released data always have both).
    A one-electrode ensemble is kept as is: the authors duplicate it (g = [g g]), which leaves every
    mean unchanged. Empty ensembles are returned empty; callers decide (see `Ensembles.empty`)."""
    k = n_sessions if use_sessions is None else min(use_sessions, n_sessions)
    keep = sess < k
    rbar = nz.session_means(r[keep], sess[keep], k)  # [K, N], spec 2.1
    cond, counts = nz.state_session_means(r[keep], sess[keep], state[keep], k)  # [K, 4, N]
    both = (counts[:, 1] > 0) & (counts[:, 2] > 0)
    if not both.any():
        raise ModelInputError("states s=(1,0) and s=(0,1) never occur in the same session; "
                              "Δ(e) of spec 2.2 is undefined")
    delta = (cond[both, 1] - cond[both, 2]).mean(axis=0)  # Δ(e) = mean_k [r̄^{10} - r̄^{01}]
    eligible = (rbar.mean(axis=0) > ELIGIBLE_MEAN) & (rbar.min(axis=0) > ELIGIBLE_MIN)
    g1 = np.flatnonzero(eligible & (delta > DELTA_THRESHOLD))
    g2 = np.flatnonzero(eligible & (delta < -DELTA_THRESHOLD))
    return Ensembles(g1, g2, delta, eligible)


def ensemble_response(r: np.ndarray, ens: Ensembles) -> np.ndarray:
    """X_t(i) = mean over e in G_i of r_t(e) (spec 2.3 step 1) -> float [T, 2]; 0 for an empty ensemble."""
    out = np.zeros((r.shape[0], 2))
    for i, g in enumerate((ens.g1, ens.g2)):
        if g.size:
            out[:, i] = r[:, g].mean(axis=1)
    return out


def _empty_phrase(names: list[str]) -> str:
    return f"ensemble {names[0]} is empty" if len(names) == 1 else "ensembles G1 and G2 are empty"


def require_nonempty(ens: Ensembles, where: str = "") -> None:
    """Raise ModelInputError naming the empty ensemble(s) and the thresholds that produced them."""
    names = [f"G{i + 1}" for i, e in enumerate(ens.empty) if e]
    if names:
        raise ModelInputError(
            f"{where + ': ' if where else ''}{_empty_phrase(names)}: no electrode has mean "
            f"response > {ELIGIBLE_MEAN}, min > {ELIGIBLE_MIN} spikes/stim and |Δ| > {DELTA_THRESHOLD} with "
            f"the right sign (spec 2.2); {int(ens.eligible.sum())} electrodes were eligible")


@dataclass(frozen=True, eq=False)
class SeparationResult:
    """Per-session ensemble selectivity (spec 2.4.1) for one culture.

    g1, g2: 0-based electrode indices chosen on all sessions (spec 2.2). x: float [T, 2] normalised
    activity (spec 2.3; B term omitted when baseline is None). x_s1_on / x_s1_off [K]: mean x(1) over steps
    with s1 = 1 / s1 = 0 per session; x_s2_on / x_s2_off likewise for x(2) and s2. separation [K]: mean of
    (x_s1_on - x_s1_off) and (x_s2_on - x_s2_off). state_means [2, K, 4]: raw ensemble response
    X̄_k^{ab}(i) in spikes/stim for states (11, 10, 01, 00). session_labels [K]. empty: which ensembles were
    empty (only possible with allow_empty=True; their x is 0.5, their differences and state means 0).
    A session without any s_j = 1 (or 0) step gets on = off = that session's mean, i.e. difference 0."""

    g1: np.ndarray
    g2: np.ndarray
    x: np.ndarray
    x_s1_on: np.ndarray
    x_s1_off: np.ndarray
    x_s2_on: np.ndarray
    x_s2_off: np.ndarray
    separation: np.ndarray
    state_means: np.ndarray
    session_labels: np.ndarray
    empty: tuple[bool, bool] = (False, False)


def session_selectivity(x: np.ndarray, s: np.ndarray, sess: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Spec 2.4.1: per session, mean x(j) over steps with s_j = 1 and with s_j = 0 (keys x_s1_on, x_s1_off,
    x_s2_on, x_s2_off, [K] each) and `separation`, the mean of the two differences. A session without any
    s_j = 1 (or 0) step gets that session's mean, i.e. difference 0 (never NaN)."""
    mask = nz.session_onehot(sess, k)
    out: dict[str, np.ndarray] = {}
    for j in range(2):
        total = (mask.T @ x[:, j]) / mask.sum(axis=0)
        for v, tag in ((1, "on"), (0, "off")):
            m = mask * (s[:, j] == v)[:, None]
            n = m.sum(axis=0)
            out[f"x_s{j + 1}_{tag}"] = np.where(n > 0, (m.T @ x[:, j]) / np.maximum(n, 1), total)
    out["separation"] = 0.5 * ((out["x_s1_on"] - out["x_s1_off"]) + (out["x_s2_on"] - out["x_s2_off"]))
    return out


def separation_by_session(s: np.ndarray, r: np.ndarray, session: np.ndarray,
                          baseline: float | None = None, allow_empty: bool = False) -> SeparationResult:
    """Ensembles on all sessions (spec 2.2), x as in spec 2.3 (published normalisation), and the
    per-session separation of spec 2.4.1.

    An empty ensemble raises ModelInputError unless allow_empty=True; then it is flagged in `.empty`
    and contributes separation 0 (its x is the neutral 0.5)."""
    tr = make_trials(s, np.zeros((len(s), 1), np.uint8), r, session)
    sess, state, k = tr.sess, tr.state, tr.n_sessions
    ens = select_ensembles(tr.r, sess, state, k)
    if not allow_empty:
        require_nonempty(ens)
    x_raw = ensemble_response(tr.r, ens)
    x = np.full_like(x_raw, 0.5)
    live = [i for i in range(2) if not ens.empty[i]]
    if live:
        sub = x_raw[:, live]
        drift = nz.drift_own_session(nz.session_means(sub, sess, k), sess)
        stats = nz.fit_stats(sub, sess, state, drift, np.ones(len(sub), bool), baseline)
        x[:, live] = nz.apply_stats(sub, state, drift, stats)
    sel = session_selectivity(x, tr.s, sess, k)
    cond, counts = nz.state_session_means(x_raw, sess, state, k)  # [K, 4, 2]
    state_means = np.nan_to_num(np.moveaxis(cond, 2, 0), nan=0.0)  # absent state -> 0 (counts say so)
    return SeparationResult(ens.g1, ens.g2, x, sel["x_s1_on"], sel["x_s1_off"], sel["x_s2_on"], sel["x_s2_off"],
                            sel["separation"], state_means, tr.session_labels, ens.empty)
