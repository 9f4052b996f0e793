"""Start or resume a stored run: wire protocol, rig, signal path, models and store into the loop."""

from __future__ import annotations

import datetime as _dt
import platform
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rigctl
from rigctl.errors import RigctlError, SafetyViolation, StoreError
from rigctl.engine import Protocol, ProtocolConfig
from rigctl.loop import LoopConfig, LoopStats, ProtocolRunner
from rigctl.online import SelectivityTracker
from rigctl.protocol import load_protocol, name_problem
from rigctl.agent_loop import AgentRunner
from rigctl.rigs import AGENT_RIGS, RIG_CHOICES, Rig, open_rig
from rigctl.safety import GuardedStimulator
from rigctl.steering import PlanShift, RunAborted, Steering
from rigctl.store import (RunLock, SessionStore, check_new_run_dir, load_run_meta, read_jsonl, read_stims,
                          read_trials)
from rigctl.tasks.agent import AgentTask
from rigctl.types import TrialRecord


def stored_trial_records(run_dir: Path) -> list[TrialRecord]:
    t = read_trials(run_dir)
    declared = [name for name in t.dtype.names if name not in ("session", "trial", "sample", "counts")]
    return [TrialRecord(int(r["session"]), int(r["trial"]), int(r["sample"]), r["counts"].copy(),
                        {name: _field_value(r[name]) for name in declared}) for r in t]


def last_pulse_per_electrode(run_dir: Path, before_sample: int | None = None) -> dict[int, int]:
    """Each electrode's last pulse in stims.bin before `before_sample` (what the rate limit must remember on
    resume; pulses from the first trial that is sent again on are that trial's, handed over ahead of time)."""
    stims = read_stims(run_dir)
    last: dict[int, int] = {}
    for electrode, sample in zip(stims["electrode"].tolist(), stims["sample"].tolist()):
        if before_sample is None or sample < before_sample:
            last[electrode] = max(sample, last.get(electrode, sample))
    return last


def _field_value(value):
    return value.copy() if isinstance(value, np.ndarray) else value.item()


@dataclass(frozen=True)
class RunOptions:
    rig: str = "sim-events"
    seed: int | None = None
    sessions: int | None = None
    drug: str | None = None
    realtime: bool = False
    chunk_ms: float | None = None
    progress: bool = True
    overrides: tuple[str, ...] = ()  # --set FIELD=VALUE, applied to the protocol file before validation


def default_out_dir(protocol: ProtocolConfig, seed: int) -> Path:
    """runs/<name>-seed<N>-<time>; the name must be an identifier, so the directory stays under runs/."""
    problem = name_problem(protocol.name)
    if problem:
        raise RigctlError(f"{protocol.source_file}: field 'name' has value {protocol.name[:80]!r}; {problem}")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{protocol.name}-seed{seed}-{stamp}"


def _models(protocol: Protocol, n_electrodes: int) -> list:
    """The online models, for protocols whose trials carry hidden sources and stimuli (BSS)."""
    names = {f.name: f for f in protocol.trial_fields}
    if "sources" not in names or "stimuli" not in names:
        return []
    models: list = [SelectivityTracker(n_electrodes, n_sources=names["sources"].shape[0])]
    try:
        from rigctl.model.online import OnlineFreeEnergy
    except ImportError:
        return models
    models.append(OnlineFreeEnergy(n_stimuli=names["stimuli"].shape[0]))
    return models


def _signal_factory(rig: Rig):
    """(factory of the rig's SignalPath, its configuration as a dict); (None, None) for an events rig,
    whose chunks carry the device's own spikes."""
    if rig.description.get("mode") == "events":
        return None, None
    amp = rig.amplifier
    from rigctl.signal import SignalConfig, SignalPath

    config = SignalConfig()

    def make():
        return SignalPath(amp.n_channels, amp.sample_rate_hz, amp.uV_per_bit, config)
    return make, config.to_dict()


def _check_plan(protocol: Protocol, guarded: GuardedStimulator, rig: Rig, first_trial: int = 0,
                shift: PlanShift | None = None) -> None:
    """Every command the run will send (open loop), or every command a closed-loop protocol may send,
    checked against every safety limit and the device before the first is sent; a violation names the
    protocol file, the trial and the rig's limits. A resumed run's plan is checked as pauses moved it (`shift`)."""
    shift = shift or PlanShift()
    cfg = protocol.config
    rig_name = rig.description.get("path") or rig.description.get("kind", "the rig")
    if protocol.open_loop:
        commands = (c for c in (shift.apply(protocol.trial(i, 0)).command
                                for i in range(first_trial, protocol.n_trials)) if c is not None)
        check = guarded.check_plan
    else:
        commands = list(protocol.candidate_commands())

        def check(cs):  # each shape alone; the rate: the protocol's shortest interval below, and as it sends
            for c in cs:
                guarded.check_plan([c])
    try:
        check(commands)
    except SafetyViolation as exc:
        raise SafetyViolation(f"{cfg.source_file}: {exc} (limits of {rig_name})") from exc
    interval = None if protocol.open_loop else protocol.shortest_pulse_interval()
    limit_s = 1.0 / rig.limits.max_rate_hz
    if interval is not None and interval[0] < limit_s - 1e-12:
        raise SafetyViolation(f"{cfg.source_file}: field '{interval[1]}' lets one electrode be pulsed every "
                              f"{interval[0] * 1000:g} ms; allowed: at least {limit_s * 1000:g} ms (max_rate_hz "
                              f"{rig.limits.max_rate_hz:g} of {rig_name})")


def _make_runner(protocol: Protocol, guarded: GuardedStimulator, rig: Rig, store: SessionStore,
                 options: RunOptions, publisher=None, control=None) -> ProtocolRunner:
    make_signal = _signal_factory(rig)[0]
    # an explicit --chunk-ms is read as asked; otherwise an open-loop run may read longer chunks (`batch_s`)
    config = LoopConfig(realtime=options.realtime, progress=options.progress,
                        batch_s=0.0 if options.chunk_ms else LoopConfig.batch_s)
    return ProtocolRunner(protocol, rig.amplifier, guarded, store, _models(protocol, rig.amplifier.n_channels),
                          make_signal, config, publisher=publisher, rig_state=rig.state,
                          steering=control.make_steering() if control is not None else None)


def _guard(cfg: ProtocolConfig, seed: int, rig: Rig) -> tuple[Protocol, GuardedStimulator]:
    protocol = cfg.make_protocol(seed, rig.amplifier.sample_rate_hz)
    return protocol, GuardedStimulator(rig.stimulator, rig.limits, rig.amplifier.sample_rate_hz)


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests)
        pass


def start_run(protocol_ref: str, options: RunOptions, out: Path | None = None, publisher=None,
              rig_factory=open_rig, control=None) -> Path:
    """A new run. `publisher`: a rigctl.stream.Publisher (or None); `control`: a rigctl.control.ControlServer,
    started once the run directory exists (its endpoint goes to run.json) and stopped when the loop ends."""
    protocol = load_protocol(protocol_ref, options.overrides)
    overrides: dict[str, Any] = {}
    if options.sessions is not None:
        if not 1 <= options.sessions <= protocol.sessions:
            raise RigctlError(f"--sessions {options.sessions}: allowed: 1 to {protocol.sessions}")
        overrides["sessions"] = options.sessions
    if options.drug is not None:
        overrides["drug"] = options.drug
    seed = protocol.seed if options.seed is None else options.seed
    if not 0 <= seed < 2**63:
        raise RigctlError(f"--seed {seed}: allowed: 0 to 2**63 - 1")
    overrides["seed"] = seed
    protocol = protocol.with_overrides(**overrides)
    out = Path(out) if out is not None else default_out_dir(protocol, seed)
    if options.rig in AGENT_RIGS:
        _start_agent_run(protocol, options, out, rig_factory)
        return out
    run = open_run(protocol, options, out, publisher, rig_factory, control)
    try:
        _execute(run.runner, run.store, control)
    finally:
        run.rig.close()
    return out


@dataclass
class OpenRun:
    """A new run, wired and stored but not started: its rig (the caller closes it), the protocol's plan,
    the guarded stimulator, the store (run.json says running) and the runner."""

    rig: Rig
    plan: Protocol
    guarded: GuardedStimulator
    store: SessionStore
    runner: ProtocolRunner


def open_run(protocol: ProtocolConfig, options: RunOptions, out: Path, publisher=None, rig_factory=open_rig,
             control=None) -> OpenRun:
    """Open the rig, check the plan against its limits, write the run directory and build the runner, as
    `rigctl run` does; `protocol` is resolved (its seed is the run's). The rig is closed if this fails.
    Callers that drive the runner themselves (rigctl.gym) end the run with `end_run`."""
    seed = protocol.seed
    check_new_run_dir(out)
    rig = rig_factory(options.rig, seed=seed, drug=protocol.drug, realtime=options.realtime,
                      chunk_ms=options.chunk_ms)
    try:
        if rig.make_agent is not None:
            raise RigctlError(f"--rig {options.rig}: an agent rig plays whole episodes; it has no trials to drive "
                              "one by one")
        plan, guarded = _guard(protocol, seed, rig)
        _check_plan(plan, guarded, rig)
        meta = {
            **_run_meta(protocol, seed, options, rig),
            "signal_config": _signal_factory(rig)[1],
            "shapes": _shapes(plan, rig.amplifier.n_channels),
            "trial_fields": [f.to_json() for f in plan.trial_fields],
            "sample_rate_hz": rig.amplifier.sample_rate_hz,
            "uV_per_bit": rig.amplifier.uV_per_bit,  # the scale of raw.bin (exporters: volts)
        }
        store = SessionStore.create(out, meta, {"protocol.yaml": protocol.to_yaml()})
        store.append_event("run_start", seed=seed)
        runner = _make_runner(plan, guarded, rig, store, options, publisher, control)
    except BaseException:
        rig.close()
        raise
    return OpenRun(rig, plan, guarded, store, runner)


def _run_meta(protocol: ProtocolConfig, seed: int, options: RunOptions, rig: Rig) -> dict[str, Any]:
    """The run.json fields every run has, whatever plays it."""
    return {
        "rigctl_version": rigctl.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "protocol": protocol.name,
        "protocol_source": protocol.source_file,
        "seed": seed,
        "rig": options.rig,
        "rig_description": rig.description,
        "drug": protocol.drug,
        "sessions": protocol.sessions,
        "realtime": options.realtime,
        "chunk_ms": options.chunk_ms,
        "safety_limits": rig.limits.to_dict(),
        "protocol_kind": protocol.kind,
        "platform": {"python": platform.python_version(), "numpy": np.__version__},
        "status": "running",
    }


# ---- agent rigs (rigctl.tasks.agent): a model plays whole episodes, no MEA -------------------------------------

def _agent_task(protocol: ProtocolConfig, seed: int, rig_name: str) -> AgentTask:
    make = getattr(protocol, "agent_task", None)
    if make is None:
        raise RigctlError(f"--rig {rig_name}: an agent rig plays tasks with episodes (kind: maze); "
                          f"{protocol.source_file or protocol.name} is kind {protocol.kind}, which needs an MEA rig "
                          f"(allowed: {RIG_CHOICES})")
    return make(seed)


def _start_agent_run(protocol: ProtocolConfig, options: RunOptions, out: Path, rig_factory) -> None:
    seed = protocol.seed
    task = _agent_task(protocol, seed, options.rig)
    check_new_run_dir(out)
    rig = rig_factory(options.rig, seed=seed, drug=protocol.drug, realtime=options.realtime, chunk_ms=options.chunk_ms)
    try:
        agent = rig.make_agent(seed, task.agent_parameters())
        meta = {**_run_meta(protocol, seed, options, rig), "signal_config": None, "shapes": {"n_electrodes": 0},
                "trial_fields": [f.to_json() for f in task.trial_fields], "episodes": task.episodes,
                "sample_rate_hz": 1.0, "uV_per_bit": None}  # an agent run's clock: one sample per step
        store = SessionStore.create(out, meta, {"protocol.yaml": protocol.to_yaml()})
        store.append_event("run_start", seed=seed)
        _execute_agent(AgentRunner(task, agent, store, options.progress), store)
    finally:
        rig.close()


def _restore(runner: ProtocolRunner | AgentRunner, checkpoint: dict, run_dir: Path) -> None:
    """The runner's state from the checkpoint, before any file is cut to it: a checkpoint this rigctl cannot continue
    (the simulated culture's model changed since it was written) is one line, and the run's files stay as they were."""
    try:
        runner.set_state(checkpoint["state"])
    except ValueError as exc:
        raise StoreError(f"{run_dir}: cannot resume with this rigctl: {exc}; resume it with the rigctl that wrote "
                         f"it, or start the run again") from exc


def _resume_agent_run(run_dir: Path, lock: RunLock, protocol: ProtocolConfig, seed: int, rig: Rig,
                      options: RunOptions) -> None:
    task = _agent_task(protocol, seed, options.rig)
    store = SessionStore.open_existing(run_dir, lock)
    runner = AgentRunner(task, rig.make_agent(seed, task.agent_parameters()), store, options.progress)
    checkpoint = store.read_checkpoint()
    if checkpoint is not None:
        _restore(runner, checkpoint, run_dir)
        store.truncate_to(checkpoint["lengths"])
    else:
        store.truncate_to({})
        store.append_event("run_start", seed=seed)  # killed before the first episode ended: from the start
    store.append_event("resume", episodes_done=runner.n_done)
    store.update_meta(status="running")
    _execute_agent(runner, store)


def _execute_agent(runner: AgentRunner, store: SessionStore) -> None:
    _sigterm_as_interrupt()
    try:
        wall_s = runner.run()
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        store.update_meta(status="interrupted" if interrupted else "failed", error=f"{type(exc).__name__}: {exc}",
                          episodes_done=runner.n_done)
        store.close()
        raise
    store.append_event("run_end", episodes_done=runner.n_done)
    store.sync()
    store.update_meta(status="complete", episodes_done=runner.n_done, trials_done=runner.next_sample,
                      loop_stats={"wall_s": wall_s})
    store.close()


def _shapes(protocol: Protocol, n_electrodes: int) -> dict[str, int]:
    """run.json `shapes`: the electrode count, and for BSS the source and stimulus counts (older readers)."""
    shapes = {f"n_{f.name}": f.shape[0] for f in protocol.trial_fields if f.name in ("sources", "stimuli")}
    return {**shapes, "n_electrodes": n_electrodes}


def resume_run(run_dir: Path, options: RunOptions, publisher=None, rig_factory=open_rig, control=None) -> Path:
    """Continue a stored run. A run whose loop completed but whose report is missing (killed while
    reporting) returns at once, so the caller writes the report."""
    run_dir = Path(run_dir)
    meta = load_run_meta(run_dir)  # names a missing or foreign directory before a lock file is made in it
    lock = RunLock.acquire(run_dir)
    try:
        return _resume_locked(run_dir, lock, options, publisher, rig_factory, control)
    finally:
        lock.release()  # the store released it already unless the resume failed before opening the store


def _resume_locked(run_dir: Path, lock: RunLock, options: RunOptions, publisher, rig_factory, control) -> Path:
    meta = load_run_meta(run_dir)  # again, under the lock: another writer may have moved it on meanwhile
    if meta.get("status") == "complete":
        if not (run_dir / "summary.json").exists():
            return run_dir
        raise StoreError(f"{run_dir}: the run is already complete and reported; nothing to resume")
    if not (run_dir / "protocol.yaml").is_file():
        raise StoreError(f"{run_dir}: not a complete run directory (no protocol.yaml); it cannot be resumed, "
                         "start the run again")
    protocol = load_protocol(run_dir / "protocol.yaml")
    seed = int(meta["seed"])
    options = RunOptions(rig=meta["rig"], seed=seed, realtime=options.realtime or meta.get("realtime", False),
                         chunk_ms=meta.get("chunk_ms"), progress=options.progress)
    if options.rig in AGENT_RIGS:
        rig = rig_factory(options.rig, seed=seed, drug=protocol.drug, realtime=options.realtime,
                          chunk_ms=options.chunk_ms)
        try:
            _resume_agent_run(run_dir, lock, protocol, seed, rig, options)
        finally:
            rig.close()
        return run_dir
    run = reopen_run(run_dir, lock, protocol, options, publisher, rig_factory, control)
    try:
        _execute(run.runner, run.store, control)
    finally:
        run.rig.close()
    return run_dir


def reopen_run(run_dir: Path, lock: RunLock, protocol: ProtocolConfig, options: RunOptions, publisher=None,
               rig_factory=open_rig, control=None) -> OpenRun:
    """An interrupted run wired again, ready to go on: the rig reopened, every file cut to the checkpoint and the
    runner's state restored (simulated rig), or the stored trials replayed through protocol and models (hardware);
    the rest of the plan checked. `options` carry the run's rig, seed, realtime and chunk size (run.json)."""
    seed = int(options.seed)
    rig = rig_factory(options.rig, seed=seed, drug=protocol.drug, realtime=options.realtime,
                      chunk_ms=options.chunk_ms)
    try:
        store = SessionStore.open_existing(run_dir, lock)
        plan, guarded = _guard(protocol, seed, rig)
        runner = _make_runner(plan, guarded, rig, store, options, publisher, control)
        checkpoint = store.read_checkpoint()
        if rig.state is not None:
            if checkpoint is not None:
                _restore(runner, checkpoint, run_dir)
                store.truncate_to(checkpoint["lengths"])
            else:  # killed before the first checkpoint: a fresh start of the same run
                store.truncate_to({})
        else:
            store.drop_torn_records()
            runner.shift = plan_shift_from_events(read_jsonl(run_dir / "events.jsonl"))
            runner.continue_from(stored_trial_records(run_dir))
            # the rate limit spans the crash: every pulse before the first trial that is sent again
            nxt = runner.next_to_schedule
            redo = runner.shift.apply(plan.trial(nxt, 0)).sample if plan.open_loop and nxt < plan.n_trials else None
            guarded.rates.last_sample = last_pulse_per_electrode(run_dir, before_sample=redo)
        _check_plan(plan, guarded, rig, first_trial=runner.next_to_schedule, shift=runner.shift)
        if runner.paused_since is not None:  # stopped while paused: a resumed run ends its pause at once
            runner.steering = runner.steering or Steering()
            runner.steering.request("resume", "run --resume")
        store.append_event("resume", trials_done=runner.n_done)
        store.update_meta(status="running")
    except BaseException:
        rig.close()
        raise
    return OpenRun(rig, plan, guarded, store, runner)


def plan_shift_from_events(events: list[dict]) -> PlanShift:
    """The pauses' plan shift as the `pause_end` events of a run recorded it (hardware resume: no checkpoint)."""
    shift = PlanShift()
    for e in events:
        if e.get("event") == "pause_end":
            shift.add(int(e["first_shifted_trial"]) - 1, int(e["shift_samples"]))
    return shift


def _attach_control(control, runner: ProtocolRunner, store: SessionStore) -> None:
    """Open the control endpoint once the run directory exists; its address goes to run.json and stderr."""
    endpoint = control.start(runner.steering, store.path / "control.jsonl")
    store.update_meta(control_endpoint=endpoint, control_server_key=control.public_key)
    print(f"control: {endpoint} (CURVE; `rigctl control {store.path} status`)", file=sys.stderr, flush=True)


def _detach_control(control) -> dict[str, Any]:
    if control is None:
        return {}
    control.stop()
    return {"control_endpoint": None}


def _execute(runner: ProtocolRunner, store: SessionStore, control=None) -> LoopStats:
    _sigterm_as_interrupt()
    try:
        if control is not None:
            _attach_control(control, runner, store)
        if runner.publisher is not None:
            runner.publisher.publish("run_start", {**runner.status(), "run_dir": str(store.path),
                                                   "layout": _layout(runner)})
        stats = runner.run()
    except BaseException as exc:
        end_run(runner, store, exc, control)
        raise
    end_run(runner, store, None, control)
    return stats


def end_run(runner: ProtocolRunner, store: SessionStore, error: BaseException | None = None, control=None) -> None:
    """Finalise the run directory once the loop has stopped: `complete` (a run_end event first), or, after
    `error`, `interrupted` (Ctrl-C, SIGTERM, an abort) or `failed`; then close the store."""
    if error is not None:
        closed = _detach_control(control)
        interrupted = isinstance(error, (KeyboardInterrupt, RunAborted))
        store.update_meta(status="interrupted" if interrupted else "failed",
                          error=f"{type(error).__name__}: {error}", trials_done=runner.n_done, **closed)
        store.close()
        return
    store.append_event("run_end", trials_done=runner.n_done)
    store.sync()  # run_end is on disk before the status says complete
    closed = _detach_control(control)
    if runner.publisher is not None:
        runner.publisher.publish("run_end", {"trials_done": runner.n_done, "overruns": runner.stats.overruns})
    store.update_meta(status="complete", trials_done=runner.n_done,
                      loop_stats={k: v for k, v in asdict(runner.stats).items()}, **closed)
    store.close()


def _layout(runner: ProtocolRunner) -> list[list[float]] | None:
    layout = getattr(runner.amp, "layout", None)
    return None if layout is None else np.asarray(layout.positions_um).round(1).tolist()
