"""A plate run: every well of a plate file at once, one clock, each well its own protocol, seed and condition.

`rigctl run PLATE.yaml --rig sim-plate` → `start_plate`: each well is an ordinary run directory
`PLATE_DIR/wells/<well>` made by `session.open_run` (so its store, checkpoints, report, export, NWB and model are
a single run's), on its own simulated culture (`sim-plate`: one `sim-events` culture per well, `sim-plate-voltage`:
one `sim`), checked against the rig's safety limits per well and against the plate's limit before the first chunk
is read. The wells advance in lockstep, one chunk each per round, in well order, so they share a clock; a fault in
one well puts every well's stimulator in its safe state and stops the plate (each well resumable). `rigctl run
--resume PLATE_DIR` → `resume_plate`. Part of the composition root (it opens rigs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rigctl.errors import RigctlError, SafetyViolation, StoreError
from rigctl.plate_file import PLATE_META, WELLS_DIR, Plate, PlateError, Well, load_plate
from rigctl.protocol import load_protocol
from rigctl.rigs import open_rig
from rigctl.session import OpenRun, RunOptions, _sigterm_as_interrupt, end_run, open_run, reopen_run
from rigctl.store import RunLock, check_new_run_dir, load_run_meta

PLATE_RIGS = {"sim-plate": "sim-events", "sim-plate-voltage": "sim"}
MAX_STIMULATING_WELLS = 24  # the plate's limit: wells that may stimulate at one sample (one stimulator bank each)


def is_plate_dir(path: Path) -> bool:
    return (Path(path) / PLATE_META).is_file()


def _well_rig(rig: str) -> str:
    if rig not in PLATE_RIGS:
        raise RigctlError(f"--rig {rig!r}: a plate runs on {', '.join(PLATE_RIGS)} (one simulated culture per well)")
    return PLATE_RIGS[rig]


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
                rig_factory: Callable[..., Any] = open_rig) -> Path:
    plate = load_plate(plate_ref)
    well_rig = _well_rig(rig)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out is not None else Path("runs") / f"{plate.name}-{stamp}"
    check_new_run_dir(out)
    try:
        (out / WELLS_DIR).mkdir(parents=True)
    except OSError as exc:
        raise StoreError(f"{out}: cannot create the plate directory ({exc.strerror or exc})") from None
    lock = RunLock.acquire(out)
    try:
        meta = {"plate": plate.to_json(), "rig": rig, "well_rig": well_rig, "status": "running",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        _write_meta(out, meta)
        runs: list[tuple[Well, OpenRun]] = []
        try:
            for well in plate.wells:
                options = RunOptions(rig=well_rig, seed=well.seed, drug=well.drug, progress=False)
                runs.append((well, open_run(_well_protocol(well), options, out / WELLS_DIR / well.name,
                                            rig_factory=rig_factory)))
            _drive(out, meta, runs, progress)
        finally:
            for _, run in runs:
                run.rig.close()
    finally:
        lock.release()
    return out


def resume_plate(plate_dir: Path, progress: bool = True, rig_factory: Callable[..., Any] = open_rig) -> Path:
    """Every well not complete goes on from its checkpoint (or starts, if it was never created)."""
    plate_dir = Path(plate_dir)
    try:
        meta = json.loads((plate_dir / PLATE_META).read_text())
    except (OSError, ValueError) as exc:
        raise PlateError(f"{plate_dir}: not a plate directory ({exc})") from None
    lock = RunLock.acquire(plate_dir)
    runs: list[tuple[Well, OpenRun]] = []
    try:
        plate = Plate.from_json(meta["plate"])
        for well in plate.wells:
            well_dir = plate_dir / WELLS_DIR / well.name
            options = RunOptions(rig=meta["well_rig"], seed=well.seed, drug=well.drug, progress=False)
            if not (well_dir / "run.json").is_file():
                runs.append((well, open_run(_well_protocol(well), options, well_dir, rig_factory=rig_factory)))
                continue
            if load_run_meta(well_dir).get("status") == "complete":
                continue
            well_lock = RunLock.acquire(well_dir)
            try:
                protocol = load_protocol(well_dir / "protocol.yaml")
                runs.append((well, reopen_run(well_dir, well_lock, protocol, options, rig_factory=rig_factory)))
            except BaseException:
                well_lock.release()
                raise
        meta["status"] = "running"
        _write_meta(plate_dir, meta)
        _drive(plate_dir, meta, runs, progress)
    finally:
        for _, run in runs:
            run.rig.close()
        lock.release()
    return plate_dir


def check_plate_limits(runs: list[tuple[Well, OpenRun]]) -> None:
    """The plate's own limit, over its open-loop wells' whole plans: at most MAX_STIMULATING_WELLS wells pulse at
    one sample (a plate's stimulators share a power and trigger bank)."""
    wells_at: dict[int, int] = {}
    for _, run in runs:
        plan = run.plan
        if not plan.open_loop:
            continue
        for i in range(run.runner.next_to_schedule, plan.n_trials):
            t = plan.trial(i, 0)
            if t.command is not None:
                wells_at[t.command.sample] = wells_at.get(t.command.sample, 0) + 1
    busiest = max(wells_at.values(), default=0)
    if busiest > MAX_STIMULATING_WELLS:
        raise SafetyViolation(f"{busiest} wells would pulse at one sample; allowed: at most {MAX_STIMULATING_WELLS} "
                              "(the plate's limit)")


def _drive(plate_dir: Path, meta: dict[str, Any], runs: list[tuple[Well, OpenRun]], progress: bool) -> None:
    """Lockstep: one chunk of every running well per round; a fault stops every well in its safe state."""
    check_plate_limits(runs)
    _sigterm_as_interrupt()
    total = sum(run.plan.n_trials for _, run in runs)
    error: BaseException | None = None
    started: list[OpenRun] = []
    wall0, next_report = time.monotonic(), 0.1
    try:
        for _, run in runs:
            run.runner.start()
            started.append(run)
        active = list(started)
        while active:
            for run in active:
                run.runner.iterate()
            active = [run for run in active if run.runner.running()]
            done = sum(run.runner.n_done for run in started)
            if progress and total and done / total >= next_report:
                print(f"plate: {len(started) - len(active)}/{len(started)} wells done, {done}/{total} trials, "
                      f"{time.monotonic() - wall0:.0f} s", file=sys.stderr, flush=True)
                next_report = int(done / total * 10 + 1) / 10
    except BaseException as exc:
        error = exc
        for run in started:
            run.runner.stim.safe_state()
    finally:
        for run in started:
            run.runner.stop()
            run.runner.stim.safe_state()
    for well, run in runs:
        finished = error is None or not run.runner.running()
        end_run(run.runner, run.store, None if finished else error)
    meta["status"] = "complete" if error is None else (
        "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
    if error is not None:
        meta["error"] = f"{type(error).__name__}: {error}"
    _write_meta(plate_dir, meta)
    if error is not None:
        raise error
