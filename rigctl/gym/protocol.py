"""`GymProtocol`: the closed-loop protocol behind `rigctl.gym.CultureEnv`; an agent chooses every trial.

It is an ordinary `kind: python` protocol (`class: rigctl.gym.protocol:GymProtocol`), so a gym run is stored
and read like any other run (protocol.yaml, trials.bin with the fields `action` and `episode`, stims.bin),
and the loop that drives it is the real `ProtocolRunner`. `trial(index, now)` answers None until the
environment `submit`s the action of trial `index` (one step), then plans it at
`max(previous pulse + isi_s, now + decision_margin_ms)` and keeps that decision in its state.
Episodes are sessions: episode e's step k is session e, trial k.

This module needs no gymnasium: the run directory's protocol.yaml names it, and readers (dashboard,
resume) import it. A run it plans cannot be continued by `rigctl run --resume`: its trials come from an agent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from rigctl.engine import PlannedTrial, Protocol, TrialField
from rigctl.errors import ProtocolError
from rigctl.types import BiphasicPulse, StimCommand, TrialRecord

CLASS_REF = "rigctl.gym.protocol:GymProtocol"


def pulse_from_dict(value: BiphasicPulse | Mapping[str, Any]) -> BiphasicPulse:
    """A pulse from its protocol-file form (the fields of `BiphasicPulse`), or the pulse itself."""
    if isinstance(value, BiphasicPulse):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"pulse {value!r}: allowed: a BiphasicPulse or a mapping of its fields")
    return BiphasicPulse(**dict(value))


@dataclass(frozen=True)
class Pattern:
    """One action: `pulse` on every electrode of `electrodes` at once (one `StimCommand`)."""

    electrodes: tuple[int, ...]
    pulse: BiphasicPulse
    name: str = ""

    def __post_init__(self) -> None:
        electrodes = tuple(self.electrodes)
        if not electrodes or not all(isinstance(e, int) and not isinstance(e, bool) for e in electrodes):
            raise ValueError(f"pattern {self.name or electrodes!r}: electrodes {list(electrodes)!r}; allowed: a "
                             "non-empty list of electrode indices")
        object.__setattr__(self, "electrodes", electrodes)
        object.__setattr__(self, "pulse", pulse_from_dict(self.pulse))
        if not self.name:
            object.__setattr__(self, "name", "+".join(str(e) for e in electrodes))

    def command(self, sample: int) -> StimCommand:
        return StimCommand(sample, self.electrodes, self.pulse)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "electrodes": list(self.electrodes), "pulse": asdict(self.pulse)}

    @staticmethod
    def of(value: "Pattern | Mapping[str, Any]") -> "Pattern":
        if isinstance(value, Pattern):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"pattern {value!r}: allowed: a Pattern or a mapping with electrodes, pulse, name")
        return Pattern(**dict(value))


@dataclass(frozen=True)
class GymParams:
    """What `GymProtocol` needs beyond the common protocol fields (the `params` of its protocol.yaml)."""

    patterns: tuple[Pattern, ...]
    trials_per_episode: int = 50
    isi_s: float = 0.5  # the shortest time between two pulses (the rate limit is checked against it)
    decision_margin_ms: float = 10.0  # the earliest a decided pulse comes after the decision

    def __post_init__(self) -> None:
        patterns = tuple(Pattern.of(p) for p in self.patterns)
        if not patterns:
            raise ValueError("patterns: allowed: at least one stimulation pattern")
        object.__setattr__(self, "patterns", patterns)
        if not isinstance(self.trials_per_episode, int) or self.trials_per_episode < 1:
            raise ValueError(f"trials_per_episode {self.trials_per_episode!r}; allowed: an integer >= 1")
        if not 0.001 <= float(self.isi_s) <= 3600:
            raise ValueError(f"isi_s {self.isi_s!r}; allowed: 0.001 to 3600")
        if not 0 <= float(self.decision_margin_ms) <= 10000:
            raise ValueError(f"decision_margin_ms {self.decision_margin_ms!r}; allowed: 0 to 10000")

    def to_dict(self) -> dict[str, Any]:
        return {"patterns": [p.to_dict() for p in self.patterns], "trials_per_episode": self.trials_per_episode,
                "isi_s": float(self.isi_s), "decision_margin_ms": float(self.decision_margin_ms)}


@dataclass(frozen=True)
class _Decided:
    action: int
    episode: int
    step: int  # 1-based within the episode
    sample: int
    last: bool  # the episode's last step (its session ends)


class GymProtocol(Protocol):
    """A closed-loop protocol whose trials an agent chooses one at a time (see the module docstring)."""

    Params = GymParams  # `kind: python` validates protocol.yaml's params with it

    def __init__(self, config, seed: int, sample_rate_hz: float):
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        self.params: GymParams = config.params if isinstance(config.params, GymParams) else GymParams(**config.params)
        self.decided: list[_Decided] = []
        self.heard = 0  # responses received
        self.last_record: TrialRecord | None = None
        self._pending: _Decided | None = None  # submitted, not yet planned (its sample comes from the clock)
        self._driven = False  # an environment submits the actions

    # ---- the environment's side -------------------------------------------------------------------
    def attach(self) -> None:
        """An environment drives this protocol (without one, an undecided trial is an error, not a wait)."""
        self._driven = True

    def submit(self, action: int, episode: int, step: int, last: bool) -> None:
        """The next trial's action; it is planned the next time the loop asks for it."""
        if self._pending is not None or self.heard != len(self.decided):
            raise ProtocolError("a trial was submitted while the previous one is still in flight")
        if not 0 <= action < len(self.params.patterns):
            raise ProtocolError(f"action {action}; allowed: 0 to {len(self.params.patterns) - 1}")
        self._pending = _Decided(int(action), int(episode), int(step), -1, bool(last))

    # ---- the Protocol contract -----------------------------------------------------------------------
    @property
    def n_trials(self) -> int:
        return self.config.sessions * self.params.trials_per_episode

    @property
    def open_loop(self) -> bool:
        return False

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("action", "<i4"), TrialField("episode", "<i4"))

    def candidate_commands(self) -> Iterable[StimCommand]:
        return [p.command(0) for p in self.params.patterns]

    def trial(self, index: int, now_sample: int) -> PlannedTrial | None:
        if index < len(self.decided):
            return self._planned(index)
        if index != len(self.decided) or self.heard != index or self._pending is None:
            if not self._driven:
                raise ProtocolError(f"{self.config.name}: the trials of a gym run are chosen by its environment "
                                    "(rigctl.gym); `rigctl run` cannot drive or resume it")
            return None  # waits for the agent's next action
        p = self.params
        nominal = (int(round(self.config.first_trial_s * self.sample_rate_hz)) if index == 0
                   else self.decided[-1].sample + int(round(p.isi_s * self.sample_rate_hz)))
        earliest = now_sample + self.ms_to_samples(p.decision_margin_ms)
        pending = self._pending
        self.decided.append(_Decided(pending.action, pending.episode, pending.step, max(nominal, earliest),
                                     pending.last))
        self._pending = None
        return self._planned(index)

    def _planned(self, index: int) -> PlannedTrial:
        d = self.decided[index]
        pattern = self.params.patterns[d.action]
        return PlannedTrial(index, d.episode, d.step, d.sample, pattern.command(d.sample),
                            {"action": d.action, "episode": d.episode}, last_in_session=d.last)

    def on_response(self, record: TrialRecord) -> None:
        self.heard += 1
        self.last_record = record

    def get_state(self) -> dict[str, Any]:
        return {"decided": [[d.action, d.episode, d.step, d.sample, d.last] for d in self.decided],
                "heard": self.heard}

    def set_state(self, state: dict[str, Any]) -> None:
        self.decided = [_Decided(int(a), int(e), int(s), int(t), bool(last))
                        for a, e, s, t, last in state.get("decided", [])]
        self.heard = int(state.get("heard", 0))
        self._pending = None


__all__ = ["CLASS_REF", "GymParams", "GymProtocol", "Pattern", "pulse_from_dict"]
