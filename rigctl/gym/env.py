"""`CultureEnv`: a Gymnasium environment over any rig, one step = one stimulation trial.

Why it is built this way: a step must be what `rigctl run` would have done with the same command, so the
environment is only a driver of the real loop. Its `GymProtocol` is a closed-loop protocol; the run is
opened by `rigctl.session.open_run` (the plan check, run.json, the store, the `ProtocolRunner`), and `step`
submits the action, then has the runner process chunks (`ProtocolRunner.iterate`) until that trial's
response window is complete and its record stored. No thread, no wait on the wall clock: the loop is
driven from the caller's thread, one chunk at a time.

A seeded `reset(seed=s)` starts a new run (the rig opened with seed s: a new simulated culture, so the
same seed gives the same observations); `reset()` without a seed starts the next episode of the current
run (the culture goes on). Each run has its own directory under `run_dir`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from rigctl.engine import ProtocolConfig
from rigctl.errors import RigctlError, SafetyViolation
from rigctl.gym.protocol import CLASS_REF, GymParams, GymProtocol, Pattern
from rigctl.layout import ElectrodeLayout
from rigctl.protocols.python_class import load as load_python_protocol
from rigctl.rigs import Rig, open_rig
from rigctl.safety import GuardedStimulator, SafetyLimits
from rigctl.session import OpenRun, RunOptions, end_run, open_run
from rigctl.types import BiphasicPulse, TrialRecord
from rigctl.yamlcheck import LocatedDoc

RewardFn = Callable[[np.ndarray, int], float]

# default pulses: a voltage pulse (the simulated rig, voltage stimulators), else a current pulse (4 nC a phase)
DEFAULT_PULSES = (BiphasicPulse.symmetric(1000.0, 200.0, unit="mV"), BiphasicPulse.symmetric(20.0, 200.0, unit="uA"))
STALL_S = 10.0  # signal past a trial's window without its record: the loop is broken, not slow


class ActionError(RigctlError, ValueError):
    """An action outside the action space; nothing was sent."""


class EnvStateError(RigctlError, RuntimeError):
    """A call the environment's state does not allow (step before reset, past an episode's end, after close)."""


class TargetReward:
    """The default reward: mean evoked count per electrode on the target group minus that on the others.

    It rewards selective activation of the target (a pattern that drives the whole array scores low).
    With every electrode in the target it is the target's mean count."""

    def __init__(self, target: Sequence[int], n_electrodes: int):
        self.target = tuple(int(e) for e in target)
        self.mask = np.zeros(n_electrodes, dtype=bool)
        self.mask[list(self.target)] = True

    def __call__(self, counts: np.ndarray, action: int) -> float:  # noqa: ARG002 (the action does not matter)
        on = float(counts[self.mask].mean())
        return on - float(counts[~self.mask].mean()) if (~self.mask).any() else on

    def __repr__(self) -> str:
        return f"TargetReward(target={list(self.target)})"


def default_patterns(layout: ElectrodeLayout, limits: SafetyLimits, guard: GuardedStimulator,
                     pulse: BiphasicPulse | None = None) -> tuple[Pattern, ...]:
    """Up to five patterns: the stimulable electrode nearest each quadrant's centre of the array, alone, then
    the group of them all. The pulse: `pulse`, else the first of DEFAULT_PULSES the rig accepts; patterns the
    rig cannot deliver are left out (a Pulse Pal drives only its wired groups)."""
    pos = np.asarray(layout.positions_um, dtype=float)
    candidates = sorted(limits.allowed_electrodes) if limits.allowed_electrodes else list(range(len(pos)))
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    singles: list[int] = []
    for fx, fy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
        centre = lo + (hi - lo) * np.array([fx, fy])
        d = np.hypot(*(pos[candidates] - centre).T)
        for i in np.argsort(d, kind="stable"):
            if candidates[i] not in singles:
                singles.append(candidates[i])
                break
    groups = [(e,) for e in singles] + ([tuple(singles)] if len(singles) > 1 else [])
    pulses = (pulse,) if pulse is not None else DEFAULT_PULSES
    for p in pulses:
        chosen = [Pattern(g, p) for g in groups if _refusal(guard, Pattern(g, p)) is None]
        if chosen:
            return tuple(chosen)
    problem = _refusal(guard, Pattern(groups[0], pulses[-1]))
    raise SafetyViolation(f"no default stimulation pattern is allowed on this rig ({problem}); pass patterns= "
                          "that its limits allow")


def default_target(layout: ElectrodeLayout, pattern: Pattern) -> tuple[int, ...]:
    """The electrodes in the same quadrant of the array as `pattern`'s first electrode."""
    pos = np.asarray(layout.positions_um, dtype=float)
    mid = (pos.min(axis=0) + pos.max(axis=0)) / 2
    side = pos >= mid
    return tuple(int(e) for e in np.flatnonzero((side == side[pattern.electrodes[0]]).all(axis=1)))


def _refusal(guard: GuardedStimulator, pattern: Pattern) -> str | None:
    """Why the rig refuses `pattern` (its limits or its device), or None: checked like `candidate_commands`."""
    try:
        guard.check_plan([pattern.command(0)])
    except SafetyViolation as exc:
        return str(exc)
    return None


class CultureEnv(gymnasium.Env):
    """Stimulate a culture on any rig (`sim`, `sim-events`, a rig file) and observe its evoked spikes.

    observation: evoked spike counts per electrode in the last trial's response window (int32, zeros after
    reset); action: index of a stimulation pattern; reward: `reward_fn(counts, action)`, by default
    `TargetReward(target_electrodes)`; an episode is `trials_per_episode` steps (then truncated; never
    terminated). Every pulse passes the rig's safety limits and is stored with its trial in the run directory.
    """

    metadata = {"render_modes": []}

    def __init__(self, rig: str | Path = "sim-events", *, patterns: Sequence[Pattern | dict] | None = None,
                 pulse: BiphasicPulse | None = None, target_electrodes: Sequence[int] | None = None,
                 reward_fn: RewardFn | None = None, trials_per_episode: int = 50, isi_s: float = 0.5,
                 response_window_ms: tuple[float, float] = (10.0, 30.0), first_trial_s: float = 1.0,
                 decision_margin_ms: float = 10.0, max_episodes: int = 100000, chunk_ms: float | None = None,
                 realtime: bool = False, drug: str = "none", run_dir: str | Path | None = None,
                 name: str = "culture_gym", rig_factory: Callable[..., Rig] = open_rig):
        self.rig_spec = str(rig)
        self.chunk_ms = chunk_ms
        self.realtime = realtime
        self._rig_factory = rig_factory
        self._run: OpenRun | None = None
        self._episode = 0
        self._step = 0
        self._closed = False
        self.run_paths: list[Path] = []
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="rigctl-gym-"))
        probe = rig_factory(self.rig_spec, seed=0, drug=drug, realtime=False, chunk_ms=chunk_ms)
        try:  # the rig's layout and limits decide the spaces; every pattern is checked before any run
            amp = probe.amplifier
            self.n_electrodes = amp.n_channels
            self.layout = amp.layout
            self.sample_rate_hz = amp.sample_rate_hz
            guard = GuardedStimulator(probe.stimulator, probe.limits, amp.sample_rate_hz)
            rig_name = probe.description.get("path") or probe.description.get("kind", self.rig_spec)
            if patterns is None:
                chosen = default_patterns(self.layout, probe.limits, guard, pulse)
            else:
                chosen = tuple(_pattern(p, i) for i, p in enumerate(patterns))
                for i, p in enumerate(chosen):
                    problem = _refusal(guard, p)
                    if problem:
                        raise SafetyViolation(f"pattern {i} ({p.name}): {problem} (limits of {rig_name})")
            isi_samples = int(round(isi_s * amp.sample_rate_hz))
            if isi_samples < guard.min_interval:
                raise SafetyViolation(f"isi_s {isi_s}: a pattern repeated every trial would exceed the rig's "
                                      f"max_rate_hz {probe.limits.max_rate_hz} per electrode; allowed: isi_s >= "
                                      f"{guard.min_interval / amp.sample_rate_hz:g} (limits of {rig_name})")
        finally:
            probe.close()
        self.patterns: tuple[Pattern, ...] = chosen
        self.target_electrodes = (default_target(self.layout, chosen[0]) if target_electrodes is None
                                  else _electrodes(target_electrodes, self.n_electrodes))
        self.reward_fn: RewardFn = reward_fn or TargetReward(self.target_electrodes, self.n_electrodes)
        self.trials_per_episode = trials_per_episode
        self.max_episodes = max_episodes
        self._config = protocol_config(name, GymParams(chosen, trials_per_episode, isi_s, decision_margin_ms),
                                       response_window_ms=response_window_ms, first_trial_s=first_trial_s,
                                       max_episodes=max_episodes, drug=drug)
        self._stall_samples = int(round((first_trial_s + isi_s + decision_margin_ms * 1e-3
                                         + response_window_ms[1] * 1e-3 + STALL_S) * self.sample_rate_hz))
        self.action_space = spaces.Discrete(len(chosen))
        self.observation_space = spaces.Box(0, np.iinfo(np.int32).max, (self.n_electrodes,), np.int32)

    # ---- gymnasium API --------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """A seed starts a new run (the rig opened with it); no seed starts the run's next episode."""
        if options:
            raise ValueError(f"reset options {sorted(options)}: CultureEnv takes none")
        if self._closed:
            raise EnvStateError("the environment is closed")
        super().reset(seed=seed)
        if seed is not None or self._run is None:
            run_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**63 - 1))
            self._close_run()
            self._open_run(run_seed)
        elif self._step:  # the current episode had steps: the next one begins
            if self._step < self.trials_per_episode:
                self._run.store.append_event("episode_cut", episode=self._episode, steps=self._step,
                                             sample=self._run.runner.clock)
            if self._episode >= self.max_episodes:
                raise EnvStateError(f"episode {self._episode + 1}: allowed: at most max_episodes "
                                    f"({self.max_episodes}) per run; reset with a seed to start a new run")
            self._episode += 1
        self._step = 0
        return np.zeros(self.n_electrodes, dtype=np.int32), {"episode": self._episode,
                                                             "run_seed": self._run.plan.config.seed}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One trial: the pattern `action` at the next allowed time, then its response window's counts."""
        a = self._action(action)
        if self._run is None:
            raise EnvStateError("the environment is closed" if self._closed else "call reset() before step()")
        if self._step >= self.trials_per_episode:
            raise EnvStateError(f"episode {self._episode} ended after {self.trials_per_episode} steps (truncated); "
                                "call reset()")
        self._step += 1
        run = self._run
        run.plan.submit(a, self._episode, self._step, self._step == self.trials_per_episode)
        try:
            record = self._await_record(run)
        except BaseException as exc:  # the loop put the stimulator in its safe state and stored the fault
            self._close_run(exc)
            raise
        counts = np.asarray(record.counts, dtype=np.int32).copy()
        reward = self.reward_fn(counts.copy(), a)
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):
            raise ValueError(f"reward_fn returned {reward!r} for action {a}; allowed: a finite number")
        info = {"episode": self._episode, "trial": self._step, "sample": record.sample,
                "pattern": self.patterns[a].name}
        return counts, reward, False, self._step == self.trials_per_episode, info

    def close(self) -> None:
        """Stimulator to its safe state, run directory finalised (complete), rig closed. Idempotent."""
        self._closed = True
        self._close_run()

    # ---- what a user may want to know ----------------------------------------------------------------
    @property
    def run_path(self) -> Path | None:
        """The current run's directory (None before the first reset and after close)."""
        return None if self._run is None else self._run.store.path

    @property
    def protocol(self) -> GymProtocol | None:
        return None if self._run is None else self._run.plan

    # ---- the run ----------------------------------------------------------------------------------------
    def _open_run(self, seed: int) -> None:
        config = self._config.with_overrides(seed=seed)
        out = self.run_dir / f"{config.name}-seed{seed}-{len(self.run_paths) + 1:03d}"
        options = RunOptions(rig=self.rig_spec, seed=seed, realtime=self.realtime, chunk_ms=self.chunk_ms,
                             progress=False)
        run = open_run(config, options, out, rig_factory=self._rig_factory)
        self.run_paths.append(out)
        try:
            run.plan.attach()
            run.runner.start()
        except BaseException as exc:
            end_run(run.runner, run.store, exc)
            run.rig.close()
            raise
        self._run = run
        self._episode = 1
        self._step = 0

    def _await_record(self, run: OpenRun) -> TrialRecord:
        """Process chunks until the submitted trial's record is stored (and heard by the protocol)."""
        runner = run.runner
        target = runner.n_done + 1
        deadline = runner.clock + self._stall_samples
        while runner.n_done < target:
            if runner.clock > deadline:
                message = (f"trial {target}: no response record {STALL_S:g} s of signal after its window "
                           f"(sample {runner.clock}); the loop stopped delivering trials")
                run.guarded.safe_state()
                run.store.append_event("fault", error="RigctlError", message=message, trials_done=runner.n_done,
                                       sample=runner.clock)
                raise RigctlError(message)
            runner.iterate()
        return run.plan.last_record

    def _close_run(self, error: BaseException | None = None) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.runner.stop()
            run.guarded.safe_state()
            end_run(run.runner, run.store, error)
        finally:
            run.rig.close()

    def _action(self, action: Any) -> int:
        if isinstance(action, (bool, np.bool_)) or not self.action_space.contains(action):
            names = ", ".join(f"{i}: {p.name}" for i, p in enumerate(self.patterns))
            raise ActionError(f"action {action!r}; allowed: an integer 0 to {self.action_space.n - 1} ({names})")
        return int(action)


def protocol_config(name: str, params: GymParams, *, response_window_ms: tuple[float, float], first_trial_s: float,
                    max_episodes: int, drug: str, seed: int = 0) -> ProtocolConfig:
    """The run's protocol as a `kind: python` protocol file would say it, validated by that kind's loader
    (windows against isi_s, ranges), so protocol.yaml reloads like any run's. Keeps only the response window
    of each trial's spikes (what the observation counts) and no raw data."""
    window = [float(w) for w in response_window_ms]
    data = {"name": name, "kind": "python", "class": CLASS_REF, "params": params.to_dict(),
            "description": "trials chosen by an agent through rigctl.gym.CultureEnv", "seed": seed,
            "sessions": max_episodes, "trial_spacing_s": float(params.isi_s), "first_trial_s": float(first_trial_s),
            "response_window_ms": window, "raw": "none", "raw_window_ms": window, "spikes": "trials",
            "spike_window_ms": window, "drug": drug, "checkpoint_every_trials": 1000000}
    where = Path("CultureEnv")
    config = load_python_protocol(LocatedDoc(where, data, {}), where)
    return config.with_overrides(params=params)


def _pattern(value: Pattern | dict, index: int) -> Pattern:
    try:
        return Pattern.of(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"patterns[{index}]: {exc}") from None


def _electrodes(values: Sequence[int], n: int) -> tuple[int, ...]:
    out = tuple(values)
    if (not out or len(set(out)) != len(out)
            or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and 0 <= e < n for e in out)):
        raise ValueError(f"target_electrodes {list(out)!r}; allowed: distinct electrode indices 0 to {n - 1}")
    return tuple(int(e) for e in out)
