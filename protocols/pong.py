"""`kind: pong`: the culture plays Pong, DishBrain-style (Kagan et al., Neuron 110:3952, 2022).

One game tick is one step trial (`rigctl.tasks.closed_loop.TaskProtocol`): its pulse encodes the ball (place code:
which sensory electrode; rate code: which ticks stimulate, more often as the ball nears the paddle), and the evoked
spikes of its response window on the two motor groups move the paddle (`MotorDecoder`: the group with more spikes,
ties by seed; `decoder: random` is the control that ignores the culture). A hit is followed by predictable feedback
(every sensory electrode at once, at a fixed rate, briefly), a miss by unpredictable feedback (random sensory
electrodes at random times), then the next serve. An episode is a rally, from a serve to its miss. The game itself
is `rigctl.tasks.pong`; docs/closed_loop.md ("Pong") gives the values chosen and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal

from pydantic import model_validator

from rigctl.config import refusal, spec
from rigctl.engine import ProtocolConfig, TrialField
from rigctl.errors import ProtocolError
from rigctl.protocol import common_values, parse_file
from rigctl.protocol_schema import ProtocolFile, PulseFile, electrode_problem
from rigctl.tasks.closed_loop import (DECODERS, PHASE_STEP, MotorDecoder, Stim, TaskProtocol, predictable_feedback,
                                      unpredictable_feedback)
from rigctl.tasks.pong import OUTCOME_HIT, OUTCOME_MISS, Court, PongGame, place_index, rate_hz, rate_tick
from rigctl.types import BiphasicPulse, TrialRecord
from rigctl.yamlcheck import LocatedDoc, show

KIND = "pong"
MAX_PONG_TRIALS = 2_000_000
DEFAULT_MAX_RATE_HZ = 50.0  # the simulated rig's safety.max_rate_hz: feedback may not ask for more


class PongFile(ProtocolFile):
    """What a `kind: pong` file may say (lengths in court units, cu)."""

    kind: Literal["pong"] = KIND
    trials: int = spec(about="trials in the run (ticks and feedback pulses): the task time", ge=1,
                       le=MAX_PONG_TRIALS)
    isi_s: float = spec(0.1, ge=0.02, le=10.0, about="tick spacing (one step trial per tick)")
    decision_margin_ms: float = spec(10.0, ge=0.0, le=1000.0, about="the earliest a decided pulse may follow "
                                                                    "its decision")
    sensory_electrodes: list = spec(about="place-code electrodes, from the bottom of the court up (DishBrain: 8)")
    motor_up: list = spec(about="electrodes whose evoked spikes move the paddle up")
    motor_down: list = spec(about="electrodes whose evoked spikes move the paddle down")
    pulse: PulseFile
    decoder: Literal[DECODERS] = "culture"
    court_width: float = spec(1.0, gt=0.0, le=1000.0, about="court units from the paddle line to the far wall")
    court_height: float = spec(1.0, gt=0.0, le=1000.0)
    paddle_height: float = spec(0.3, gt=0.0, le=1000.0)
    paddle_speed_per_s: float = spec(1.0, gt=0.0, le=100000.0, about="court units a second")
    ball_speed_per_s: float = spec(0.4, gt=0.0, le=100000.0, about="court units a second along x")
    rate_near_hz: float = spec(10.0, gt=0.0, le=200.0, about="stimulation rate with the ball at the paddle")
    rate_far_hz: float = spec(2.5, gt=0.0, le=200.0, about="stimulation rate with the ball at the far wall")
    hit_feedback_rate_hz: float = spec(40.0, gt=0.0, le=DEFAULT_MAX_RATE_HZ)
    hit_feedback_s: float = spec(0.1, gt=0.0, le=10.0)
    miss_feedback_rate_hz: float = spec(5.0, gt=0.0, le=DEFAULT_MAX_RATE_HZ)
    miss_feedback_s: float = spec(4.0, gt=0.0, le=60.0)
    miss_feedback_min_interval_s: float = spec(0.025, ge=1.0 / DEFAULT_MAX_RATE_HZ, le=10.0,
                                               about="unpredictable pulses closer than this are dropped")

    @model_validator(mode="after")
    def _electrodes(self) -> "PongFile":
        """The electrode lists, once every field is valid: each a list of unique indices, no electrode in two."""
        for name in ("sensory_electrodes", "motor_up", "motor_down"):
            problem = electrode_problem(getattr(self, name))
            if problem:
                raise refusal(**problem, field=name)
        if len(self.sensory_electrodes) < 2:
            raise refusal("at least 2 electrodes (a place code)", field="sensory_electrodes")
        seen: dict[int, str] = {}
        for name in ("sensory_electrodes", "motor_up", "motor_down"):
            for e in getattr(self, name):
                if e in seen:
                    raise refusal("disjoint electrode lists", field=name,
                                  line=f"electrode {e} is in both {seen[e]} and {name}; allowed: disjoint lists")
                seen[e] = name
        return self


@dataclass(frozen=True)
class PongConfig(ProtocolConfig):
    KIND: ClassVar[str] = KIND
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("source_file", "sessions")  # a session is a rally, not planned

    trials: int
    isi_s: float
    decision_margin_ms: float
    sensory_electrodes: tuple[int, ...]
    motor_up: tuple[int, ...]
    motor_down: tuple[int, ...]
    pulse: BiphasicPulse
    decoder: str
    court_width: float
    court_height: float
    paddle_height: float
    paddle_speed_per_s: float
    ball_speed_per_s: float
    rate_near_hz: float
    rate_far_hz: float
    hit_feedback_rate_hz: float
    hit_feedback_s: float
    miss_feedback_rate_hz: float
    miss_feedback_s: float
    miss_feedback_min_interval_s: float

    def court(self) -> Court:
        return Court(self.court_width, self.court_height, self.paddle_height, self.paddle_speed_per_s * self.isi_s,
                     self.ball_speed_per_s * self.isi_s)

    def make_protocol(self, seed: int, sample_rate_hz: float) -> "PongProtocol":
        return PongProtocol(self, seed, sample_rate_hz)

    def describe(self, plan: "PongProtocol") -> list[str]:
        p = self.pulse
        return [f"{self.name}: Pong, {self.trials} trials, a tick every {self.isi_s:g} s, decoder {self.decoder}; "
                f"court {self.court_width:g} x {self.court_height:g}, paddle {self.paddle_height:g}, ball "
                f"{self.ball_speed_per_s:g}/s, paddle {self.paddle_speed_per_s:g}/s",
                f"sensory {list(self.sensory_electrodes)} at {self.rate_far_hz:g}-{self.rate_near_hz:g} Hz; motor up "
                f"{list(self.motor_up)}, down {list(self.motor_down)}; pulse {p.phase1_amplitude:g}/"
                f"{p.phase2_amplitude:g} {p.unit}",
                f"hit: {self.hit_feedback_rate_hz:g} Hz on all sensory for {self.hit_feedback_s:g} s; miss: "
                f"{self.miss_feedback_rate_hz:g} Hz random for {self.miss_feedback_s:g} s"]


class PongProtocol(TaskProtocol):
    """Pong on the culture (see the module docstring): the game's state and the rate code's phase are the task's
    state; everything else (decisions, batches, episodes) is TaskProtocol's."""

    def __init__(self, config: PongConfig, seed: int, sample_rate_hz: float):
        decoder = MotorDecoder((config.motor_up, config.motor_down), seed, config.decoder)
        super().__init__(config, seed, sample_rate_hz, decoder, config.pulse)
        self.game = PongGame.new(config.court(), seed)
        self.rate_phase = 1.0  # a serve's first tick always stimulates

    def task_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("ball_x", "<f8"), TrialField("ball_y", "<f8"), TrialField("paddle_y", "<f8"),
                TrialField("outcome", "u1"))

    def feedback_interval(self) -> tuple[float, str] | None:
        cfg = self.config
        return min((1.0 / cfg.hit_feedback_rate_hz, "hit_feedback_rate_hz"),
                   (cfg.miss_feedback_min_interval_s, "miss_feedback_min_interval_s"))

    def stimulated_sets(self) -> Iterable[tuple[int, ...]]:
        sensory = self.config.sensory_electrodes
        return [(e,) for e in sensory] + [tuple(sensory)]

    def _game_fields(self) -> dict[str, Any]:
        g = self.game
        return {"ball_x": g.ball_x, "ball_y": g.ball_y, "paddle_y": g.paddle_y, "outcome": 0}

    def _tick(self, offset_s: float) -> Stim:
        """The next tick's step: the ball's place on the sensory electrodes, if the rate code fires this tick."""
        cfg = self.config
        g = self.game
        rate = rate_hz(g.ball_x, cfg.court_width, cfg.rate_near_hz, cfg.rate_far_hz)
        fire, self.rate_phase = rate_tick(self.rate_phase, rate, cfg.isi_s)
        electrodes = (cfg.sensory_electrodes[place_index(g.ball_y, cfg.court_height, len(cfg.sensory_electrodes))],)
        return Stim(offset_s, electrodes if fire else (), PHASE_STEP, self._game_fields())

    def first_batch(self) -> list[Stim]:
        return [self._tick(0.0)]

    def after_step(self, record: TrialRecord, action: int) -> tuple[list[Stim], bool]:
        cfg = self.config
        outcome = self.game.tick(action)
        record.fields["outcome"] = outcome
        if outcome == OUTCOME_HIT:
            feedback = predictable_feedback(cfg.sensory_electrodes, cfg.hit_feedback_rate_hz, cfg.hit_feedback_s,
                                            self._game_fields())
            return feedback + [self._tick(feedback[-1].offset_s + cfg.isi_s)], False
        if outcome == OUTCOME_MISS:
            feedback = unpredictable_feedback(cfg.sensory_electrodes, cfg.miss_feedback_rate_hz, cfg.miss_feedback_s,
                                              cfg.miss_feedback_min_interval_s, self.seed, self.next_feedback_event(),
                                              self._game_fields())
            self.game.serve()
            self.rate_phase = 1.0
            return feedback + [self._tick(max(cfg.miss_feedback_s, feedback[-1].offset_s + cfg.isi_s))], True
        return [self._tick(0.0)], False

    def task_state(self) -> dict[str, Any]:
        return {"game": self.game.to_dict(), "rate_phase": self.rate_phase}

    def set_task_state(self, state: dict[str, Any]) -> None:
        self.game = PongGame.from_dict(self.config.court(), state["game"])
        self.rate_phase = float(state["rate_phase"])


def load(doc: LocatedDoc, path: Path) -> PongConfig:
    """Validate a Pong document: the model, then the checks across fields (each naming its line)."""
    top = parse_file(PongFile, doc)
    pulse = top.pulse.to_pulse()

    def refuse(name: str, allowed: str) -> ProtocolError:
        return ProtocolError(f"{doc.where(name)}: field '{name}' has value {show(getattr(top, name))}; "
                             f"allowed: {allowed}")

    if top.paddle_height > top.court_height:
        raise refuse("paddle_height", f"at most court_height ({top.court_height:g})")
    if top.rate_near_hz > 1.0 / top.isi_s + 1e-9:
        raise refuse("rate_near_hz", f"at most 1 / isi_s = {1.0 / top.isi_s:g} Hz (a tick carries one pulse)")
    if top.rate_far_hz > top.rate_near_hz:
        raise refuse("rate_far_hz", f"at most rate_near_hz ({top.rate_near_hz:g})")
    if top.ball_speed_per_s * top.isi_s > min(top.court_width, top.court_height) / 4.0:
        raise refuse("ball_speed_per_s", f"at most {min(top.court_width, top.court_height) / 4.0 / top.isi_s:g} "
                                         "(a quarter of the court's smaller side per tick)")
    if top.paddle_speed_per_s * top.isi_s > top.court_height:
        raise refuse("paddle_speed_per_s", f"at most court_height / isi_s = {top.court_height / top.isi_s:g}")
    common = common_values(doc, top, path, top.isi_s, pulse.duration_us)
    return PongConfig(**common, sessions=1, trials=top.trials, isi_s=top.isi_s,
                      decision_margin_ms=top.decision_margin_ms,
                      sensory_electrodes=tuple(top.sensory_electrodes), motor_up=tuple(top.motor_up),
                      motor_down=tuple(top.motor_down), pulse=pulse, decoder=top.decoder,
                      court_width=top.court_width, court_height=top.court_height, paddle_height=top.paddle_height,
                      paddle_speed_per_s=top.paddle_speed_per_s, ball_speed_per_s=top.ball_speed_per_s,
                      rate_near_hz=top.rate_near_hz, rate_far_hz=top.rate_far_hz,
                      hit_feedback_rate_hz=top.hit_feedback_rate_hz, hit_feedback_s=top.hit_feedback_s,
                      miss_feedback_rate_hz=top.miss_feedback_rate_hz, miss_feedback_s=top.miss_feedback_s,
                      miss_feedback_min_interval_s=top.miss_feedback_min_interval_s)
