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
from rigctl.errors import RigctlError, StoreError
from rigctl.loop import BssRunner, LoopConfig, LoopStats
from rigctl.online import SelectivityTracker
from rigctl.protocol import BssProtocol, BssSchedule, load_protocol
from rigctl.rigs import Rig, open_rig
from rigctl.safety import GuardedStimulator
from rigctl.store import SessionStore, load_run_meta, read_trials
from rigctl.types import TrialRecord


def stored_trial_records(run_dir: Path) -> list[TrialRecord]:
    t = read_trials(run_dir)
    return [TrialRecord(int(r["session"]), int(r["trial"]), int(r["sample"]), r["sources"].copy(),
                        r["stimuli"].copy(), r["counts"].copy()) for r in t]


@dataclass(frozen=True)
class RunOptions:
    rig: str = "sim-events"
    seed: int | None = None
    sessions: int | None = None
    drug: str | None = None
    realtime: bool = False
    chunk_ms: float | None = None
    progress: bool = True


def default_out_dir(protocol: BssProtocol, seed: int) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{protocol.name}-seed{seed}-{stamp}"


def _models(protocol: BssProtocol, n_electrodes: int) -> list:
    models: list = [SelectivityTracker(n_electrodes)]
    try:
        from rigctl.model.online import OnlineFreeEnergy
    except ImportError:
        return models
    models.append(OnlineFreeEnergy(n_stimuli=protocol.n_stimuli))
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
    return make, asdict(config)


def _check_protocol_fits_rig(protocol: BssProtocol, rig: Rig) -> None:
    n = rig.amplifier.n_channels
    bad = [e for e in protocol.stim_electrodes if e >= n]
    if bad:
        raise RigctlError(f"{protocol.source_file}: stim_groups name electrode(s) {bad}, but the rig has "
                          f"electrodes 0..{n - 1}")
    allowed = rig.limits.allowed_electrodes
    if allowed is not None:
        bad = [e for e in protocol.stim_electrodes if e not in allowed]
        if bad:
            raise RigctlError(f"{protocol.source_file}: stim_groups name electrode(s) {bad} that the rig's "
                              "safety limits do not allow to stimulate")
    # every command must pass the safety limits: check the pulse before any stimulation
    rig.limits.check_pulse(protocol.pulse)


def _make_runner(protocol: BssProtocol, seed: int, rig: Rig, store: SessionStore, options: RunOptions,
                 publisher=None) -> BssRunner:
    schedule = BssSchedule(protocol, seed, rig.amplifier.sample_rate_hz)
    guarded = GuardedStimulator(rig.stimulator, rig.limits, rig.amplifier.sample_rate_hz)
    make_signal = _signal_factory(rig)[0]
    config = LoopConfig(realtime=options.realtime, progress=options.progress)
    return BssRunner(protocol, schedule, rig.amplifier, guarded, store, _models(protocol, rig.amplifier.n_channels),
                     make_signal, config, publisher=publisher, rig_state=rig.state)


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests)
        pass


def start_run(protocol_ref: str, options: RunOptions, out: Path | None = None, publisher=None,
              rig_factory=open_rig) -> Path:
    protocol = load_protocol(protocol_ref)
    overrides: dict[str, Any] = {}
    if options.sessions is not None:
        if not 1 <= options.sessions <= protocol.sessions:
            raise RigctlError(f"--sessions {options.sessions}: allowed: 1 to {protocol.sessions}")
        overrides["sessions"] = options.sessions
    if options.drug is not None:
        overrides["drug"] = options.drug
    seed = protocol.seed if options.seed is None else options.seed
    if seed < 0:
        raise RigctlError(f"--seed {seed}: allowed: 0 or more")
    overrides["seed"] = seed
    protocol = protocol.with_overrides(**overrides)
    rig = rig_factory(options.rig, seed=seed, drug=protocol.drug, realtime=options.realtime,
                      chunk_ms=options.chunk_ms)
    try:
        _check_protocol_fits_rig(protocol, rig)
        out = Path(out) if out is not None else default_out_dir(protocol, seed)
        signal_config = _signal_factory(rig)[1]
        meta = {
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
            "signal_config": signal_config,
            "safety_limits": rig.limits.to_dict(),
            "shapes": {"n_sources": 2, "n_stimuli": protocol.n_stimuli, "n_electrodes": rig.amplifier.n_channels},
            "sample_rate_hz": rig.amplifier.sample_rate_hz,
            "platform": {"python": platform.python_version(), "numpy": np.__version__},
            "status": "running",
        }
        store = SessionStore(out, meta, create=True)
        store.write_text("protocol.yaml", protocol.to_yaml())
        store.append_event("run_start", seed=seed)
        runner = _make_runner(protocol, seed, rig, store, options, publisher)
        _execute(runner, store)
    finally:
        rig.close()
    return out


def resume_run(run_dir: Path, options: RunOptions, publisher=None, rig_factory=open_rig) -> Path:
    run_dir = Path(run_dir)
    meta = load_run_meta(run_dir)
    if meta.get("status") == "complete":
        raise StoreError(f"{run_dir}: the run is already complete; nothing to resume")
    protocol = load_protocol(run_dir / "protocol.yaml")
    seed = int(meta["seed"])
    options = RunOptions(rig=meta["rig"], seed=seed, realtime=options.realtime or meta.get("realtime", False),
                         chunk_ms=meta.get("chunk_ms"), progress=options.progress)
    rig = rig_factory(meta["rig"], seed=seed, drug=protocol.drug, realtime=options.realtime,
                      chunk_ms=options.chunk_ms)
    try:
        store = SessionStore.open_existing(run_dir)
        runner = _make_runner(protocol, seed, rig, store, options, publisher)
        checkpoint = store.read_checkpoint()
        if rig.state is not None:
            if checkpoint is not None:
                store.truncate_to(checkpoint["lengths"])
                runner.set_state(checkpoint["state"])
            else:
                store.truncate_to({})
        else:
            store.drop_torn_records()
            runner.continue_from(stored_trial_records(run_dir))
        store.append_event("resume", trials_done=runner.n_done)
        store.update_meta(status="running")
        _execute(runner, store)
    finally:
        rig.close()
    return run_dir


def _execute(runner: BssRunner, store: SessionStore) -> LoopStats:
    _sigterm_as_interrupt()
    try:
        stats = runner.run()
    except BaseException as exc:
        store.update_meta(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                          error=f"{type(exc).__name__}: {exc}", trials_done=runner.n_done)
        store.close()
        raise
    store.append_event("run_end", trials_done=runner.n_done)
    store.update_meta(status="complete", trials_done=runner.n_done,
                      loop_stats={k: v for k, v in asdict(stats).items()})
    store.close()
    return stats
