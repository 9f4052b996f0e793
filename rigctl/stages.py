"""The loop's per-chunk stages, each a small object with its own state (see rigctl/loop.py for their order).

- `KeepRanges`: the sample ranges of raw data or spikes the protocol keeps on disk (around trials).
- `SpikeSource`: a chunk's spikes, from the device's own events or from the signal path.
- `Progress`: what a person watching the run sees.
The trial windows (rigctl.trials.TrialWindows) and the sinks (store, models, stream) complete the set.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from rigctl.types import Chunk, SpikeEvents, StimCommand


class KeepRanges:
    """Ranges [start, end) of samples to keep on disk, added as trials are scheduled, pruned once passed."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        self.ranges.append((start, end))

    def take(self, first: int, end: int) -> list[tuple[int, int]]:
        """Intersections of [first, end) with the ranges; prunes the ranges that end by `end`."""
        out = [(max(a, first), min(b, end)) for a, b in self.ranges if a < end and b > first]
        self.ranges = [r for r in self.ranges if r[1] > end]
        return out

    def prune(self, until: int) -> None:
        self.ranges = [r for r in self.ranges if r[1] > until]

    def pending(self, until: int) -> bool:
        """Whether some range extends beyond `until` (what has been recorded so far)."""
        return any(end > until for _, end in self.ranges)


class SpikeSource:
    """Spikes of each chunk: the rig's own events (an events rig) or the signal path's detections, which are
    final only up to `processed_until` (the matched filter looks ahead)."""

    def __init__(self, make_signal_path: Callable[[], Any] | None):
        self.make_signal_path = make_signal_path
        self.signal = None

    def start(self) -> None:
        if self.signal is None and self.make_signal_path is not None:
            self.signal = self.make_signal_path()

    def new_segment(self) -> None:
        """The rig skipped samples: a fresh signal path, which settles during the lead-in."""
        if self.make_signal_path is not None:
            self.signal = self.make_signal_path()

    def expect_pulse(self, command: StimCommand) -> None:
        if self.signal is not None:
            self.signal.expect_pulse(command.sample, command.electrodes, command.pulse.duration_us)

    def spikes(self, chunk: Chunk) -> tuple[SpikeEvents, int]:
        if chunk.spikes is not None:
            return chunk.spikes, chunk.end_sample
        spikes = self.signal.process(chunk)
        return spikes, self.signal.processed_until

    def get_state(self) -> dict | None:
        return None if self.signal is None else self.signal.get_state()

    def set_state(self, state: dict | None) -> None:
        if state is not None and self.make_signal_path is not None:
            self.signal = self.make_signal_path()
            self.signal.set_state(state)


class Progress:
    """A tqdm bar on a terminal; one line per session otherwise (CI logs, pipes). A recording without
    trials reports the seconds recorded, at most every tenth of the run."""

    def __init__(self, total: int, initial: int, enabled: bool, label: str):
        self.bar = None
        self.enabled = enabled
        self._next_tenth = 1
        if enabled and sys.stderr.isatty() and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="trial", desc=label, file=sys.stderr,
                            dynamic_ncols=True)

    def trial(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def session(self, session: int, sessions: int, mean_evoked: float, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(session=f"{session}/{sessions}", evoked=f"{mean_evoked:.2f}")
        elif self.enabled:
            print(f"session {session}/{sessions} done: {done}/{total} trials, "
                  f"mean evoked {mean_evoked:.2f} spikes/trial", file=sys.stderr, flush=True)

    def recorded(self, seconds: float, total_seconds: float) -> None:
        if not self.enabled or total_seconds <= 0 or seconds < self._next_tenth * total_seconds / 10:
            return
        self._next_tenth = int(seconds * 10 / total_seconds) + 1
        print(f"recorded {seconds:.0f}/{total_seconds:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
