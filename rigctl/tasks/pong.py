"""Pong as in DishBrain (Kagan et al., "In vitro neurons learn and exhibit sentience when embodied in a simulated
game-world", Neuron 110:3952, 2022): the game, its sensory code, and the per-rally analysis of a stored run.

Pure Python and numpy (no numba, no rig): the protocol (`rigctl.protocols.pong`) calls `PongGame.tick` once per
step trial, and `pong_episode_rows` / `pong_summary` read a run's stored trials.

Geometry (court units, cu): the court is `width` x `height`; the paddle slides along the line x = 0 (its centre
`paddle_y`, clamped so the paddle stays inside); the ball is a point bouncing off the top and bottom walls and the
far wall x = width. When the ball reaches x <= 0 it is a hit if it lies within the paddle (|y - paddle_y| <=
paddle_height / 2; it bounces back) and a miss otherwise (the rally ends; the next serve comes from the far wall).
y is measured upward from the bottom wall; action 0 moves the paddle up (+y), action 1 down.

Sensory code (DishBrain's): a *place* code, the ball's height chooses which of the sensory electrodes is
stimulated (band i of `n` equal bands from the bottom -> the i-th electrode), and a *rate* code, the ball's
distance from the paddle line chooses how often: `rate_far_hz` at the far wall rising linearly to
`rate_near_hz` at the paddle. A tick carries at most one pulse, so the rate is expressed by which ticks
stimulate: a phase accumulator adds rate_hz x tick_s per tick and a tick stimulates when it reaches 1
(exact on average, deterministic, and every serve's first tick stimulates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

OUTCOME_NONE, OUTCOME_HIT, OUTCOME_MISS = 0, 1, 2
UP, DOWN = 0, 1
STREAM_SERVE = 201  # seeds a serve: numpy.random.default_rng([seed, STREAM_SERVE, rally])


@dataclass(frozen=True)
class Court:
    """The game's fixed parameters (lengths in court units, speeds per tick)."""

    width: float
    height: float
    paddle_height: float
    paddle_step: float  # paddle move per tick
    ball_speed: float  # |vx| per tick; a serve's |vy| is drawn up to this


@dataclass
class PongGame:
    """The game's state; `tick(action)` advances it by one tick and says what happened.

    Order within a tick: the paddle moves (the action decided from the tick's response), then the ball moves
    and bounces, then the paddle line is checked. Everything is a pure function of the state, the action and
    (for serves) the seed and rally number, so a state saved with `to_dict` continues identically."""

    court: Court
    seed: int
    ball_x: float = 0.0
    ball_y: float = 0.0
    vx: float = 0.0
    vy: float = 0.0
    paddle_y: float = 0.0
    rally: int = 0  # serves so far (the current rally's number, 1-based, once served)

    @staticmethod
    def new(court: Court, seed: int) -> "PongGame":
        game = PongGame(court, seed, paddle_y=court.height / 2.0)
        game.serve()
        return game

    def serve(self) -> None:
        """The ball from the far wall at a random height, towards the paddle at a random angle (seeded)."""
        self.rally += 1
        rng = np.random.default_rng([self.seed, STREAM_SERVE, self.rally])
        c = self.court
        self.ball_x = c.width
        self.ball_y = float(rng.uniform(0.0, c.height))
        self.vx = -c.ball_speed
        self.vy = float(rng.uniform(-1.0, 1.0)) * c.ball_speed

    def tick(self, action: int) -> int:
        """Move the paddle (UP or DOWN), then the ball; return OUTCOME_NONE, OUTCOME_HIT or OUTCOME_MISS.
        After a miss the ball stays where it crossed the paddle line until `serve` is called."""
        c = self.court
        half = c.paddle_height / 2.0
        step = c.paddle_step if action == UP else -c.paddle_step
        self.paddle_y = min(max(self.paddle_y + step, half), c.height - half)
        self.ball_x += self.vx
        self.ball_y += self.vy
        self.ball_y, flip = _reflect(self.ball_y, c.height)
        if flip:
            self.vy = -self.vy
        if self.ball_x > c.width:
            self.ball_x = 2.0 * c.width - self.ball_x
            self.vx = -self.vx
        if self.ball_x > 0.0:
            return OUTCOME_NONE
        if abs(self.ball_y - self.paddle_y) <= half:
            self.ball_x = -self.ball_x
            self.vx = -self.vx
            return OUTCOME_HIT
        return OUTCOME_MISS

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "court"}

    @staticmethod
    def from_dict(court: Court, state: dict[str, Any]) -> "PongGame":
        return PongGame(court, int(state["seed"]), float(state["ball_x"]), float(state["ball_y"]),
                        float(state["vx"]), float(state["vy"]), float(state["paddle_y"]), int(state["rally"]))


def _reflect(y: float, height: float) -> tuple[float, bool]:
    """`y` folded back into [0, height] by mirror reflections; whether the direction flipped (odd count)."""
    flips = 0
    while y < 0.0 or y > height:
        y = -y if y < 0.0 else 2.0 * height - y
        flips += 1
    return y, flips % 2 == 1


def place_index(ball_y: float, height: float, n_electrodes: int) -> int:
    """Place code: which of `n_electrodes` equal bands (from the bottom) holds the ball's height."""
    return min(n_electrodes - 1, max(0, int(ball_y / height * n_electrodes)))


def rate_hz(ball_x: float, width: float, rate_near_hz: float, rate_far_hz: float) -> float:
    """Rate code: `rate_near_hz` with the ball on the paddle line, `rate_far_hz` at the far wall, linear between."""
    d = min(max(ball_x / width, 0.0), 1.0)
    return rate_near_hz + (rate_far_hz - rate_near_hz) * d


def rate_tick(phase: float, rate: float, tick_s: float) -> tuple[bool, float]:
    """One tick of the rate code's phase accumulator: (stimulate this tick?, the new phase)."""
    phase += rate * tick_s
    if phase >= 1.0:
        return True, phase - 1.0
    return False, phase


# ---- a stored run ------------------------------------------------------------------------------------------
def pong_episode_rows(trials: np.ndarray, sample_rate_hz: float = 25_000.0) -> list[dict[str, Any]]:
    """Per rally (episode) of a stored Pong run (`rigctl.store.read_trials`): episode, hits, ace (1 if the rally
    was lost with no hit since the serve), start_s and end_s (its serve tick and its miss tick, in task time:
    seconds since the run's first trial). Only rallies ended by a miss are listed (a run that stops mid-rally
    leaves its last rally out: its hit count is not final). `sample_rate_hz`: run.json's sample_rate_hz."""
    if len(trials) == 0:
        return []
    t0 = int(trials["sample"][0])
    steps = trials[trials["phase"] == 0]
    rows = []
    for episode in np.unique(steps["episode"]):
        own = steps[steps["episode"] == episode]
        outcome = own["outcome"]
        if not (outcome == OUTCOME_MISS).any():
            continue
        hits = int(np.sum(outcome == OUTCOME_HIT))
        end = int(own["sample"][np.flatnonzero(outcome == OUTCOME_MISS)[0]])
        rows.append({"episode": int(episode), "hits": hits, "ace": int(hits == 0),
                     "start_s": round((int(own["sample"][0]) - t0) / sample_rate_hz, 6),
                     "end_s": round((end - t0) / sample_rate_hz, 6)})
    return rows


def pong_summary(trials: np.ndarray, first_minutes: float = 5.0, sample_rate_hz: float = 25_000.0
                 ) -> dict[str, Any]:
    """Mean hits per rally and ace fraction for the rallies that end within the first `first_minutes` of task
    time, and for the rest (DishBrain compares the first 5 minutes with the last 15). None where no rally."""
    rows = pong_episode_rows(trials, sample_rate_hz)
    out: dict[str, Any] = {"first_minutes": first_minutes}
    for part in ("first", "rest"):
        early = part == "first"
        own = [r for r in rows if (r["end_s"] < first_minutes * 60.0) == early]
        out[f"rallies_{part}"] = len(own)
        out[f"hits_per_rally_{part}"] = round(float(np.mean([r["hits"] for r in own])), 4) if own else None
        out[f"ace_fraction_{part}"] = round(float(np.mean([r["ace"] for r in own])), 4) if own else None
    return out
