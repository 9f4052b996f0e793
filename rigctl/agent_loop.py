"""The loop of an agent rig: episode after episode, stored step by step, checkpointed at episode ends.

The counterpart of `rigctl.loop.ProtocolRunner` for rigs whose culture is a model that plays whole episodes
(rigctl.tasks.agent). The store is the same: run.json, protocol.yaml, trials.bin (one record per kept step,
with the task's fields), events.jsonl (`episode_end` per episode), checkpoint. An episode is the unit of work:
a kill loses at most the episode being played, which the resumed run plays again identically (the agent's
randomness is a function of seed, episode and step).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rigctl.store import SessionStore
from rigctl.tasks.agent import AgentTask, EpisodeAgent

PROGRESS_EVERY_EPISODES = 10


class AgentRunner:
    """Plays `task.episodes` episodes with `agent`, storing each as it ends."""

    def __init__(self, task: AgentTask, agent: EpisodeAgent, store: SessionStore, progress: bool = True):
        self.task = task
        self.agent = agent
        self.store = store
        self.progress = progress
        self.episodes_done = 0
        self.next_sample = 0  # steps played so far (the sample clock of an agent run: one sample a step)
        self.reached = 0

    @property
    def n_done(self) -> int:
        return self.episodes_done

    def get_state(self) -> dict[str, Any]:
        return {"episodes_done": self.episodes_done, "next_sample": self.next_sample, "reached": self.reached,
                "agent": self.agent.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.episodes_done = int(state["episodes_done"])
        self.next_sample = int(state["next_sample"])
        self.reached = int(state["reached"])
        self.agent.set_state(state["agent"])

    def run(self) -> float:
        """Play the remaining episodes; returns the wall time in seconds."""
        environment = self.task.environment()
        dtype = self.store.info.trial_dtype
        wall0 = time.monotonic()
        while self.episodes_done < self.task.episodes:
            episode = self.episodes_done + 1
            played = self.agent.play(environment)
            if self.task.keeps(episode):
                self.store.append_trial_array(self.task.step_records(episode, played, self.next_sample, dtype))
            self.store.append_event("episode_end", **self.task.episode_summary(episode, played))
            self.next_sample += played.steps
            self.reached += int(played.reached)
            self.episodes_done = episode
            self.store.write_checkpoint(self.get_state())
            self._report(episode, wall0)
        return time.monotonic() - wall0

    def _report(self, episode: int, wall0: float) -> None:
        if self.progress and (episode % PROGRESS_EVERY_EPISODES == 0 or episode == self.task.episodes):
            print(f"episode {episode}/{self.task.episodes}: goal reached in {self.reached} so far, "
                  f"{self.next_sample} steps, {time.monotonic() - wall0:.1f} s", file=sys.stderr, flush=True)
