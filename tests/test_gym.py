"""rigctl.gym (issue 17, item 5): a Gymnasium environment driving the real loop, store and safety layer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

import rigctl.gym  # noqa: E402  (registers rigctl/Culture-v0)
from gymnasium.utils.env_checker import check_env  # noqa: E402
from rigctl.errors import SafetyViolation  # noqa: E402
from rigctl.gym import ActionError, CultureEnv, EnvStateError, Pattern  # noqa: E402
from rigctl.protocol import load_protocol  # noqa: E402
from rigctl.store import read_jsonl, read_stims, read_trials  # noqa: E402
from rigctl.types import BiphasicPulse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(isi_s=0.05, trials_per_episode=5, first_trial_s=0.2)  # short trials: the checks, not the culture
PULSE = BiphasicPulse.symmetric(1000.0, 200.0, unit="mV")


def _bandit():
    spec = importlib.util.spec_from_file_location("gym_bandit", ROOT / "examples" / "gym_bandit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_env_passes_on_the_registered_simulated_rig(tmp_path, recwarn):
    env = gymnasium.make("rigctl/Culture-v0", run_dir=tmp_path, **FAST)
    assert env.unwrapped.rig_spec == "sim-events"
    check_env(env.unwrapped)  # seeded resets, step determinism, fresh arrays, close twice (spec.make)
    env.close()
    gym_warnings = [str(w.message) for w in recwarn if "gymnasium" in str(w.filename)]
    assert not gym_warnings, gym_warnings
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert runs and all(json.loads((p / "run.json").read_text())["status"] == "complete" for p in runs)


def test_make_imports_the_module_itself(tmp_path):
    code = ("import gymnasium; env = gymnasium.make('rigctl.gym:rigctl/Culture-v0', run_dir=%r, isi_s=0.05); "
            "obs, _ = env.reset(seed=1); obs, r, *_ = env.step(0); env.close(); print(obs.shape)" % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(64,)"


def _episode(env: CultureEnv, seed: int, actions: list[int]) -> np.ndarray:
    env.reset(seed=seed)
    return np.array([env.step(a)[0] for a in actions])


def test_same_seed_same_observations(tmp_path):
    actions = [int(a) for a in np.random.default_rng(3).integers(0, 5, 20)]
    a = CultureEnv(run_dir=tmp_path / "a", isi_s=0.05, trials_per_episode=20)
    b = CultureEnv(run_dir=tmp_path / "b", isi_s=0.05, trials_per_episode=20)
    try:
        first = _episode(a, 11, actions)
        assert first.sum() > 0  # the culture answers
        np.testing.assert_array_equal(first, _episode(b, 11, actions))  # another environment
        np.testing.assert_array_equal(first, _episode(a, 11, actions))  # the same one, reseeded: a new run
        assert not np.array_equal(first, _episode(b, 12, actions))  # another culture
    finally:
        a.close()
        b.close()
    assert len(a.run_paths) == 2 and a.run_paths[0] != a.run_paths[1]


def test_the_run_directory_holds_actions_counts_and_pulses(tmp_path):
    env = CultureEnv(run_dir=tmp_path, **FAST)
    env.reset(seed=2)
    actions, observations, samples = [3, 4, 0, 1, 2, 4, 4], [], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        observations.append(obs)
        samples.append(info["sample"])
        assert not terminated
        if truncated:
            assert info["trial"] == FAST["trials_per_episode"]
            env.reset()
    run = env.run_path
    env.close()
    env.close()  # idempotent
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["trials_done"] == len(actions)
    assert [f[0] for f in meta["trial_fields"]] == ["action", "episode"]
    trials = read_trials(run)
    assert trials["action"].tolist() == actions
    assert trials["episode"].tolist() == trials["session"].tolist() == [1] * 5 + [2] * 2
    assert trials["trial"].tolist() == [1, 2, 3, 4, 5, 1, 2]
    np.testing.assert_array_equal(trials["counts"], np.array(observations))
    assert trials["sample"].tolist() == samples
    stims = read_stims(run)
    expected = [(s, e) for s, a in zip(samples, actions) for e in env.patterns[a].electrodes]
    assert list(zip(stims["sample"].tolist(), stims["electrode"].tolist())) == expected
    events = [e["event"] for e in read_jsonl(run / "events.jsonl")]
    assert events[0] == "run_start" and events[-1] == "run_end" and "session_end" in events
    reloaded = load_protocol(run / "protocol.yaml")  # a kind: python protocol like any other
    assert reloaded.make_protocol(0, 25000.0).params.patterns == env.patterns


def test_default_reward_is_the_target_groups_selectivity(tmp_path):
    target = [0, 1, 2, 3, 8, 9, 10, 11]
    env = CultureEnv(run_dir=tmp_path, target_electrodes=target, **FAST)
    env.reset(seed=4)
    for a in range(env.action_space.n):
        obs, reward, *_ = env.step(a)
        others = np.delete(obs, target)
        assert reward == pytest.approx(obs[target].mean() - others.mean())
    env.close()
    custom = CultureEnv(run_dir=tmp_path / "c", reward_fn=lambda counts, action: 10.0 * action - counts.sum(), **FAST)
    custom.reset(seed=4)
    obs, reward, *_ = custom.step(2)
    assert reward == 20.0 - obs.sum()
    custom.close()


def test_unsafe_patterns_and_rates_are_refused_before_any_run(tmp_path):
    too_strong = Pattern((9,), BiphasicPulse.symmetric(5000.0, 200.0, unit="mV"))
    with pytest.raises(SafetyViolation, match=r"pattern 1 \(9\): .*amplitude"):
        CultureEnv(run_dir=tmp_path, patterns=[Pattern((1,), PULSE), too_strong])
    with pytest.raises(SafetyViolation, match="pattern 0"):
        CultureEnv(run_dir=tmp_path, patterns=[{"electrodes": [70], "pulse": PULSE}])  # no electrode 70
    with pytest.raises(SafetyViolation, match="max_rate_hz"):
        CultureEnv(run_dir=tmp_path, isi_s=0.01)  # 100 Hz on one electrode; the rig allows 50
    with pytest.raises(SafetyViolation, match=r"pattern 0 \(0\+1\).*allowed"):  # a Pulse Pal rig drives 0, 2, 4, 6
        CultureEnv(ROOT / "rigs" / "pulsepal_sim.yaml", run_dir=tmp_path, patterns=[Pattern((0, 1), PULSE)])
    assert not any(tmp_path.iterdir())  # nothing was stored


def test_invalid_actions_and_calls_raise_clear_errors(tmp_path):
    env = CultureEnv(run_dir=tmp_path, **FAST)
    with pytest.raises(EnvStateError, match="reset"):
        env.step(0)
    env.reset(seed=1)
    for bad in (5, -1, 1.5, True, "1", np.array([1])):
        with pytest.raises(ActionError, match=r"allowed: an integer 0 to 4 \(0: 18, "):
            env.step(bad)
    env.step(np.int64(1))  # numpy integers are actions
    for _ in range(4):
        *_, truncated, _ = env.step(0)
    assert truncated
    with pytest.raises(EnvStateError, match="truncated"):
        env.step(0)
    run = env.run_path
    env.close()
    with pytest.raises(EnvStateError, match="closed"):
        env.step(0)
    assert read_trials(run)["action"].tolist() == [1, 0, 0, 0, 0]  # the refused actions sent nothing


def test_a_rig_file_with_emulated_hardware(tmp_path):
    env = CultureEnv(ROOT / "rigs" / "pulsepal_sim.yaml", run_dir=tmp_path, **FAST)
    assert {e for p in env.patterns for e in p.electrodes} <= {0, 2, 4, 6}
    env.reset(seed=3)
    actions = list(range(env.action_space.n))
    for a in actions:
        env.step(a)
    run = env.run_path
    env.close()
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert read_trials(run)["action"].tolist() == actions
    assert sorted(set(read_stims(run)["electrode"].tolist())) == sorted({e for p in env.patterns for e in p.electrodes})


def test_epsilon_greedy_learns_a_better_pattern_than_chance(tmp_path):
    """The worked example of docs/gym.md: after 300 epsilon-greedy steps, the learned pattern evokes more on
    the target than a random policy does, both measured interleaved afterwards on the same culture (an env
    whose actions did not reach the culture, or whose counts were not the trial's, would fail this)."""
    bandit = _bandit()
    target = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
    env = CultureEnv(run_dir=tmp_path, isi_s=0.1, response_window_ms=(1.0, 8.0), trials_per_episode=50,
                     reward_fn=bandit.target_count(target))
    env.reset(seed=7)
    value, pulls = bandit.learn(env, steps=300, epsilon=0.1, seed=0)
    best = int(np.argmax(value))
    assert pulls[best] > 150  # it exploited what it learned
    rng = np.random.default_rng(1)
    greedy, chance = [], []
    for k in range(100):
        random_turn = k % 2 == 1
        action = int(rng.integers(env.action_space.n)) if random_turn else best
        _, reward, _, truncated, _ = env.step(action)
        (chance if random_turn else greedy).append(reward)
        if truncated:
            env.reset()
    env.close()
    se = np.sqrt(np.var(greedy) / len(greedy) + np.var(chance) / len(chance))
    assert np.mean(greedy) > np.mean(chance) + 2 * se, (np.mean(greedy), np.mean(chance), se, value)
