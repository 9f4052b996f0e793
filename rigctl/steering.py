"""Steering a running loop from outside it: requests queued by another thread, applied by the loop.

The control channel (rigctl.control) runs in its own thread and must never touch the store, the stimulator
or the loop's state: it only queues a `SteerRequest` here. The loop drains the queue once per iteration,
at a chunk boundary (`ProtocolRunner._steer`), so every change happens at a consistent point.

Pauses move the rest of the plan: `PlanShift` holds (first trial index, offset in samples) segments; a
trial's planned sample is moved later by the offset of its segment. The segments are part of the loop's
checkpointed state, so a run resumed after a kill replays the same shifted plan.
"""

from __future__ import annotations

import bisect
import dataclasses
import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

from rigctl.engine import PlannedTrial
from rigctl.errors import RigctlError

COMMANDS = ("status", "pause", "resume", "abort", "mark", "release")
MAX_MARK_CHARS = 500


class RunAborted(RigctlError):
    """The run was aborted from the control channel: stimulator in safe state, store closed, resumable."""


@dataclass(frozen=True)
class SteerRequest:
    kind: str  # pause | resume | abort | mark
    by: str  # the controller's key name
    text: str = ""  # mark only
    wall_time_s: float = 0.0  # time.time() when it was accepted


class Steering:
    """The queue between the control thread and the loop, plus a read-only view of the loop for `status`."""

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[SteerRequest]" = queue.SimpleQueue()
        self.status_source: Callable[[], dict[str, Any]] | None = None  # set by the loop

    def request(self, kind: str, by: str, text: str = "") -> SteerRequest:
        if kind not in ("pause", "resume", "abort", "mark"):
            raise ValueError(f"not a steering request: {kind}")
        req = SteerRequest(kind, by, text[:MAX_MARK_CHARS], time.time())
        self._queue.put(req)
        return req

    def take(self) -> list[SteerRequest]:
        """Every queued request, oldest first (called by the loop only)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def status(self) -> dict[str, Any]:
        source = self.status_source
        return {"state": "starting"} if source is None else source()


class PlanShift:
    """Offsets of the planned trial samples after pauses: trial i moves by the offset of the last segment
    whose first index is <= i (0 before any pause)."""

    def __init__(self, segments: list[tuple[int, int]] | None = None) -> None:
        self.segments: list[tuple[int, int]] = [tuple(s) for s in (segments or [])]  # (first_index, offset)

    @property
    def total_samples(self) -> int:
        return self.segments[-1][1] if self.segments else 0

    def offset(self, index: int) -> int:
        k = bisect.bisect_right([s[0] for s in self.segments], index)
        return self.segments[k - 1][1] if k else 0

    def add(self, first_index: int, delta_samples: int) -> None:
        """From trial `first_index` on, every trial moves `delta_samples` later (on top of earlier pauses)."""
        total = self.total_samples + int(delta_samples)
        if self.segments and self.segments[-1][0] == first_index:
            self.segments[-1] = (first_index, total)
        else:
            self.segments.append((int(first_index), total))

    def apply(self, planned: PlannedTrial | None) -> PlannedTrial | None:
        if planned is None:
            return None
        off = self.offset(planned.index)
        if off == 0:
            return planned
        command = planned.command
        if command is not None:
            command = dataclasses.replace(command, sample=command.sample + off)
        return dataclasses.replace(planned, sample=planned.sample + off, command=command)
