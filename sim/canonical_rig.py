"""`--rig canonical`: the CB22 canonical neural network as an agent rig (rigctl.tasks.agent).

The rig makes one `CanonicalAgent` per run from the protocol's parameters (decision prior, step cap, risk chunk,
view) and the run's seed; it plays whole episodes in the numba kernel and hands each back as a `PlayedEpisode`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from rigctl.sim.canonical import CanonicalAgent, CanonicalConfig
from rigctl.tasks.agent import EpisodeAgent, PlayedEpisode

DESCRIPTION = ("CB22 canonical neural network (Isomura, Shimazaki & Friston, Commun. Biol. 5:55, 2022): "
               "121 middle units, 256 decision units, risk-modulated plasticity of V")


class CanonicalMazeAgent(EpisodeAgent):
    description = DESCRIPTION

    def __init__(self, seed: int, decision_prior_right: float, max_steps: int, risk_chunk_steps: int,
                 view_size: int):
        config = replace(CanonicalConfig(), decision_prior_right=decision_prior_right, max_steps=max_steps,
                         risk_chunk=risk_chunk_steps, view_size=view_size)
        self.agent = CanonicalAgent(config, seed)

    @property
    def config(self) -> dict[str, Any]:
        return asdict(self.agent.config)

    def play(self, environment: np.ndarray) -> PlayedEpisode:
        result = self.agent.run_episode(environment, trace=True)
        n_chunks = len(result.gammas)
        chunk = self.agent.config.risk_chunk
        # chunk c (1-based) closes at step chunk * c + 1, the last one at the episode's last step
        gamma_steps = np.minimum(chunk * np.arange(1, n_chunks + 1) + 1, result.steps)
        trace = result.trace
        return PlayedEpisode(result.steps, result.reached, trace[:, 0].copy(), trace[:, 1].copy(),
                             trace[:, 2].copy(), result.gammas, gamma_steps)

    def get_state(self) -> dict[str, Any]:
        return self.agent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.agent = CanonicalAgent.from_state(state)


def make_canonical_agent(seed: int, parameters: dict[str, Any]) -> CanonicalMazeAgent:
    return CanonicalMazeAgent(seed, **parameters)
