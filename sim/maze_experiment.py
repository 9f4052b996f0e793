"""The CB22 maze experiment: one agent's life of episodes in its own maze, the paper's reverse engineering of
the decision prior, and the learning-curve summary (used by bench/bench_maze.py and the tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.sim.canonical import CanonicalAgent, CanonicalConfig
from rigctl.tasks.episodes import EpisodeRow
from rigctl.tasks.maze import N_EPISODES, generate_maze


@dataclass(frozen=True)
class AgentRun:
    """One agent's episodes: maze and agent both seeded with `seed`."""

    seed: int
    steps: np.ndarray  # int [episodes], the authors' `time`
    reached: np.ndarray  # bool [episodes]
    first_decision_counts: np.ndarray  # int [Nd], decisions of episode 1 at steps 3..end

    def episode_rows(self, **extra: object) -> list[EpisodeRow]:
        return [EpisodeRow(i + 1, int(s), bool(r), {"seed": self.seed, **extra})
                for i, (s, r) in enumerate(zip(self.steps, self.reached))]


def run_agent(seed: int, config: CanonicalConfig = CanonicalConfig(), n_episodes: int = N_EPISODES,
              decision_prior_on: np.ndarray | None = None, maze_shape: tuple[int, int] | None = None) -> AgentRun:
    """A fresh agent plays `n_episodes` in the maze of `seed` (default 19 x 99), learning after each."""
    maze = generate_maze(seed) if maze_shape is None else generate_maze(seed, *maze_shape)
    agent = CanonicalAgent(config, seed, decision_prior_on)
    steps, reached, first = [], [], None
    for _ in range(n_episodes):
        result = agent.run_episode(maze)
        steps.append(result.steps)
        reached.append(result.reached)
        if first is None:
            first = result.decision_counts
    return AgentRun(seed, np.array(steps), np.array(reached), first)


def estimate_decision_prior(first_episode_counts: list[np.ndarray], max_steps: int) -> np.ndarray:
    """Reverse-engineered E: each agent's decision frequencies in its first episode, averaged over agents.

    As the authors (maze.m, `Eest`): counts of steps 3..end divided by max_steps − 2 whatever the episode's
    length, then the mean over agents, used unnormalised (ln E only shifts by a constant if it sums below 1).
    """
    return np.mean([np.asarray(c, dtype=np.float64) / (max_steps - 2) for c in first_episode_counts], axis=0)


def prior_mass_by_first_move(decision_prior_on: np.ndarray) -> np.ndarray:
    """[up, down, left, right] share of E (normalised)."""
    by_move = np.asarray(decision_prior_on).reshape(4, -1).sum(axis=1)
    return by_move / by_move.sum()


@dataclass(frozen=True)
class LearningSummary:
    """Success rate and median steps over an early and a late block of episodes, pooled over agents."""

    n_agents: int
    early: tuple[int, int]  # 1-based inclusive episode range
    late: tuple[int, int]
    success_early: float
    success_late: float
    median_steps_early: float
    median_steps_late: float


def summarise(runs: list[AgentRun], block: int = 10) -> LearningSummary:
    """The paper's comparison: episodes 1..block against the last `block` episodes."""
    steps = np.stack([r.steps for r in runs])
    reached = np.stack([r.reached for r in runs])
    n = steps.shape[1]
    block = min(block, n)
    early, late = slice(0, block), slice(n - block, n)
    return LearningSummary(len(runs), (1, block), (n - block + 1, n),
                           float(reached[:, early].mean()), float(reached[:, late].mean()),
                           float(np.median(steps[:, early])), float(np.median(steps[:, late])))

