"""Online models fed after every trial. `TrialModel` is the hook; `SelectivityTracker` is the simplest
model: per-electrode responses to each source and a per-session selectivity index."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from rigctl.types import TrialRecord


class TrialModel(Protocol):
    """What the loop calls. Every returned dict must be JSON-serialisable; state must be picklable."""

    name: str

    def begin_session(self, session: int, stimuli: np.ndarray) -> dict | None: ...

    def update(self, trial: TrialRecord) -> None: ...

    def end_session(self, session: int) -> dict: ...

    def summary(self) -> dict: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class SelectivityTracker:
    """Per session and electrode: mean evoked count given s_j = 1 and s_j = 0, for each source j.

    Selectivity index of electrode e for source j in a session: (r̄|s_j=1 − r̄|s_j=0) / (r̄|s_j=1 + r̄|s_j=0),
    0 when the electrode did not respond. The per-session figure is its mean over responsive electrodes
    (mean evoked count > `responsive_min`), for the source each electrode prefers in that session.
    """

    name = "selectivity"

    def __init__(self, n_electrodes: int, n_sources: int = 2, responsive_min: float = 0.5):
        self.n_electrodes = n_electrodes
        self.n_sources = n_sources
        self.responsive_min = responsive_min
        self._reset()
        self.sessions: list[dict] = []

    def _reset(self) -> None:
        self._sum = np.zeros((self.n_sources, 2, self.n_electrodes))  # [source, value(0/1), electrode]
        self._n = np.zeros((self.n_sources, 2))
        self._total = np.zeros(self.n_electrodes)
        self._trials = 0

    def begin_session(self, session: int, stimuli: np.ndarray) -> dict | None:
        return None

    def update(self, trial: TrialRecord) -> None:
        counts = trial.counts.astype(np.float64)
        for j in range(self.n_sources):
            v = int(trial.sources[j])
            self._sum[j, v] += counts
            self._n[j, v] += 1
        self._total += counts
        self._trials += 1

    def end_session(self, session: int) -> dict:
        n = np.maximum(self._n, 1)[:, :, None]
        mean = self._sum / n  # [source, value, electrode]
        on, off = mean[:, 1, :], mean[:, 0, :]
        denom = on + off
        index = np.where(denom > 0, (on - off) / np.where(denom > 0, denom, 1), 0.0)  # [source, electrode]
        overall = self._total / max(self._trials, 1)
        responsive = overall > self.responsive_min
        preferred = np.abs(index).argmax(axis=0)
        best = index[preferred, np.arange(self.n_electrodes)]
        result = {
            "session": session,
            "trials": self._trials,
            "mean_evoked_per_trial": float(self._total.sum() / max(self._trials, 1)),
            "response_to_source": {f"s{j + 1}": {"on": on[j].round(4).tolist(), "off": off[j].round(4).tolist()}
                                   for j in range(self.n_sources)},
            "selectivity_index": {f"s{j + 1}": index[j].round(4).tolist() for j in range(self.n_sources)},
            "mean_abs_selectivity": float(np.abs(best[responsive]).mean()) if responsive.any() else 0.0,
            "responsive_electrodes": int(responsive.sum()),
        }
        self.sessions.append(result)
        self._reset()
        return result

    def summary(self) -> dict:
        return {"sessions": len(self.sessions)}

    def get_state(self) -> dict:
        return {"sum": self._sum.copy(), "n": self._n.copy(), "total": self._total.copy(),
                "trials": self._trials, "sessions": list(self.sessions)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._sum, self._n, self._total = state["sum"].copy(), state["n"].copy(), state["total"].copy()
        self._trials = state["trials"]
        self.sessions = list(state["sessions"])
