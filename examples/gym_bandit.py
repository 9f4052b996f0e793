"""Epsilon-greedy over the stimulation patterns of `rigctl/Culture-v0`: which pattern drives a target group most?

    python examples/gym_bandit.py            # the simulated culture, 300 steps, a few seconds

Each step stimulates one pattern and returns the evoked spike counts; the agent keeps a running mean reward
per pattern, explores with probability `epsilon` and otherwise picks the best so far. docs/gym.md walks
through it; tests/test_gym.py runs `learn` and checks the learned pattern beats a random policy.
"""

from __future__ import annotations

import gymnasium
import numpy as np


def learn(env: gymnasium.Env, steps: int, epsilon: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Epsilon-greedy for `steps` steps (the env already reset); returns (mean reward, pulls) per action."""
    rng = np.random.default_rng(seed)
    n = env.action_space.n
    value, pulls = np.zeros(n), np.zeros(n, dtype=int)
    for _ in range(steps):
        untried = np.flatnonzero(pulls == 0)
        if len(untried):
            action = int(untried[0])
        elif rng.random() < epsilon:
            action = int(rng.integers(n))
        else:
            action = int(np.argmax(value))
        _, reward, terminated, truncated, _ = env.step(action)
        pulls[action] += 1
        value[action] += (reward - value[action]) / pulls[action]
        if terminated or truncated:
            env.reset()
    return value, pulls


def target_count(target: list[int]):
    """A reward: the evoked spikes counted on the `target` electrodes."""
    def reward(counts: np.ndarray, action: int) -> float:
        return float(counts[target].sum())
    return reward


if __name__ == "__main__":
    import rigctl.gym  # noqa: F401  (registers rigctl/Culture-v0)

    target = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]  # the top-left quadrant of the 8x8 array
    # the first milliseconds after a pulse are the neurons it activates directly, near its electrodes (the
    # network burst that follows, 10-30 ms, spreads over the whole array and says less about the pattern)
    env = gymnasium.make("rigctl/Culture-v0", isi_s=0.1, response_window_ms=(1.0, 8.0), trials_per_episode=50,
                         reward_fn=target_count(target))
    env.reset(seed=7)
    value, pulls = learn(env, steps=300)
    patterns = env.unwrapped.patterns
    for i, p in enumerate(patterns):
        print(f"pattern {i} (electrodes {p.name}): mean reward {value[i]:.1f} over {pulls[i]} trials")
    print(f"learned: pattern {int(np.argmax(value))}; run directory {env.unwrapped.run_path}")
    env.close()
