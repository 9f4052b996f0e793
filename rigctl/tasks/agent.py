"""Agent rigs: a model that plays a task's episodes in its own hot loop instead of a culture on an MEA.

A step of an MEA task costs a stimulation and a response window (tens of ms of rig time and a pass of the loop);
the CB22 maze asks for about a million steps per agent. An agent rig therefore plays a whole *episode* per call
(`EpisodeAgent.play`, e.g. the canonical network's numba kernel), and `rigctl.agent_loop.AgentRunner` stores it
step by step in the same run directory format as a culture's run (one trial record per step, with the task's
declared fields), checkpointing agent and task at episode ends. The maze, its view and its risk are the same code
(`rigctl.tasks.maze`) whoever plays.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigctl.engine import TrialField


@dataclass(frozen=True)
class PlayedEpisode:
    """One episode as an agent played it. Arrays have one entry per step t = 1..steps."""

    steps: int
    reached: bool
    rows: np.ndarray  # position observed at each step
    cols: np.ndarray
    actions: np.ndarray  # move decided at each step (-1: none)
    gammas: np.ndarray  # Γ of each risk chunk, in order
    gamma_steps: np.ndarray  # the step at which each chunk closed


class EpisodeAgent(ABC):
    """What an agent rig provides: play one episode of the task's environment, learning from it; its whole state
    round-trips through get_state/set_state (JSON-able scalars, lists, dicts and numpy arrays)."""

    description: str = ""

    @abstractmethod
    def play(self, environment: Any) -> PlayedEpisode: ...

    @abstractmethod
    def get_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def set_state(self, state: dict[str, Any]) -> None: ...


class AgentTask(ABC):
    """The task side of an agent run: its environment, its episodes and how a played episode is stored."""

    episodes: int
    keep_steps: str  # all: every step of every episode; ends: the steps of the first and the last episode

    @property
    @abstractmethod
    def trial_fields(self) -> tuple[TrialField, ...]: ...

    @abstractmethod
    def environment(self) -> Any:
        """What the agent plays in (the maze array)."""

    @abstractmethod
    def agent_parameters(self) -> dict[str, Any]:
        """What the agent rig needs from the protocol to make its agent (e.g. the decision prior)."""

    @abstractmethod
    def step_records(self, episode: int, played: PlayedEpisode, first_sample: int, dtype: np.dtype) -> np.ndarray:
        """The episode's steps as trial records (session = episode, trial = step, sample = steps so far)."""

    @abstractmethod
    def episode_summary(self, episode: int, played: PlayedEpisode) -> dict[str, Any]:
        """The episode's line in events.jsonl (`episode_end`): what `rigctl export episodes` reads."""

    def keeps(self, episode: int) -> bool:
        return self.keep_steps == "all" or episode in (1, self.episodes)
