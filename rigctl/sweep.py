"""Sweeps: many ordinary runs of one protocol over a grid or list of parameters, each its own run directory.

A sweep file names a protocol and a rig, fields set on every point (as `--set`), and the points: a
cartesian `grid`, a `points` list, or both (each listed point combined with every grid point). A point is
one `rigctl run` in a subprocess, so a point that crashes or is killed takes nothing else with it, and the
run directory, resume and report are exactly those of a run started by hand. Which machine runs a point,
retries and failures are the distributed engine's (rigctl.commands.sweep hands `run_point` to Dask); this
module plans the points and runs one of them.

Idempotent by construction: a point whose run directory is complete and reported is skipped, a point with
an interrupted run directory is resumed (`rigctl run --resume`, byte-identical on the simulated rig), and a
run directory is only ever written by the process holding its lock (rigctl.store.RunLock), so a sweep
started again while a killed sweep's runs still finish waits for them instead of running a point twice.
"""

from __future__ import annotations

import csv
import ctypes
import fcntl
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigctl.errors import RigctlError
from rigctl.store import load_run_meta

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "sweep.csv"
POINTS_DIR = "points"
RUN_KEYS = ("protocol", "rig", "seed", "drug")  # point keys that are `rigctl run` arguments; others are --set
MAX_POINTS = 100_000
_SLUG = re.compile(r"[^A-Za-z0-9.+-]+")


class SweepError(RigctlError):
    """A sweep file or sweep directory that cannot be used; one line naming the place."""


class PointFailed(Exception):
    """A point's `rigctl run` failed: its exit code and the last lines it printed (raised on the worker, so
    the engine may retry it, and reported by the driver)."""


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its parameters in declaration order and its run directory's name."""

    name: str
    params: dict[str, Any]

    def run_args(self, defaults: dict[str, Any], common_set: dict[str, Any]) -> list[str]:
        """`rigctl run` arguments for a fresh start (the protocol first)."""
        values = {**defaults, **{k: v for k, v in self.params.items() if k in RUN_KEYS}}
        args = [str(values["protocol"]), "--rig", str(values["rig"])]
        if values.get("seed") is not None:
            args += ["--seed", str(values["seed"])]
        if values.get("drug") is not None:
            args += ["--drug", str(values["drug"])]
        for setting in self.overrides(common_set):
            args += ["--set", setting]
        return args

    def overrides(self, common_set: dict[str, Any]) -> tuple[str, ...]:
        """The point's protocol fields as `--set FIELD=VALUE` strings (the sweep's `set`, then its own)."""
        sets = {**common_set, **{k: v for k, v in self.params.items() if k not in RUN_KEYS}}
        return tuple(f"{key}={_yaml_scalar(value)}" for key, value in sets.items())


def _yaml_scalar(value: Any) -> str:
    """A value as `--set` parses it back (YAML): lists and mappings in flow style, strings as they are,
    NaN and infinities in YAML's spelling (so the protocol's validation names them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if value != value else (".inf" if value > 0 else "-.inf")
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def _slug(value: Any) -> str:
    text = _yaml_scalar(value) if not isinstance(value, str) else value
    return _SLUG.sub("_", text).strip("_")[:40] or "x"


def point_name(params: dict[str, Any]) -> str:
    """`seed-1_drug-apv`: readable, from the parameters in declaration order (a protocol path by its stem)."""
    parts = []
    for key, value in params.items():
        if key in ("protocol", "rig") and isinstance(value, str):
            value = Path(value).stem if value.endswith((".yaml", ".yml")) else value
        parts.append(f"{_slug(key.replace('.', '-'))}-{_slug(value)}")
    return "_".join(parts) or "point"


def expand(grid: dict[str, list[Any]], points: list[dict[str, Any]]) -> list[Point]:
    """Every listed point (or one empty point) combined with every grid point; names unique."""
    listed = points or [{}]
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    if len(listed) * len(combos) > MAX_POINTS:
        raise SweepError(f"the sweep has {len(listed) * len(combos)} points; allowed: at most {MAX_POINTS}")
    out: list[Point] = []
    seen: dict[str, dict[str, Any]] = {}
    for item in listed:
        for combo in combos:
            params = {**item, **dict(zip(keys, combo))}
            name = point_name(params)
            if name in seen:
                raise SweepError(f"points {seen[name]} and {params} get the same run directory name '{name}'; "
                                 "give them parameters that differ")
            seen[name] = params
            out.append(Point(name, params))
    return out


# ---- one point, on a worker -------------------------------------------------------------------------

def point_state(run_dir: Path) -> str:
    """'new' (no run directory yet), 'complete' (finished and reported) or 'resume' (anything else)."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    try:
        meta = load_run_meta(run_dir)
    except RigctlError:
        return "resume"  # `run --resume` names what is wrong with it
    if meta.get("status") == "complete" and (run_dir / "summary.json").exists():
        return "complete"
    return "resume"


def wait_for_writer(run_dir: Path) -> None:
    """Block until no process writes `run_dir` (a run of an earlier, killed sweep may still be finishing):
    take its lock and give it back. The kernel wakes us when the writer exits, however it exits."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the worker that started it dies (Linux), so a run never
    outlives its worker unnoticed; SIGTERM stops a run cleanly (status interrupted, resumable)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_point(point: Point, sweep_dir: str, defaults: dict[str, Any], common_set: dict[str, Any]) -> dict[str, Any]:
    """Run, resume or skip one point (called on a Dask worker). Returns what happened and how long it took;
    raises PointFailed if `rigctl run` fails."""
    run_dir = Path(sweep_dir) / POINTS_DIR / point.name
    if run_dir.is_dir():
        wait_for_writer(run_dir)
    state = point_state(run_dir)
    if state == "complete":
        return {"name": point.name, "action": "skipped", "seconds": 0.0}
    if state == "new":
        args = ["run", *point.run_args(defaults, common_set), "--out", str(run_dir)]
    else:
        args = ["run", "--resume", str(run_dir)]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rigctl.cli", *args, "--no-progress"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_die_with_parent)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise PointFailed(f"rigctl {' '.join(args[:2])} exited {proc.returncode}: {tail[-600:]}")
    return {"name": point.name, "action": "started" if state == "new" else "resumed", "seconds": round(seconds, 3)}


# ---- results -----------------------------------------------------------------------------------------

def point_figures(run_dir: Path) -> dict[str, Any]:
    """The headline figures of a point's summary.json (those its protocol kind has)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    figures: dict[str, Any] = {k: summary.get(k) for k in ("trials", "mean_evoked_per_trial")}
    ensembles = summary.get("ensembles") or {}
    if "separation_last10" in ensembles:
        figures["separation_last10"] = ensembles["separation_last10"]
    online = ((summary.get("model") or {}).get("free_energy_fit") or {}).get("online") or {}
    energy = [x for x in online.get("L") or [] if isinstance(x, (int, float))]
    if energy:
        figures["L_first"], figures["L_last"] = energy[0], energy[-1]
    err = [x for x in online.get("err_x") or [] if isinstance(x, (int, float)) and math.isfinite(x)]
    if err:
        figures["err_x_last10"] = round(sum(err[-10:]) / len(err[-10:]), 5)
    response = summary.get("response") or {}
    if "gain" in response:
        figures["gain"] = round(response["gain"], 4)
        for i in range(2):
            figures[f"g{i + 1}_size"] = response["ensemble_sizes"][i]
            ratio, share = response["source_ratio"][i], response["own_stim_share"][i]
            figures[f"g{i + 1}_source_ratio"] = None if ratio is None else round(ratio, 3)
            figures[f"g{i + 1}_own_stim_share"] = None if share is None else round(share, 3)
        figures["spont_per_window"] = round(response["spont_per_window"], 4)
    task = summary.get("task") or {}
    figures.update({k: task[k] for k in TASK_FIGURES if k in task})
    return figures


TASK_FIGURES = ("episodes", "success_first10", "success_last10", "median_steps_first10", "median_steps_last10",
                "rallies", "hits_per_rally_first", "hits_per_rally_rest", "ace_fraction_first", "ace_fraction_rest")
RESPONSE_FIGURES = ("gain", "g1_size", "g2_size", "g1_source_ratio", "g2_source_ratio", "g1_own_stim_share",
                    "g2_own_stim_share", "spont_per_window")
FIGURE_COLUMNS = ("trials", "mean_evoked_per_trial", "separation_last10", *RESPONSE_FIGURES, "L_first", "L_last",
                  "err_x_last10", *TASK_FIGURES)


@dataclass
class Outcome:
    """What the driver knows of one point at the end of a sweep."""

    point: Point
    status: str  # complete / failed / not run
    action: str = ""  # started / resumed / skipped
    seconds: float | None = None
    error: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def write_results(sweep_dir: Path, outcomes: list[Outcome], param_keys: list[str],
                  results_file: str = RESULTS_FILE) -> Path:
    """sweep.csv: one row per point, its parameters, status, run time and figures (atomically replaced)."""
    path = Path(sweep_dir) / results_file
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["point", *param_keys, "status", "action", "seconds", *FIGURE_COLUMNS, "error"])
        for o in outcomes:
            writer.writerow([o.point.name, *(_yaml_scalar(o.point.params.get(k, "")) if k in o.point.params else ""
                                             for k in param_keys),
                             o.status, o.action, "" if o.seconds is None else o.seconds,
                             *("" if o.figures.get(c) is None else o.figures[c] for c in FIGURE_COLUMNS), o.error])
    os.replace(tmp, path)
    return path
