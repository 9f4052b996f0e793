"""`rigctl sweep SWEEP.yaml`: every point of a sweep as an ordinary run, on a Dask cluster.

Without --scheduler a local cluster of one worker process per core runs here; with it, an existing
cluster (a `dask scheduler` address, a scheduler file, or dask-jobqueue's SLURM/PBS/SGE cluster) runs the
points. Placement, retries and lost workers are Dask's; the driver only submits the points, shows
progress and writes sweep.csv. Killed and started again with the same command, a sweep skips its complete
points, resumes the interrupted ones and runs the rest (rigctl.sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from rigctl.commands import _argtypes
from rigctl.errors import RigctlError
from rigctl.sweep import POINTS_DIR, SWEEP_FILE, Outcome, PointFailed, SweepError, point_figures, run_point, \
    write_results


def _engine():
    try:
        import distributed
    except ImportError:
        raise RigctlError("rigctl sweep needs Dask: pip install 'rigctl[sweep]'") from None
    return distributed


def _client(args: argparse.Namespace):
    distributed = _engine()
    if args.scheduler:
        target = Path(args.scheduler)
        try:
            if target.is_file():
                return distributed.Client(scheduler_file=str(target), timeout="20s"), None
            _refuse_if_closed(args.scheduler)
            return distributed.Client(args.scheduler, timeout="20s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise RigctlError(f"--scheduler {args.scheduler}: cannot reach a Dask scheduler ({exc})") from None
    workers = args.workers or os.cpu_count() or 1
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    return distributed.Client(cluster), cluster


def _refuse_if_closed(address: str) -> None:
    """A tcp:// address where nothing listens is refused at once (Dask itself retries until its timeout)."""
    if "://" not in address:
        raise ValueError("no such scheduler file; allowed: tcp://HOST:PORT or a scheduler file")
    if not address.startswith("tcp://"):
        return
    host, _, port = address[len("tcp://"):].rpartition(":")
    if not port.isdigit():
        raise ValueError("allowed: tcp://HOST:PORT or a scheduler file")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
        pass


def _prepare_dir(out: Path, sweep) -> None:
    """Create the sweep directory, or check that it belongs to this sweep (same protocol, rig, --set)."""
    record = out / SWEEP_FILE
    if record.exists():
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise SweepError(f"{record}: unreadable ({exc}); choose another --out") from None
        new = sweep.to_json()
        if (old.get("defaults"), old.get("set")) != (new["defaults"], new["set"]):
            raise SweepError(f"--out {out}: holds a sweep of other settings (protocol, rig or set differ: "
                             f"{old.get('defaults')} {old.get('set')}); choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"--out {out}: exists and is not a sweep directory; choose another --out")
    try:
        (out / POINTS_DIR).mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
        os.replace(tmp, record)
    except OSError as exc:
        raise SweepError(f"--out {out}: cannot write the sweep directory ({exc.strerror or exc})") from None


def _eta(done_seconds: list[float], remaining: int, workers: int) -> str:
    if not done_seconds or remaining == 0:
        return "?" if remaining else "0 s"
    seconds = sum(done_seconds) / len(done_seconds) * remaining / max(1, workers)
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _sweep(args: argparse.Namespace) -> int:
    from rigctl.sweep_file import load_sweep

    sweep = load_sweep(args.sweep_file)
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{sweep.source.stem}"
    retries = sweep.retries if args.retries is None else args.retries
    client, cluster = _client(args)  # before the directory: an unreachable scheduler leaves nothing behind
    outcomes = {p.name: Outcome(p, "not run") for p in sweep.points}
    try:
        _prepare_dir(out, sweep)
        distributed = _engine()
        workers = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())  # points at once
        print(f"rigctl sweep: {len(sweep.points)} points into {out}; {workers} workers "
              f"({'scheduler ' + args.scheduler if args.scheduler else 'local cluster'}); "
              f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        futures = {client.submit(run_point, p, str(out.resolve()), sweep.defaults, sweep.common_set,
                                 key=f"rigctl-point-{p.name}-{time.time_ns()}", retries=retries, pure=False): p
                   for p in sweep.points}
        run_seconds: list[float] = []
        done = failed = 0
        for future in distributed.as_completed(futures):
            point = futures[future]
            try:
                result = future.result()
            except PointFailed as exc:
                outcomes[point.name] = Outcome(point, "failed", error=str(exc))
                failed += 1
                line = f"FAILED {point.name}: {exc}"
            except Exception as exc:  # noqa: BLE001  (a lost worker, after Dask's retries)
                outcomes[point.name] = Outcome(point, "failed", error=f"{type(exc).__name__}: {exc}")
                failed += 1
                line = f"FAILED {point.name}: {type(exc).__name__}: {exc}"
            else:
                done += 1
                if result["action"] != "skipped":
                    run_seconds.append(result["seconds"])
                outcomes[point.name] = Outcome(point, "complete", result["action"], result["seconds"],
                                               figures=point_figures(out / POINTS_DIR / point.name))
                line = f"{point.name} {result['action']} ({result['seconds']:.1f} s)"
            remaining = len(futures) - done - failed
            running = min(remaining, workers, sum(len(v) for v in client.processing().values()))
            print(f"[{done + failed}/{len(futures)}] done {done}, running {running}, failed {failed}, "
                  f"ETA {_eta(run_seconds, remaining, workers)}: {line}", file=sys.stderr, flush=True)
            write_results(out, list(outcomes.values()), sweep.param_keys)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    path = write_results(out, list(outcomes.values()), sweep.param_keys)
    n_failed = sum(o.status == "failed" for o in outcomes.values())
    print(f"rigctl sweep: {len(outcomes) - n_failed} complete, {n_failed} failed: {path}", file=sys.stderr)
    print(path)
    return 1 if n_failed else 0


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run every point of a sweep file (Dask: local cluster or --scheduler)",
        description="Run a protocol over a grid or list of parameters (seed, drug, protocol, rig, any protocol "
                    "field), each point an ordinary run directory under OUT/points/, on a Dask cluster: a local one "
                    "by default, or an existing one with --scheduler. Started again with the same command, a sweep "
                    "skips complete points and resumes interrupted ones. Writes OUT/sweep.csv (one row per point: "
                    "parameters, status, run time, figures); `rigctl report OUT` plots them. Needs the [sweep] "
                    "extra. Exit 1 if a point failed (its error is in sweep.csv).")
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file (docs/sweeps.md)")
    p.add_argument("--workers", type=_argtypes.int_in(1, 256), default=None,
                   help="worker processes of the local cluster (default: one per core)")
    p.add_argument("--scheduler", metavar="ADDRESS|FILE", default=None,
                   help="an existing Dask scheduler (tcp://host:8786) or scheduler file, instead of a local cluster")
    p.add_argument("--out", default=None, help="sweep directory (default runs/sweep-<file name>)")
    p.add_argument("--retries", type=_argtypes.int_in(0, 10), default=None,
                   help="times Dask retries a failed point (default: the sweep file's retries, else 1)")
    p.set_defaults(func=_sweep)
