"""Scoring of the digital twin (docs/twin.md): the fit loss on evoked-count profiles, the twin's ensemble
activity x through the published pipeline, its err_x against a culture (spec 3.6), and the table.
Pure numpy, no I/O, no simulator (the twin's driver is `rigctl.twin`).

Data columns (spec 1.4): 0-based 0..31 record-only electrodes (positions unknown), 32..63 the stimulating
electrodes o1..o32. The twin's counts come in the same column order (`rigctl.twin.drive`).
"""

from __future__ import annotations

import numpy as np

from rigctl.errors import ModelInputError
from rigctl.model import normalise as nz
from rigctl.model.data import state_code
from rigctl.model.ensembles import Ensembles, ensemble_response
from rigctl.model.metrics import err_x

#: Record-only columns come first (spec 1.4).
N_RECORD = 32
#: Sessions at the end scored as in the model's table (spec 3.6: 91-100).
LAST_SESSIONS = 10


def fit_blocks(fit_sessions: int) -> list[range]:
    """The fit window cut into two halves of sessions (one block when it is one session), 0-based."""
    if fit_sessions < 1:
        raise ModelInputError(f"--fit-sessions must be >= 1, got {fit_sessions}")
    if fit_sessions == 1:
        return [range(0, 1)]
    h = fit_sessions // 2
    return [range(0, h), range(h, fit_sessions)]


def evoked_profile(r: np.ndarray, s: np.ndarray, sess: np.ndarray, fit_sessions: int) -> np.ndarray:
    """Mean count per (block, state, electrode column) over the first `fit_sessions` sessions -> [B, 4, N].
    Blocks: `fit_blocks` (the first and second half, so the profile sees the change over the window).
    A state absent from a block is NaN (left out of the loss)."""
    state = state_code(s)
    blocks = fit_blocks(fit_sessions)
    out = np.full((len(blocks), 4, r.shape[1]), np.nan)
    for b, rng in enumerate(blocks):
        in_block = (sess >= rng.start) & (sess < rng.stop)
        for code in range(4):
            m = in_block & (state == code)
            if m.any():
                out[b, code] = r[m].mean(axis=0)
    return out


def position_free(profile: np.ndarray, n_record: int = N_RECORD) -> np.ndarray:
    """Record-only columns sorted (ascending) within each (block, state): their positions are unknown, so
    they are compared as a distribution; stimulating columns keep their identity (o1..o32)."""
    out = profile.copy()
    out[..., :n_record] = np.sort(profile[..., :n_record], axis=-1)
    return out


def profile_loss(twin: np.ndarray, culture: np.ndarray, n_record: int = N_RECORD) -> float:
    """Mean over (block, state, column) of (log1p twin - log1p culture)^2, record-only columns sorted.
    States absent from the culture's blocks are skipped; a twin NaN where the culture has data is an error."""
    a = np.log1p(position_free(twin, n_record))
    b = np.log1p(position_free(culture, n_record))
    keep = np.isfinite(b)
    if not np.isfinite(a[keep]).all():
        raise ModelInputError("the twin's profile lacks a state the culture has (different stimulus sequence?)")
    return float(np.mean((a[keep] - b[keep]) ** 2))


def twin_x(r: np.ndarray, s: np.ndarray, sess: np.ndarray, n_sessions: int, ens: Ensembles,
           baseline: float | None) -> np.ndarray:
    """The twin's x [T, 2]: the published pipeline (spec 2.3 steps 1-6) on the twin's own counts, with the
    *culture's* ensembles G1, G2 and the culture's batch baseline B; session-1 state means, drift and the
    z-score statistics are the twin's own (as they would be for a culture recorded on the rig)."""
    state = state_code(s)
    x_raw = ensemble_response(r, ens)
    drift = nz.drift_own_session(nz.session_means(x_raw, sess, n_sessions), sess)
    stats = nz.fit_stats(x_raw, sess, state, drift, np.ones(len(x_raw), bool), baseline)
    return nz.apply_stats(x_raw, state, drift, stats)


def culture_normalised_x(r: np.ndarray, s: np.ndarray, sess: np.ndarray, n_sessions: int, ens: Ensembles,
                         culture_raw: np.ndarray, baseline: float | None) -> np.ndarray:
    """The secondary choice: the twin's ensemble responses through the *culture's* normalisation numbers
    (its session-1 state means, its drift, its z statistics, its X̄_1 in the B term), so absolute level
    and drift mismatches count too. `culture_raw` [T, 2] is the culture's raw ensemble response."""
    state = state_code(s)
    c_drift = nz.drift_own_session(nz.session_means(culture_raw, sess, n_sessions), sess)
    stats = nz.fit_stats(culture_raw, sess, state, c_drift, np.ones(len(culture_raw), bool), baseline)
    return nz.apply_stats(ensemble_response(r, ens), state, c_drift, stats)


def conditional_prediction(x: np.ndarray, s: np.ndarray, sess: np.ndarray, n_sessions: int) -> np.ndarray:
    """The twin's prediction x^P [T, 2]: its x averaged over the steps of the same session and state, i.e.
    its expected response to that state in that session (one simulated run is one noisy sample; the free-
    energy model's x^P is noise-free, so comparing a raw sample would charge the twin its own noise)."""
    key = sess * 4 + state_code(s)
    n = np.bincount(key, minlength=n_sessions * 4).astype(np.float64)
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        tot = np.bincount(key, weights=x[:, j], minlength=n_sessions * 4)
        out[:, j] = (tot / np.maximum(n, 1))[key]
    return out


def err_x_by_session(x: np.ndarray, xp: np.ndarray, sess: np.ndarray, n_sessions: int) -> np.ndarray:
    """err_x(k) of spec 3.6 (`rigctl.model.metrics.err_x`) for each session -> [K]."""
    return np.array([err_x(x[sess == k], xp[sess == k]) for k in range(n_sessions)])


def score(culture_x: np.ndarray, culture_raw: np.ndarray, twin_r: np.ndarray, s: np.ndarray, sess: np.ndarray,
          n_sessions: int, ens: Ensembles, baseline: float | None) -> dict:
    """Everything the twin is judged on against one culture (docs/twin.md, "err_x"):

    err_x: per session, culture x vs the twin's conditional prediction, twin normalised by its own pipeline
    (the primary number); err_x_sample: the same with the twin's raw sample x (noise and all);
    err_x_culture_norm: twin normalised with the culture's numbers, conditional prediction.
    References that need no twin: err_x_constant, the culture's session-1 mean x for every step (what a
    predictor that knows nothing of states or learning scores); err_x_floor, the culture's own per-session,
    per-state mean x (the best any per-state prediction can do: what is left is the culture's trial noise).
    Each also as the mean over the last LAST_SESSIONS sessions (`*_last10`)."""
    xt = twin_x(twin_r, s, sess, n_sessions, ens, baseline)
    xc = culture_normalised_x(twin_r, s, sess, n_sessions, ens, culture_raw, baseline)
    constant = np.broadcast_to(culture_x[sess == 0].mean(axis=0), culture_x.shape)
    out = {}
    for key, pred in (("err_x", conditional_prediction(xt, s, sess, n_sessions)), ("err_x_sample", xt),
                      ("err_x_culture_norm", conditional_prediction(xc, s, sess, n_sessions)),
                      ("err_x_constant", constant),
                      ("err_x_floor", conditional_prediction(culture_x, s, sess, n_sessions))):
        e = err_x_by_session(culture_x, pred, sess, n_sessions)
        out[key] = e.tolist()
        out[f"{key}_last10"] = float(e[-LAST_SESSIONS:].mean())
    return out


def ensemble_state_means(r: np.ndarray, s: np.ndarray, sess: np.ndarray, n_sessions: int,
                         ens: Ensembles) -> np.ndarray:
    """Raw ensemble response X̄_k^{ab}(i) [2, K, 4] (spikes/stim, states in STATE_LABELS order); absent -> NaN."""
    cond, _ = nz.state_session_means(ensemble_response(r, ens), sess, state_code(s), n_sessions)
    return np.moveaxis(cond, 2, 0)


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else f"{v:{fmt}}"


def markdown_table(records: list[dict]) -> str:
    """One row per twin.json record: twin err_x (last 10 sessions) beside the model's (published, online)
    and the two references of `score` (constant predictor, per-state floor)."""
    lines = ["| culture | twin err_x | untuned twin | model published | model online | constant | floor "
             "| twin (one sample) | twin (culture's norm.) | fit loss (defaults → best) | evaluations "
             "| fit wall time |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r.get("model", {})
        lines.append(f"| {r['culture']} | {r['err_x_last10']:.4f} "
                     f"| {_f(r.get('defaults', {}).get('err_x_last10'), '.4f')} | {_f(m.get('published'), '.4f')} "
                     f"| {_f(m.get('online'), '.4f')} | {r['err_x_constant_last10']:.4f} "
                     f"| {r['err_x_floor_last10']:.4f} | {r['err_x_sample_last10']:.4f} "
                     f"| {r['err_x_culture_norm_last10']:.4f} | {_f(r.get('loss_defaults'), '.3f')} → "
                     f"{r['loss']:.3f} | {r['evaluations']} | {r['wall_time_s']['fit'] / 60:.1f} min "
                     f"({r['wall_time_s']['total'] / 60:.1f} with the final run) |")
    return "\n".join(lines) + "\n"


__all__ = ["N_RECORD", "LAST_SESSIONS", "fit_blocks", "evoked_profile", "position_free",
           "profile_loss", "twin_x", "culture_normalised_x", "conditional_prediction", "err_x_by_session",
           "score", "ensemble_state_means", "markdown_table"]
