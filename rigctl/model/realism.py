"""How a culture's raw responses look (issue 16): the figures that tell a released culture from the simulated one.

Computed the same way for a released culture and for a run, from the steps' hidden sources s [T, 2], the
per-electrode counts r [T, N], the session labels and which electrodes stimulate for which source. Ensembles
are the published ones (spec 2.2, chosen on all sessions). Pure numpy, no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rigctl.model.data import make_trials
from rigctl.model.ensembles import select_ensembles

#: Sessions compared at the start and at the end of a run (the paper's 1-10 and 91-100).
BLOCK_SESSIONS = 10


@dataclass(frozen=True)
class ResponseFigures:
    """One culture's figures. gain: mean evoked count per electrode in the last block over the first, minus 1.
    source_ratio: per ensemble, its mean response on steps where its source is on over steps where it is off,
    in the first block (None for an empty ensemble, inf for a silent 'off'). own_stim_share: per ensemble, the
    fraction of its electrodes that stimulate for its source. spont_per_window: mean count per electrode on steps
    with nothing stimulated (s = (0, 0)), the 20-ms window's spontaneous activity."""

    gain: float
    source_ratio: tuple[float | None, float | None]
    on_off_counts: tuple[tuple[float, float] | None, tuple[float, float] | None]
    own_stim_share: tuple[float | None, float | None]
    ensemble_sizes: tuple[int, int]
    spont_per_window: float
    n_sessions: int

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(on: float, off: float) -> float:
    if off > 0:
        return on / off
    return float("inf") if on > 0 else float("nan")


def response_figures(s: np.ndarray, r: np.ndarray, session: np.ndarray, source_electrodes: tuple,
                     block_sessions: int = BLOCK_SESSIONS, ensembles: tuple | None = None) -> ResponseFigures:
    """The figures of `ResponseFigures` for one culture.

    source_electrodes: (electrodes stimulating for source 1, for source 2), 0-based columns of r. A run shorter
    than two blocks compares its first and last `min(block, K // 2)` sessions. ensembles: (G1, G2) when the
    caller has already chosen them (spec 2.2 on all sessions, e.g. `SeparationResult.g1`, `.g2`); chosen here
    when None."""
    tr = make_trials(s, np.zeros((len(s), 1), np.uint8), r, session)
    sess, k = tr.sess, tr.n_sessions
    if ensembles is None:
        chosen = select_ensembles(tr.r, sess, tr.state, k)
        ensembles = (chosen.g1, chosen.g2)
    g1, g2 = (np.asarray(g, np.int64) for g in ensembles)
    block = max(1, min(block_sessions, k // 2)) if k > 1 else 1
    first, last = sess < block, sess >= k - block
    stim = tr.s.any(axis=1)
    r = tr.r.astype(np.float64)
    ev_first = r[first & stim].mean() if (first & stim).any() else float("nan")
    ev_last = r[last & stim].mean() if (last & stim).any() else float("nan")
    gain = float(ev_last / ev_first - 1.0) if ev_first > 0 else float("nan")
    ratios, counts, shares = [], [], []
    for j, g in enumerate((g1, g2)):
        if g.size == 0:
            ratios.append(None)
            counts.append(None)
            shares.append(None)
            continue
        x = r[:, g].mean(axis=1)
        on = float(x[first & (tr.s[:, j] == 1)].mean())
        off = float(x[first & (tr.s[:, j] == 0)].mean())
        ratios.append(_ratio(on, off))
        counts.append((on, off))
        shares.append(float(np.isin(g, np.asarray(source_electrodes[j])).mean()))
    quiet = ~stim
    spont = float(r[quiet].mean()) if quiet.any() else float("nan")
    return ResponseFigures(gain, tuple(ratios), tuple(counts), tuple(shares), (int(g1.size), int(g2.size)),
                           spont, int(k))


#: The released data's stimulating electrodes (spec 1.4, inferred): r's columns 33-48 are o1..o16 (source 1's
#: group), 49-64 are o17..o32.
RELEASED_SOURCE_ELECTRODES = (np.arange(32, 48), np.arange(48, 64))
