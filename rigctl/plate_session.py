"""A plate run: every well of a plate file at once, one clock, each well its own protocol, seed and condition.

`rigctl run PLATE.yaml --rig sim-plate` → `start_plate`: each well is an ordinary run directory
`PLATE_DIR/wells/<well>` made by `session.open_run` (so its store, checkpoints, report, export, NWB and model are
a single run's), on its own simulated culture (`sim-plate`: one `sim-events` culture per well, `sim-plate-voltage`:
one `sim`; a MaxLab rig file such as rigs/maxtwo_sim.yaml: well k of the plate on well k of one MaxTwo server,
`rigctl.maxlab_plate`), checked against the rig's safety limits per well and against the plate's limit before the first chunk
is read. The wells advance in lockstep, one chunk each per round, in well order, so they share a clock; a fault in
one well puts every well's stimulator in its safe state and stops the plate (each well resumable). `rigctl run
--resume PLATE_DIR` → `resume_plate`. Part of the composition root (it opens rigs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rigctl.engine import Protocol
from rigctl.errors import RigctlError, SafetyViolation, StoreError
from rigctl.maxlab_plate import UNITS_PER_WELL, MaxLabPlate, maxlab_wells
from rigctl.plate_file import PLATE_META, WELLS_DIR, Plate, Well, load_plate, read_plate_meta
from rigctl.protocol import load_protocol
from rigctl.rigs import open_rig
from rigctl.session import OpenRun, RunOptions, _sigterm_as_interrupt, end_run, open_run, reopen_run
from rigctl.store import RunLock, check_new_run_dir, load_run_meta

PLATE_RIGS = {"sim-plate": "sim-events", "sim-plate-voltage": "sim"}
WELL_SAMPLE_RATE_HZ = 25000.0  # the simulated wells' rate (the plan the plate's limit is checked on)
MAXLAB_SAMPLE_RATE_HZ = 20000.0
MAX_STIMULATING_WELLS = 24  # the plate's limit: wells that may stimulate at one sample (one stimulator bank each)


def _well_rig(rig: str, workers: int) -> tuple[str, int | None]:
    """What each well opens, and the wells the rig has (None: as many as the plate's layout)."""
    if rig in PLATE_RIGS:
        return PLATE_RIGS[rig], None
    wells = maxlab_wells(rig) if rig.endswith((".yaml", ".yml")) else None
    if wells is None:
        raise RigctlError(f"--rig {rig!r}: a plate runs on {', '.join(PLATE_RIGS)} (one simulated culture per well) "
                          "or a MaxLab rig file (amplifier.driver: maxlab, e.g. rigs/maxtwo_sim.yaml)")
    if workers != 1:
        raise RigctlError(f"--workers {workers} with --rig {rig}: allowed: 1 (every well reads the one MaxLab "
                          "server's stream in this process)")
    return str(Path(rig).resolve()), wells


def _is_maxlab(meta: dict[str, Any]) -> bool:
    return meta["well_rig"] not in PLATE_RIGS.values()


def _write_meta(plate_dir: Path, meta: dict[str, Any]) -> None:
    tmp = plate_dir / (PLATE_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, plate_dir / PLATE_META)


def _well_protocol(well: Well):
    protocol = load_protocol(well.protocol, well.overrides)
    values: dict[str, Any] = {"seed": well.seed}
    if well.drug is not None:
        values["drug"] = well.drug
    return protocol.with_overrides(**values)


def start_plate(plate_ref: str | Path, rig: str, out: Path | None = None, progress: bool = True,
                rig_factory: Callable[..., Any] = open_rig, workers: int = 1) -> Path:
    well_rig, rig_wells = _well_rig(rig, workers)
    plate = load_plate(plate_ref, None if rig_wells is None else (rig_wells, f"amplifier.wells of {rig}"))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out is not None else Path("runs") / f"{plate.name}-{stamp}"
    check_new_run_dir(out)
    try:
        (out / WELLS_DIR).mkdir(parents=True)
    except OSError as exc:
        raise StoreError(f"{out}: cannot create the plate directory ({exc.strerror or exc})") from None
    meta = {"plate": plate.to_json(), "rig": rig, "well_rig": well_rig, "status": "running",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    return _run_plate(out, meta, progress, rig_factory, workers)


def resume_plate(plate_dir: Path, progress: bool = True, rig_factory: Callable[..., Any] = open_rig,
                 workers: int = 1) -> Path:
    """Every well not complete goes on from its checkpoint (or starts, if it was never created)."""
    plate_dir = Path(plate_dir)
    meta = read_plate_meta(plate_dir)
    if _is_maxlab(meta):
        _well_rig(meta["well_rig"], workers)
    return _run_plate(plate_dir, meta, progress, rig_factory, workers)


def _run_plate(plate_dir: Path, meta: dict[str, Any], progress: bool, rig_factory: Callable[..., Any],
               workers: int) -> Path:
    """The plate's lock held throughout; the wells not complete run in this process, or split over `workers`
    processes (each steps its wells in lockstep; wells do not interact in the simulation, so every well's data are
    the same either way)."""
    lock = RunLock.acquire(plate_dir)
    try:
        plate = Plate.from_json(meta["plate"])
        todo = [w for w in plate.wells if not _complete(plate_dir / WELLS_DIR / w.name)]
        maxlab = _is_maxlab(meta)
        rate_hz = MAXLAB_SAMPLE_RATE_HZ if maxlab else WELL_SAMPLE_RATE_HZ
        check_plate_limits([(w, _well_protocol(w).make_protocol(w.seed, rate_hz)) for w in plate.wells],
                           (UNITS_PER_WELL, f"{plate.source}: conditions", meta["well_rig"]) if maxlab else None)
        meta["status"] = "running"
        meta.pop("error", None)
        _write_meta(plate_dir, meta)
        _sigterm_as_interrupt()
        error: BaseException | None = None
        try:
            if workers <= 1 or len(todo) <= 1:
                drive_wells(plate_dir, meta, [w.name for w in todo], progress, rig_factory)
            else:
                _drive_in_workers(plate_dir, [w.name for w in todo], workers, progress)
        except BaseException as exc:
            error = exc
        meta["status"] = "complete" if error is None else (
            "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        if error is not None:
            meta["error"] = f"{type(error).__name__}: {error}"
        _write_meta(plate_dir, meta)
        if error is not None:
            raise error
    finally:
        lock.release()
    return plate_dir


def _complete(well_dir: Path) -> bool:
    return (well_dir / "run.json").is_file() and load_run_meta(well_dir).get("status") == "complete"


def drive_wells(plate_dir: Path, meta: dict[str, Any], names: list[str], progress: bool,
                rig_factory: Callable[..., Any] = open_rig) -> None:
    """Open (or reopen at their checkpoints) the named wells and drive them in lockstep to their end."""
    plate = Plate.from_json(meta["plate"])
    runs: list[tuple[Well, OpenRun]] = []
    server = None
    if _is_maxlab(meta):  # one server for the plate; well k of the plate = its well k
        server = MaxLabPlate(meta["well_rig"], [(w.seed, _well_protocol(w).drug) for w in plate.wells],
                             readers=len(set(names)))
    try:
        for k, well in enumerate(plate.wells):
            if well.name not in set(names):
                continue
            well_dir = plate_dir / WELLS_DIR / well.name
            options = RunOptions(rig=meta["well_rig"], seed=well.seed, drug=well.drug, progress=False)
            factory = rig_factory if server is None else (lambda *_, k=k, **__: server.open_well(k))
            if not (well_dir / "run.json").is_file():
                runs.append((well, open_run(_well_protocol(well), options, well_dir, rig_factory=factory)))
                continue
            well_lock = RunLock.acquire(well_dir)
            try:
                protocol = load_protocol(well_dir / "protocol.yaml")
                runs.append((well, reopen_run(well_dir, well_lock, protocol, options, rig_factory=factory)))
            except BaseException:
                well_lock.release()
                raise
        _drive(runs, progress)
    finally:
        for _, run in runs:
            run.rig.close()
        if server is not None:
            server.close()


def _drive_in_workers(plate_dir: Path, names: list[str], workers: int, progress: bool) -> None:
    """`workers` processes (`python -m rigctl.plate_session PLATE_DIR WELLS`), each killed with this one."""
    from rigctl.sweep import _die_with_parent

    groups = [names[i::workers] for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "rigctl.plate_session", str(plate_dir), ",".join(g),
                               "progress" if progress else "quiet"], stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent) for g in groups if g]
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()  # SIGTERM: each worker stops its wells cleanly (interrupted, resumable)
        for p in procs:
            p.wait()
        raise
    failed = [", ".join(g) for g, code in zip(groups, codes) if code != 0]
    if failed:
        raise RigctlError(f"the plate's worker for wells {'; '.join(failed)} failed (exit "
                          f"{[c for c in codes if c != 0]}); the wells' run.json say why; `rigctl run --resume "
                          f"{plate_dir}` continues")


def check_plate_limits(plans: list[tuple[Well, Protocol]], units: tuple[int, str, str] | None = None) -> None:
    """The plate's own limit, over its open-loop wells' whole plans (checked before any well starts): at most
    MAX_STIMULATING_WELLS wells pulse at one sample (a plate's stimulators share a power and trigger bank).
    `units` = (limit, where, rig): no well's pulse on more electrodes than its chip has stimulation units
    (a MaxLab well: 32), over every command it may send."""
    wells_at: dict[int, int] = {}
    for well, plan in plans:
        commands = [plan.trial(i, 0).command for i in range(plan.n_trials)] if plan.open_loop \
            else list(plan.candidate_commands()) if units else []
        widest = max((len(c.electrodes) for c in commands if c is not None), default=0)
        if units is not None and widest > units[0]:
            raise SafetyViolation(f"{units[1]}: well {well.name} ({well.condition}): a pulse on {widest} electrodes; "
                                  f"allowed: at most {units[0]} (stimulation units of one well of {units[2]})")
        if not plan.open_loop:
            continue
        for c in commands:
            if c is not None:
                wells_at[c.sample] = wells_at.get(c.sample, 0) + 1
    busiest = max(wells_at.values(), default=0)
    if busiest > MAX_STIMULATING_WELLS:
        raise SafetyViolation(f"{busiest} wells would pulse at one sample; allowed: at most {MAX_STIMULATING_WELLS} "
                              "(the plate's limit)")


def _drive(runs: list[tuple[Well, OpenRun]], progress: bool) -> None:
    """Lockstep: one chunk of every running well per round; a fault stops every well in its safe state."""
    total = sum(run.plan.n_trials for _, run in runs)
    error: BaseException | None = None
    started: list[OpenRun] = []  # running, to be stopped
    stopped: list[OpenRun] = []
    wall0, next_report = time.monotonic(), 0.1
    names = ",".join(w.name for w, _ in runs)
    try:
        for _, run in runs:
            run.runner.start()
            started.append(run)
        active = list(started)
        while active:
            for run in active:
                run.runner.iterate()
            for run in [run for run in active if not run.runner.running()]:
                active.remove(run)
                started.remove(run)
                stopped.append(run)
                run.runner.stop()  # a finished well stops reading now (a shared stream must not wait for it)
                run.runner.stim.safe_state()
            done = sum(run.runner.n_done for run in started + stopped)
            if progress and total and done / total >= next_report:
                print(f"plate wells {names[:40]}: {len(stopped)}/{len(runs)} done, {done}/{total} "
                      f"trials, {time.monotonic() - wall0:.0f} s", file=sys.stderr, flush=True)
                next_report = int(done / total * 10 + 1) / 10
    except BaseException as exc:
        error = exc
        for run in started:
            run.runner.stim.safe_state()
    finally:
        for run in started:
            run.runner.stop()
            run.runner.stim.safe_state()
    for _, run in runs:
        finished = error is None or not run.runner.running()
        end_run(run.runner, run.store, None if finished else error)
    if error is not None:
        raise error


def _worker_main(argv: list[str]) -> int:
    """`python -m rigctl.plate_session PLATE_DIR A1,B1,... progress|quiet`: one worker of a plate."""
    plate_dir, names, mode = Path(argv[0]), argv[1].split(","), argv[2]
    _sigterm_as_interrupt()
    try:
        drive_wells(plate_dir, read_plate_meta(plate_dir), names, mode == "progress")
    except KeyboardInterrupt:
        return 130
    except RigctlError as exc:
        print(f"rigctl plate worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
