"""The model's input: one culture's trials (s, o, r, session) checked once, so every later step can trust
shapes and types. No I/O here (loading lives in `rigctl.model.loading`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.errors import ModelInputError

#: Order of the four source states used everywhere (spec 2.1): s = (1,1), (1,0), (0,1), (0,0).
STATE_LABELS: tuple[str, ...] = ("11", "10", "01", "00")


def state_code(s: np.ndarray) -> np.ndarray:
    """Index 0..3 of each step's state in STATE_LABELS order (11, 10, 01, 00), spec 2.1."""
    s = np.asarray(s)
    return ((1 - s[:, 0].astype(np.int64)) * 2 + (1 - s[:, 1].astype(np.int64))).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Trials:
    """One culture (or one run): T steps in session order.

    s uint8 [T,2] hidden sources, o uint8 [T,M] stimuli, r float64 [T,N] spike counts per electrode,
    session int64 [T] labels (1-based, non-decreasing). `sess` int64 [T] is the 0-based position of each
    step's session among `session_labels`; `state` int64 [T] indexes STATE_LABELS.
    """

    s: np.ndarray
    o: np.ndarray
    r: np.ndarray
    session: np.ndarray
    name: str = "culture"

    @property
    def n_steps(self) -> int:
        return int(self.s.shape[0])

    @property
    def session_labels(self) -> np.ndarray:
        return np.unique(self.session)

    @property
    def n_sessions(self) -> int:
        return int(self.session_labels.size)

    @property
    def sess(self) -> np.ndarray:
        return np.searchsorted(self.session_labels, self.session).astype(np.int64)

    @property
    def state(self) -> np.ndarray:
        return state_code(self.s)

    def first_sessions(self, n_sessions: int) -> np.ndarray:
        """Boolean step mask of the first `n_sessions` sessions (explicit masks, spec 2.1 / 4.4.3)."""
        return self.sess < n_sessions


def make_trials(s: np.ndarray, o: np.ndarray, r: np.ndarray, session: np.ndarray | None = None,
                session_length: int = 256, name: str = "culture") -> Trials:
    """Check shapes and values and build `Trials`. Without `session`, steps are cut into sessions of
    `session_length` (the released data: 100 x 256, spec 1.3); the last may be shorter."""
    s, o, r = np.asarray(s), np.asarray(o), np.asarray(r)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ModelInputError(f"{name}: s must have shape [T, 2] (two hidden sources), got {s.shape}")
    t = s.shape[0]
    if t == 0:
        raise ModelInputError(f"{name}: no trials")
    if o.ndim != 2 or o.shape[0] != t or o.shape[1] < 1:
        raise ModelInputError(f"{name}: o must have shape [T={t}, n_stimuli], got {o.shape}")
    if r.ndim != 2 or r.shape[0] != t or r.shape[1] < 1:
        raise ModelInputError(f"{name}: r must have shape [T={t}, n_electrodes], got {r.shape}")
    for label, a in (("s", s), ("o", o)):
        if not np.isin(a, (0, 1)).all():
            raise ModelInputError(f"{name}: {label} must hold only 0 and 1")
    if not np.isfinite(r.astype(np.float64)).all() or (r < 0).any():
        raise ModelInputError(f"{name}: r must hold finite, non-negative spike counts")
    if session is None:
        session = np.arange(t) // session_length + 1
    session = np.asarray(session).astype(np.int64).ravel()
    if session.shape[0] != t:
        raise ModelInputError(f"{name}: session must have length T={t}, got {session.shape[0]}")
    if (np.diff(session) < 0).any():
        raise ModelInputError(f"{name}: session labels must be non-decreasing (steps in recording order)")
    return Trials(s.astype(np.uint8), o.astype(np.uint8), r.astype(np.float64), session, name)
