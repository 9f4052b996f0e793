"""A minimal closed-loop protocol: the culture's last response chooses the next stimulus.

Trial k stimulates electrode `a` or `b`; if the evoked count on electrode `target` in trial k's response
window reaches `threshold`, trial k + 1 keeps the same electrode, otherwise it switches to the other. A
trial is decided only once its predecessor's response is known (`trial` answers None until then), and
each decision is kept in the protocol's state, so a resumed run makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigctl.engine import PlannedTrial, Protocol, TrialField
from rigctl.types import BiphasicPulse, StimCommand


class SwitchOnResponse(Protocol):
    @dataclass(frozen=True)
    class Params:
        a: int = 9
        b: int = 27
        target: int = 18
        threshold: int = 6
        trials: int = 60
        isi_s: float = 0.5
        decision_margin_ms: float = 20.0  # the earliest a decided pulse may come after the decision
        amplitude_mV: float = 1000.0

    def __init__(self, config, seed: int, sample_rate_hz: float):
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        self.params = config.params
        self.pulse = BiphasicPulse.symmetric(self.params.amplitude_mV, 200.0, unit="mV")
        self.decided: list[tuple[int, int]] = []  # (electrode, sample) of every trial decided so far
        self.heard = 0  # responses received

    @property
    def n_trials(self) -> int:
        return self.params.trials

    @property
    def open_loop(self) -> bool:
        return False

    def candidate_commands(self):
        return [StimCommand(0, (e,), self.pulse) for e in (self.params.a, self.params.b)]

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("electrode", "<i4"),)

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial | None:
        p = self.params
        if index < len(self.decided):
            electrode, sample = self.decided[index]
        elif index == len(self.decided) and self.heard == index:
            nominal = int(round((self.config.first_trial_s + index * p.isi_s) * self.sample_rate_hz))
            earliest = now_sample + int(round(p.decision_margin_ms * 1e-3 * self.sample_rate_hz))
            electrode = p.a if index == 0 else self._next_electrode
            sample = max(nominal, earliest)
            self.decided.append((electrode, sample))
        else:
            return None  # waits for the previous trial's response
        return PlannedTrial(index, 1, index + 1, sample, StimCommand(sample, (electrode,), self.pulse),
                            {"electrode": electrode}, last_in_session=index + 1 == self.n_trials)

    def on_response(self, record) -> None:
        p = self.params
        electrode = int(record.fields["electrode"])
        kept = int(record.counts[p.target]) >= p.threshold
        self._next_electrode = electrode if kept else (p.b if electrode == p.a else p.a)
        self.heard += 1

    def get_state(self) -> dict:
        return {"decided": list(self.decided), "heard": self.heard,
                "next": getattr(self, "_next_electrode", self.params.a)}

    def set_state(self, state: dict) -> None:
        self.decided = [tuple(d) for d in state.get("decided", [])]
        self.heard = state.get("heard", 0)
        self._next_electrode = state.get("next", self.params.a)
