"""Closed-loop tasks on an MEA: the culture's evoked responses choose actions, the task answers with stimulation.

One *step* of a task is one rigctl trial: its pulse encodes the task's observation on sensory electrodes, and
the evoked counts of its response window on the motor electrode groups decide the action (`MotorDecoder`).
After a step the task may give *feedback*: further trials whose pulses carry no observation and whose responses
decide nothing (`predictable_feedback`, `unpredictable_feedback`, after DishBrain: Kagan et al., Neuron 2022).

`TaskProtocol` is the engine side every task shares: a `Protocol` that decides a batch of trials (feedback, then
the next step) once it has heard a step's response, keeps every decision in its state (a resumed run decides the
same), and stores per trial the phase, episode, step and the action decided from that trial's response.
A task subclass says what to stimulate (`first_batch`, `after_step`) and which fields it adds.

Randomness (tie breaks, the random-action control, unpredictable feedback) is drawn from
`numpy.random.default_rng([seed, stream, index])`: a pure function of the run's seed and the trial or event
index, so a cut-and-resumed run draws the same numbers.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np

from rigctl.engine import PlannedTrial, Protocol, ProtocolConfig, TrialField
from rigctl.types import BiphasicPulse, StimCommand, TrialRecord

PHASE_STEP = 0  # a step: the observation is stimulated, the response decides the action
PHASE_FEEDBACK = 1  # feedback: its response decides nothing
NO_ACTION = -1

STREAM_TIE = 101
STREAM_RANDOM_ACTION = 102
STREAM_UNPREDICTABLE = 103

DECODERS = ("culture", "random")


def seeded_integer(seed: int, stream: int, index: int, n: int) -> int:
    """A uniform integer in [0, n), a pure function of (seed, stream, index)."""
    return int(np.random.default_rng([seed, stream, index]).integers(n))


@dataclass(frozen=True)
class MotorDecoder:
    """The action of a step: the motor group with the most evoked spikes in the step's response window.

    Ties (including a window without spikes) are broken uniformly among the tied groups by the seed and the
    trial index. `mode = "random"` is the control in which the decoder ignores the culture: every action is
    drawn uniformly by seed and trial index.
    """

    groups: tuple[tuple[int, ...], ...]
    seed: int
    mode: str = "culture"

    def group_counts(self, counts: np.ndarray) -> np.ndarray:
        return np.array([int(np.sum(counts[list(g)])) for g in self.groups], dtype=np.int64)

    def decide(self, counts: np.ndarray, trial_index: int) -> int:
        n = len(self.groups)
        if self.mode == "random":
            return seeded_integer(self.seed, STREAM_RANDOM_ACTION, trial_index, n)
        per_group = self.group_counts(counts)
        best = np.flatnonzero(per_group == per_group.max())
        if len(best) == 1:
            return int(best[0])
        return int(best[seeded_integer(self.seed, STREAM_TIE, trial_index, len(best))])


@dataclass(frozen=True)
class Stim:
    """One trial a task asks for: its pulse's offset from the batch's start, the electrodes (empty: a trial
    without stimulation) and its phase; `fields` are the task's own trial fields."""

    offset_s: float
    electrodes: tuple[int, ...]
    phase: int
    fields: dict[str, Any] = field(default_factory=dict)
    ends_episode: bool = False  # the last trial of its episode (set by TaskProtocol)


def predictable_feedback(electrodes: Sequence[int], rate_hz: float, duration_s: float,
                         fields: dict[str, Any], start_s: float = 0.0) -> list[Stim]:
    """Every electrode at once, at a fixed rate for `duration_s` (at least one pulse): the same every time."""
    n = max(1, int(round(rate_hz * duration_s)))
    return [Stim(start_s + k / rate_hz, tuple(electrodes), PHASE_FEEDBACK, dict(fields)) for k in range(n)]


def unpredictable_feedback(electrodes: Sequence[int], rate_hz: float, duration_s: float, min_interval_s: float,
                           seed: int, event: int, fields: dict[str, Any], start_s: float = 0.0) -> list[Stim]:
    """`rate_hz x duration_s` pulses at uniformly random times, each on one random electrode, drawn from the seed
    and the feedback event's number. Pulses closer than `min_interval_s` to one another are dropped: no electrode
    is pulsed faster than the rig's rate limit, and trials stay ordered in time."""
    rng = np.random.default_rng([seed, STREAM_UNPREDICTABLE, event])
    n = max(1, int(round(rate_hz * duration_s)))
    times = np.sort(rng.uniform(0.0, duration_s, n))
    which = rng.integers(len(electrodes), size=n)
    out: list[Stim] = []
    last = -np.inf
    for t, i in zip(times.tolist(), which.tolist()):
        if t - last >= min_interval_s:
            out.append(Stim(start_s + t, (int(electrodes[i]),), PHASE_FEEDBACK, dict(fields)))
            last = t
    return out


@dataclass
class _Decided:
    sample: int
    phase: int
    electrodes: tuple[int, ...]
    fields: dict[str, Any]
    session: int
    trial: int
    last_in_session: bool


class TaskProtocol(Protocol):
    """The closed-loop engine of a task (see the module docstring). Subclasses implement `first_batch`,
    `after_step`, `task_fields` and `task_state`/`set_task_state`; `config` must have `trials`, `isi_s`,
    `decision_margin_ms` and a `pulse`."""

    COMMON_FIELDS = (TrialField("phase", "u1"), TrialField("episode", "<i4"), TrialField("step", "<i4"),
                     TrialField("action", "i1"))

    def __init__(self, config: ProtocolConfig, seed: int, sample_rate_hz: float, decoder: MotorDecoder,
                 pulse: BiphasicPulse):
        self.config = config
        self.seed = seed
        self.sample_rate_hz = sample_rate_hz
        self.decoder = decoder
        self.pulse = pulse
        self.decided: list[_Decided] = []  # trials decided and not yet heard (earlier ones are never asked again)
        self.first_decided = 0  # the run index of decided[0]
        self.last_sample: int | None = None  # the pulse sample of the last trial decided
        self.pending: list[Stim] = []
        self.pending_base: int | None = None  # the sample at which the pending batch starts, once fixed
        self.awaiting = False  # a step's response is not heard yet
        self.heard = 0
        self.episode = 1
        self.trial_in_episode = 0
        self.step_in_episode = 0  # steps decided in the current episode (the `step` field, 1-based)
        self.feedback_events = 0

    # ---- what a task says -------------------------------------------------------------------------------
    @abstractmethod
    def task_fields(self) -> tuple[TrialField, ...]:
        """The task's own trial fields (after phase, episode, step, action)."""

    @abstractmethod
    def first_batch(self) -> list[Stim]:
        """The trials before the first response: at least the first step."""

    @abstractmethod
    def after_step(self, record: TrialRecord, action: int) -> tuple[list[Stim], bool]:
        """Apply `action` (decided from the step `record`) and return the next batch, ending with the next step,
        and whether the episode ended with this step (the next step opens a new episode). May fill the task's
        decided fields in `record.fields` (they are stored with the trial)."""

    @abstractmethod
    def task_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def set_task_state(self, state: dict[str, Any]) -> None: ...

    def next_feedback_event(self) -> int:
        """A number for the next feedback event (it seeds unpredictable feedback)."""
        self.feedback_events += 1
        return self.feedback_events

    # ---- the engine ---------------------------------------------------------------------------------------
    @property
    def n_trials(self) -> int:
        return int(self.config.trials)

    @property
    def open_loop(self) -> bool:
        return False

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return self.COMMON_FIELDS + self.task_fields()

    def candidate_commands(self) -> Iterable[StimCommand]:
        """Every electrode set the task may stimulate, with its pulse (checked against the limits up front)."""
        return [StimCommand(0, tuple(sorted(e)), self.pulse) for e in self.stimulated_sets() if e]

    def feedback_interval(self) -> tuple[float, str] | None:
        """The shortest time between two feedback pulses and its field (None: the task gives no feedback)."""
        return None

    def shortest_pulse_interval(self) -> tuple[float, str] | None:
        """Steps are at least `isi_s` apart, feedback pulses at least `feedback_interval()` (and the step after
        feedback `isi_s` after its last pulse): the shorter bounds the rate on any electrode."""
        candidates = [(float(self.config.isi_s), "isi_s")]
        feedback = self.feedback_interval()
        if feedback is not None:
            candidates.append(feedback)
        return min(candidates)

    @abstractmethod
    def stimulated_sets(self) -> Iterable[tuple[int, ...]]:
        """Every electrode set a trial of this task may stimulate (for the safety check before the run)."""

    @property
    def n_decided(self) -> int:
        return self.first_decided + len(self.decided)

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial | None:
        if index < self.first_decided:
            raise IndexError(f"trial {index + 1} was heard already; a task keeps only the trials not yet heard")
        if index < self.n_decided:
            return self._planned(index)
        if index != self.n_decided or index >= self.n_trials:
            return None
        if not self.pending:
            if index > 0:
                return None  # waits for the step's response
            self.pending = self.first_batch()
        if self.pending_base is None:
            margin = int(round(self.config.decision_margin_ms * 1e-3 * self.sample_rate_hz))
            spacing = int(round(self.config.isi_s * self.sample_rate_hz))
            first = int(round(self.config.first_trial_s * self.sample_rate_hz))
            last = first if self.last_sample is None else self.last_sample + spacing
            self.pending_base = max(now_sample + margin, last, first)
        stim = self.pending.pop(0)
        self.trial_in_episode += 1
        if stim.phase == PHASE_STEP:
            self.step_in_episode += 1
        step = self.step_in_episode if stim.phase == PHASE_STEP else 0  # feedback trials are no step
        fields = {"phase": stim.phase, "episode": self.episode, "step": step, "action": NO_ACTION, **stim.fields}
        self.last_sample = self.pending_base + int(round(stim.offset_s * self.sample_rate_hz))
        self.decided.append(_Decided(self.last_sample, stim.phase, stim.electrodes, fields, self.episode,
                                     self.trial_in_episode, stim.ends_episode))
        if stim.ends_episode:
            self.episode += 1
            self.trial_in_episode = 0
            self.step_in_episode = 0
        if not self.pending:
            self.pending_base = None
        if stim.phase == PHASE_STEP:
            self.awaiting = True
        return self._planned(index)

    def _planned(self, index: int) -> PlannedTrial:
        d = self.decided[index - self.first_decided]
        command = StimCommand(d.sample, tuple(sorted(d.electrodes)), self.pulse) if d.electrodes else None
        return PlannedTrial(index, d.session, d.trial, d.sample, command, dict(d.fields),
                            last_in_session=d.last_in_session)

    def on_response(self, record: TrialRecord) -> None:
        index = self.heard
        self.heard += 1
        if self.decided and self.first_decided < self.heard:
            drop = min(self.heard - self.first_decided, len(self.decided))
            del self.decided[:drop]
            self.first_decided += drop
        if int(record.fields["phase"]) != PHASE_STEP:
            return
        action = self.decoder.decide(record.counts, index)
        record.fields["action"] = action
        batch, episode_ended = self.after_step(record, action)
        if episode_ended:
            # the trials of this batch before the next step still belong to the ending episode
            steps = [i for i, s in enumerate(batch) if s.phase == PHASE_STEP]
            last_own = (steps[0] if steps else len(batch)) - 1
            if last_own >= 0:
                batch[last_own] = replace(batch[last_own], ends_episode=True)
            else:
                self.episode += 1
                self.trial_in_episode = 0
                self.step_in_episode = 0
        self.pending = batch
        self.pending_base = None
        self.awaiting = False

    # ---- state --------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "decided": [[d.sample, d.phase, list(d.electrodes), d.fields, d.session, d.trial, d.last_in_session]
                        for d in self.decided],
            "pending": [[s.offset_s, list(s.electrodes), s.phase, s.fields, s.ends_episode] for s in self.pending],
            "first_decided": self.first_decided, "last_sample": self.last_sample, "pending_base": self.pending_base, "awaiting": self.awaiting,
            "heard": self.heard,
            "episode": self.episode, "trial_in_episode": self.trial_in_episode,
            "step_in_episode": self.step_in_episode, "feedback_events": self.feedback_events, "task": self.task_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.decided = [_Decided(int(d[0]), int(d[1]), tuple(int(e) for e in d[2]), dict(d[3]), int(d[4]), int(d[5]),
                                 bool(d[6])) for d in state["decided"]]
        self.pending = [Stim(float(s[0]), tuple(int(e) for e in s[1]), int(s[2]), dict(s[3]), bool(s[4]))
                        for s in state["pending"]]
        self.first_decided = int(state.get("first_decided", 0))
        self.last_sample = state.get("last_sample", self.decided[-1].sample if self.decided else None)
        self.pending_base = state["pending_base"]
        self.awaiting = bool(state["awaiting"])
        self.heard = int(state["heard"])
        self.episode = int(state["episode"])
        self.trial_in_episode = int(state["trial_in_episode"])
        self.step_in_episode = int(state.get("step_in_episode", 0))
        self.feedback_events = int(state["feedback_events"])
        self.set_task_state(state["task"])
