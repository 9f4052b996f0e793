"""Trial response windows: evoked spike counts per electrode in a fixed window after each pulse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.engine import PlannedTrial
from rigctl.types import SpikeEvents, TrialRecord


@dataclass
class OpenTrial:
    """A scheduled trial whose response window has not been fully processed yet."""

    planned: PlannedTrial
    window_start: int  # first sample counted
    window_end: int  # one past the last sample counted
    counts: np.ndarray  # int32 [n_channels]

    def record(self) -> TrialRecord:
        return self.planned.record(self.counts.copy())


class TrialWindows:
    """Counts spikes into every open trial's window; hands back trials whose window is complete."""

    def __init__(self, n_channels: int, window_samples: tuple[int, int]):
        self.n_channels = n_channels
        self.window_samples = window_samples
        self.open: list[OpenTrial] = []

    def add(self, planned: PlannedTrial) -> None:
        w0, w1 = self.window_samples
        self.open.append(OpenTrial(planned, planned.sample + w0, planned.sample + w1,
                                   np.zeros(self.n_channels, np.int32)))

    def count(self, spikes: SpikeEvents) -> None:
        if len(spikes) == 0:
            return
        for t in self.open:
            lo, hi = np.searchsorted(spikes.sample, (t.window_start, t.window_end))
            if hi > lo:
                t.counts += np.bincount(spikes.channel[lo:hi], minlength=self.n_channels).astype(np.int32)

    def complete(self, processed_until: int) -> list[OpenTrial]:
        """Remove and return the trials whose whole window lies before `processed_until`."""
        done = [t for t in self.open if t.window_end <= processed_until]
        if done:
            self.open = [t for t in self.open if t.window_end > processed_until]
        return done
