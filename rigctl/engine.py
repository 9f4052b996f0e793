"""What the loop drives: a `Protocol` plans trials, hears their responses and owns its state.

Two levels, one job each:

- a protocol *configuration* (`ProtocolConfig`: what a protocol file says, validated, with the
  recording policy every protocol shares) makes
- a `Protocol` for one run (`config.make_protocol(seed, sample_rate_hz)`): the plan the loop walks.

The loop asks `protocol.trial(index, now_sample)` for trial `index` until it answers (a closed-loop
protocol answers `None` while it waits for an earlier trial's response), schedules it once it falls
within the look-ahead, counts its response window and hands the finished `TrialRecord` back through
`protocol.on_response(record)`. Determinism: a protocol must give the same trial for the same index,
state and responses; once it has answered for an index, it answers the same again (it keeps its
decisions in its state). Its state goes into every checkpoint (`get_state`/`set_state`); on hardware
it is rebuilt by replaying the stored trials through `trial` and `on_response`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar, Iterable

import numpy as np
import yaml

from rigctl.types import BssFieldAccess, StimCommand, TrialRecord

RAW_POLICIES = ("all", "trials", "none")
SPIKE_POLICIES = ("all", "trials")


@dataclass(frozen=True)
class TrialField:
    """A per-trial value a protocol stores in `trials.bin` beside session, trial, sample and counts.

    `csv` names its CSV columns: a scalar field is one column `csv` (default: the name); a vector of k
    values is k columns `csv1..csvk`."""

    name: str
    dtype: str  # numpy dtype string, little-endian ("u1", "<i4", "<f8")
    shape: tuple[int, ...] = ()
    csv: str = ""

    def columns(self) -> list[str]:
        prefix = self.csv or self.name
        if not self.shape:
            return [prefix]
        return [f"{prefix}{i}" for i in range(1, int(np.prod(self.shape)) + 1)]

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.shape), self.csv]

    @staticmethod
    def from_json(item: list) -> "TrialField":
        name, dtype, shape, csv = item
        return TrialField(str(name), str(dtype), tuple(int(n) for n in shape), str(csv))


def trial_dtype(trial_fields: Iterable[TrialField], n_electrodes: int) -> np.dtype:
    """The record of `trials.bin`: session, trial, sample, the protocol's fields in order, counts."""
    declared = [(f.name, f.dtype, f.shape) if f.shape else (f.name, f.dtype) for f in trial_fields]
    return np.dtype([("session", "<i4"), ("trial", "<i4"), ("sample", "<i8"), *declared,
                     ("counts", "<i4", (n_electrodes,))])


@dataclass(frozen=True)
class PlannedTrial(BssFieldAccess):
    """Everything about trial `index` (0-based over the run) that is known before it happens."""

    index: int
    session: int  # 1-based
    trial: int  # 1-based within the session
    sample: int  # the pulse's sample index (the nominal onset when nothing is stimulated)
    command: StimCommand | None  # None: a trial without stimulation
    fields: dict[str, Any] = field(default_factory=dict)  # the protocol's declared trial fields
    last_in_session: bool = False

    def record(self, counts: np.ndarray) -> TrialRecord:
        return TrialRecord(self.session, self.trial, self.sample, counts, dict(self.fields))


@dataclass(frozen=True)
class ProtocolConfig(ABC):
    """A validated protocol file: identity and the recording policy the loop applies to every kind
    (declared by `rigctl.protocol_schema.ProtocolFile`); each kind is a frozen dataclass adding its own fields."""

    KIND: ClassVar[str] = ""
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("source_file",)  # fields a protocol file of this kind does not have

    name: str
    description: str
    reference: str
    seed: int
    sessions: int  # session events, models and the report count on them
    first_trial_s: float  # lead-in before the first trial (filters and noise estimates settle)
    response_window_ms: tuple[float, float]
    raw: str  # all | trials (raw_window_ms around each trial) | none
    raw_window_ms: tuple[float, float]
    spikes: str  # all | trials (spike_window_ms around each trial)
    spike_window_ms: tuple[float, float]
    drug: str  # simulated rig only
    checkpoint_every_trials: int
    source_file: str

    @property
    def kind(self) -> str:
        return self.KIND

    def with_overrides(self, **values: Any):
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """The resolved protocol as it would be written in a file (no `extends`)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for f in fields(self):
            if f.name != "name" and f.name not in self.NOT_IN_FILE:
                out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @abstractmethod
    def make_protocol(self, seed: int, sample_rate_hz: float) -> "Protocol":
        """The plan of one run with this configuration."""


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if is_dataclass(value):
        return {k: _plain(v) for k, v in asdict(value).items()}
    return value


class Protocol(ABC):
    """The plan of one run, driven by the loop (see the module docstring for the contract)."""

    config: ProtocolConfig
    sample_rate_hz: float

    @property
    @abstractmethod
    def n_trials(self) -> int:
        """Trials in the whole run (0: a recording without trials, which ends at `record_until`)."""

    @property
    @abstractmethod
    def trial_fields(self) -> tuple[TrialField, ...]: ...

    @abstractmethod
    def trial(self, index: int, now_sample: int) -> PlannedTrial | None:
        """Trial `index`, or None while it is not decided yet (it waits for an earlier response)."""

    def on_response(self, record: TrialRecord) -> None:
        """A trial's response window is complete (closed-loop protocols decide on it). Default: nothing.

        Called before the record is stored: a protocol may set declared fields it decides from the response
        (a task's action) in `record.fields`, and they are stored with the trial."""

    @property
    def open_loop(self) -> bool:
        """True when every trial is known before the run (the whole plan is safety-checked up front)."""
        return True

    def candidate_commands(self) -> Iterable[StimCommand]:
        """A closed-loop protocol's every possible command shape, checked against the limits up front
        (the rate is checked as each is sent). Open-loop protocols: their whole plan instead."""
        return ()

    def shortest_pulse_interval(self) -> tuple[float, str] | None:
        """A closed-loop protocol's shortest time between two pulses on one electrode, in seconds, and the field
        that sets it, so the rate limit is checked before the run (open loop: the whole plan is). None: unknown."""
        return None

    @property
    def record_until(self) -> int:
        """Sample until which the loop records even when no trial is left (recording-only protocols)."""
        return 0

    def session_context(self, session: int) -> dict[str, Any]:
        """What the online models are told when a session begins (BSS: the session's stimuli)."""
        return {}

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def ms_to_samples(self, ms: float) -> int:
        return int(round(ms * 1e-3 * self.sample_rate_hz))
