"""`kind: maze`: the maze of Isomura, Shimazaki & Friston (Commun. Biol. 5:55, 2022), played by an agent rig
(`--rig canonical`: the paper's canonical neural network) or by a culture on an MEA (`mea:` section).

Words: an *episode* is one walk from the start to the goal or the step cap (the paper's "trial"); a *step* is one
move. On an MEA a step is one rigctl trial: the pulse on the sensory groups encodes which of the four moves are
open (a reduced view: the walls around the agent), the evoked counts of the four motor groups decide the move
(`MotorDecoder`), and risk becomes feedback stimulation: after each risk chunk, predictable pulses when the chunk's
net rightward progress was good (Γ < 0.5), unpredictable ones when it was not (Γ = 0.55); predictable on reaching
the goal, unpredictable when the step cap ends the episode (after DishBrain, Kagan et al., Neuron 2022).

The maze, the moves, the view and the risk are `rigctl.tasks.maze` in both cases. The maze is drawn from the
run's seed (as the paper's bench: maze and agent share the seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal

import numpy as np
from pydantic import model_validator

from rigctl.config import refusal, spec
from rigctl.engine import Protocol, ProtocolConfig, TrialField
from rigctl.errors import ProtocolError
from rigctl.protocol import common_values, parse_file
from rigctl.protocol_schema import FileSection, ProtocolFile, PulseFile, electrode_problem
from rigctl.tasks.agent import AgentTask, PlayedEpisode
from rigctl.tasks.closed_loop import (DECODERS, PHASE_STEP, MotorDecoder, Stim, TaskProtocol, predictable_feedback,
                                      unpredictable_feedback)
from rigctl.tasks.maze import (DOWN, LEFT, MAX_STEPS, N_COLS, N_EPISODES, N_ROWS, RIGHT, RISK_CHUNK, UP,
                               VIEW_SIZE, MazeEnv, RiskChunks, generate_maze, move_cell)
from rigctl.types import BiphasicPulse, TrialRecord
from rigctl.yamlcheck import LocatedDoc

KIND = "maze"
MOVES = ("up", "down", "left", "right")  # the order of rigctl.tasks.maze's UP, DOWN, LEFT, RIGHT
assert (UP, DOWN, LEFT, RIGHT) == (0, 1, 2, 3)
KEEP_STEPS = ("all", "ends")


def _odd(default: int, minimum: int, maximum: int, what: str) -> Any:
    return spec(default, ge=minimum, le=maximum, about=f"{what}: an odd number (walls and cells alternate)")


class FeedbackFile(FileSection):
    """Feedback stimulation on every sensory electrode (DishBrain: predictable 100 Hz for 0.1 s after a hit,
    unpredictable 5 Hz for 4 s after a miss; rigctl's default rate limit is 50 Hz per electrode)."""

    predictable_rate_hz: float = spec(40.0, gt=0, le=200)
    predictable_duration_s: float = spec(0.1, ge=0, le=10)
    unpredictable_rate_hz: float = spec(5.0, gt=0, le=200)
    unpredictable_duration_s: float = spec(4.0, ge=0, le=60)
    min_interval_s: float = spec(0.025, ge=0.005, le=10, about="shortest time between two feedback pulses")


class MeaFile(FileSection):
    """How the maze is played by a culture: encoding, decoding, timing and feedback."""

    trials: int = spec(2400, ge=1, le=1_000_000, about="trials in the run (steps and feedback): the task time")
    isi_s: float = spec(0.5, ge=0.02, le=60, about="shortest time between two trials")
    decision_margin_ms: float = spec(20.0, ge=0, le=10000, about="the earliest a decided pulse follows its decision")
    sensory_groups: dict = spec(about="mapping up/down/left/right: [electrodes], stimulated when that move is open")
    motor_groups: dict = spec(about="mapping up/down/left/right: [electrodes]; the most active group moves")
    decoder: Literal[DECODERS] = spec("culture", about="culture, or random (the control: the culture is ignored)")
    pulse: PulseFile
    feedback: FeedbackFile = FeedbackFile()

    @model_validator(mode="after")
    def _groups(self) -> "MeaFile":
        for name in ("sensory_groups", "motor_groups"):
            groups = getattr(self, name)
            if set(groups) != set(MOVES):
                raise refusal("exactly the groups up, down, left, right", field=name,
                              phrase=f"has groups {sorted(map(str, groups))}")
            for move in MOVES:
                v = groups[move]
                problem = electrode_problem(v) if isinstance(v, list) else {"allowed": "a list of electrode indices"}
                if problem:
                    raise refusal(**problem, field=f"{name}.{move}", value=v)
        sensory = {e for g in self.sensory_groups.values() for e in g}
        motor = {e for g in self.motor_groups.values() for e in g}
        if sensory & motor:
            raise refusal("sensory and motor electrodes apart", field="motor_groups",
                          phrase=f"shares electrodes {sorted(sensory & motor)} with sensory_groups")
        return self


class MazeFile(ProtocolFile):
    """`kind: maze` (defaults: the paper's maze and schedule)."""

    kind: Literal["maze"] = KIND
    maze_rows: int = spec(N_ROWS, ge=7, le=999, about="rows of the maze grid: 4k + 3 (walls and cells alternate)")
    maze_cols: int = _odd(N_COLS, 5, 9999, "columns of the maze grid")
    view_size: int = spec(VIEW_SIZE, ge=3, le=99, about="side of the agent's square view (odd)")
    episodes: int = spec(N_EPISODES, ge=1, le=100000, about="episodes an agent plays")
    max_steps: int = spec(MAX_STEPS, ge=3, le=10_000_000, about="step cap of one episode")
    risk_chunk_steps: int = spec(RISK_CHUNK, ge=1, le=1_000_000, about="steps per risk chunk (Γ)")
    decision_prior_right: float = spec(0.25, gt=0, lt=0.5, about="canonical agent: prior of plans moving right")
    keep_steps: Literal[KEEP_STEPS] = spec("all", about="agent rigs: store every step, or those of the first and "
                                                        "last episode only")
    mea: MeaFile | None = None

    @model_validator(mode="after")
    def _shape(self) -> "MazeFile":
        if self.maze_rows % 4 != 3:
            raise refusal("7, 11, 15, 19, ... (4k + 3: the middle row, where start and goal lie, is a row of cells)",
                          field="maze_rows", value=self.maze_rows)
        for name in ("maze_cols", "view_size"):
            if getattr(self, name) % 2 == 0:
                raise refusal("an odd number", field=name, value=getattr(self, name))
        return self


@dataclass(frozen=True)
class MeaSettings:
    trials: int
    isi_s: float
    decision_margin_ms: float
    sensory_groups: tuple[tuple[int, ...], ...]  # up, down, left, right
    motor_groups: tuple[tuple[int, ...], ...]
    decoder: str
    pulse: BiphasicPulse
    predictable_rate_hz: float
    predictable_duration_s: float
    unpredictable_rate_hz: float
    unpredictable_duration_s: float
    min_interval_s: float

    def to_dict(self) -> dict[str, Any]:
        p = self.pulse
        return {"trials": self.trials, "isi_s": self.isi_s, "decision_margin_ms": self.decision_margin_ms,
                "sensory_groups": {m: list(g) for m, g in zip(MOVES, self.sensory_groups)},
                "motor_groups": {m: list(g) for m, g in zip(MOVES, self.motor_groups)}, "decoder": self.decoder,
                "pulse": {"unit": p.unit, "phase1_amplitude": p.phase1_amplitude, "phase1_us": p.phase1_us,
                          "phase2_amplitude": p.phase2_amplitude, "phase2_us": p.phase2_us,
                          "interphase_us": p.interphase_us},
                "feedback": {"predictable_rate_hz": self.predictable_rate_hz,
                             "predictable_duration_s": self.predictable_duration_s,
                             "unpredictable_rate_hz": self.unpredictable_rate_hz,
                             "unpredictable_duration_s": self.unpredictable_duration_s,
                             "min_interval_s": self.min_interval_s}}


@dataclass(frozen=True)
class MazeConfig(ProtocolConfig):
    KIND: ClassVar[str] = KIND
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("source_file", "sessions")

    maze_rows: int
    maze_cols: int
    view_size: int
    episodes: int
    max_steps: int
    risk_chunk_steps: int
    decision_prior_right: float
    keep_steps: str
    mea: MeaSettings | None

    # the TaskProtocol reads these from its config
    @property
    def trials(self) -> int:
        return self._mea().trials

    @property
    def isi_s(self) -> float:
        return self._mea().isi_s

    @property
    def decision_margin_ms(self) -> float:
        return self._mea().decision_margin_ms

    def _mea(self) -> MeaSettings:
        if self.mea is None:
            raise ProtocolError(f"{self.source_file or self.name}: this maze has no `mea:` section, so it cannot "
                                "run on an MEA rig; run it with --rig canonical (an agent), or use a protocol with "
                                "an `mea:` section (e.g. cb22_maze_mea)")
        return self.mea

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["mea"] = None if self.mea is None else self.mea.to_dict()
        return out

    def with_overrides(self, **values: Any) -> "MazeConfig":
        """`--sessions N` asks for N episodes (an agent rig's; an MEA run lasts `mea.trials`)."""
        if "sessions" in values:
            values["episodes"] = values["sessions"]
        return super().with_overrides(**values)

    def make_protocol(self, seed: int, sample_rate_hz: float) -> "MazeOnMea":
        self._mea()
        return MazeOnMea(self, seed, sample_rate_hz)

    def agent_task(self, seed: int) -> "MazeAgentTask":
        return MazeAgentTask(self, seed)

    def describe(self, plan: Protocol | None = None) -> list[str]:
        lines = [f"{self.name}: {self.maze_rows} x {self.maze_cols} maze (seeded by the run), view {self.view_size} "
                 f"x {self.view_size}, {self.episodes} episodes of at most {self.max_steps} steps, risk chunks of "
                 f"{self.risk_chunk_steps} steps; canonical agent's decision_prior_right {self.decision_prior_right}"]
        if self.mea is not None:
            m = self.mea
            lines.append(f"on an MEA: {m.trials} trials, isi {m.isi_s} s, decoder {m.decoder}; sensory "
                         f"{[list(g) for g in m.sensory_groups]}, motor {[list(g) for g in m.motor_groups]}")
        return lines


def _mea_settings(f: MeaFile | None) -> MeaSettings | None:
    if f is None:
        return None
    fb = f.feedback
    return MeaSettings(f.trials, f.isi_s, f.decision_margin_ms, tuple(tuple(f.sensory_groups[m]) for m in MOVES),
                       tuple(tuple(f.motor_groups[m]) for m in MOVES), f.decoder, f.pulse.to_pulse(),
                       fb.predictable_rate_hz, fb.predictable_duration_s, fb.unpredictable_rate_hz,
                       fb.unpredictable_duration_s, fb.min_interval_s)


def load(doc: LocatedDoc, path: Path) -> MazeConfig:
    top = parse_file(MazeFile, doc)
    mea = _mea_settings(top.mea)
    pulse_us = mea.pulse.duration_us if mea else 0.0
    common = common_values(doc, top, path, mea.isi_s if mea else None, pulse_us)
    if mea is not None and 1.0 / mea.predictable_rate_hz < mea.min_interval_s:
        raise ProtocolError(f"{doc.where('mea')}: field 'mea.feedback.predictable_rate_hz' has value "
                            f"{mea.predictable_rate_hz}; allowed: at most 1 / min_interval_s "
                            f"({1.0 / mea.min_interval_s:g} Hz)")
    return MazeConfig(**common, sessions=top.episodes, maze_rows=top.maze_rows, maze_cols=top.maze_cols,
                      view_size=top.view_size, episodes=top.episodes, max_steps=top.max_steps,
                      risk_chunk_steps=top.risk_chunk_steps, decision_prior_right=top.decision_prior_right,
                      keep_steps=top.keep_steps, mea=mea)


# ---- the fields both kinds of player store per step ----------------------------------------------------------

MAZE_FIELDS = (TrialField("row", "<i2"), TrialField("col", "<i2"), TrialField("gamma", "<f4"),
               TrialField("reached", "u1"))


# ---- played by an agent rig ---------------------------------------------------------------------------------

class MazeAgentTask(AgentTask):
    """The maze for an agent rig: the agent plays whole episodes; every step is stored as a trial record."""

    def __init__(self, config: MazeConfig, seed: int):
        self.config = config
        self.seed = seed
        self.episodes = config.episodes
        self.keep_steps = config.keep_steps

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return TaskProtocol.COMMON_FIELDS + MAZE_FIELDS

    def environment(self) -> np.ndarray:
        return generate_maze(self.seed, self.config.maze_rows, self.config.maze_cols)

    def agent_parameters(self) -> dict[str, Any]:
        c = self.config
        return {"decision_prior_right": c.decision_prior_right, "max_steps": c.max_steps,
                "risk_chunk_steps": c.risk_chunk_steps, "view_size": c.view_size}

    def step_records(self, episode: int, played: PlayedEpisode, first_sample: int, dtype: np.dtype) -> np.ndarray:
        n = played.steps
        rec = np.zeros(n, dtype)
        steps = np.arange(1, n + 1)
        rec["session"], rec["trial"], rec["sample"] = episode, steps, first_sample + steps - 1
        rec["phase"], rec["episode"], rec["step"] = PHASE_STEP, episode, steps
        rec["action"] = played.actions[:n]
        rec["row"], rec["col"] = played.rows[:n], played.cols[:n]
        rec["gamma"] = np.nan
        rec["gamma"][played.gamma_steps - 1] = played.gammas
        rec["reached"][n - 1] = int(played.reached)
        return rec

    def episode_summary(self, episode: int, played: PlayedEpisode) -> dict[str, Any]:
        moves = np.bincount(played.actions[played.actions >= 0], minlength=4)[:4]
        return {"episode": episode, "steps": played.steps, "reached": bool(played.reached),
                "moves": [int(m) for m in moves], "mean_gamma": float(np.mean(played.gammas)) if len(played.gammas)
                else None}


# ---- played by a culture on an MEA ---------------------------------------------------------------------------

class MazeOnMea(TaskProtocol):
    """A step trial stimulates the sensory groups of the open moves; the motor groups' counts decide the move."""

    def __init__(self, config: MazeConfig, seed: int, sample_rate_hz: float):
        mea = config._mea()
        super().__init__(config, seed, sample_rate_hz, MotorDecoder(mea.motor_groups, seed, mea.decoder), mea.pulse)
        self.mea = mea
        self.env = MazeEnv(seed, config.maze_rows, config.maze_cols, config.view_size)
        self.risk = RiskChunks(chunk=config.risk_chunk_steps)
        self.feedback_electrodes = tuple(sorted({e for g in mea.sensory_groups for e in g}))

    def task_fields(self) -> tuple[TrialField, ...]:
        return MAZE_FIELDS

    def open_moves(self) -> tuple[int, ...]:
        here = (self.env.row, self.env.col)
        return tuple(m for m in range(4) if move_cell(self.env.maze, self.env.row, self.env.col, m) != here)

    def _step(self, offset_s: float) -> Stim:
        electrodes = tuple(e for m in self.open_moves() for e in self.mea.sensory_groups[m])
        return Stim(offset_s, electrodes, PHASE_STEP, {"row": self.env.row, "col": self.env.col, "gamma": math.nan,
                                                       "reached": 0})

    def first_batch(self) -> list[Stim]:
        self.env.reset()
        return [self._step(0.0)]

    def _feedback(self, good: bool) -> list[Stim]:
        m = self.mea
        fields = {"row": self.env.row, "col": self.env.col, "gamma": math.nan, "reached": 0}
        if good:
            return predictable_feedback(self.feedback_electrodes, m.predictable_rate_hz, m.predictable_duration_s,
                                        fields)
        return unpredictable_feedback(self.feedback_electrodes, m.unpredictable_rate_hz, m.unpredictable_duration_s,
                                      m.min_interval_s, self.seed, self.next_feedback_event(), fields)

    def after_step(self, record: TrialRecord, action: int) -> tuple[list[Stim], bool]:
        result = self.env.step(action)
        gamma = self.risk.add(result.risk)
        ended = result.reached or self.env.steps >= self.config.max_steps
        if ended and gamma is None:
            gamma = self.risk.close()
        record.fields["reached"] = int(result.reached)
        record.fields["gamma"] = math.nan if gamma is None else gamma
        batch: list[Stim] = []
        if ended:
            batch = self._feedback(result.reached)
        elif gamma is not None:
            batch = self._feedback(gamma < 0.5)
        if ended:
            self.env.reset()
        next_step_s = batch[-1].offset_s + self.mea.isi_s if batch else 0.0
        return batch + [self._step(next_step_s)], ended

    def feedback_interval(self) -> tuple[float, str] | None:
        m = self.mea
        return min((1.0 / m.predictable_rate_hz, "mea.feedback.predictable_rate_hz"),
                   (m.min_interval_s, "mea.feedback.min_interval_s"))

    def stimulated_sets(self) -> Iterable[tuple[int, ...]]:
        groups = self.mea.sensory_groups
        for mask in range(1, 16):
            yield tuple(sorted({e for m in range(4) if mask >> m & 1 for e in groups[m]}))
        yield self.feedback_electrodes
        for e in self.feedback_electrodes:
            yield (e,)

    def task_state(self) -> dict[str, Any]:
        return {"env": self.env.get_state(), "risk": self.risk.get_state()}

    def set_task_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state["env"])
        self.risk.set_state(state["risk"])
