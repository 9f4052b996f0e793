"""Pong on the simulated culture: does play improve, and does it need the culture's control and its plasticity?

Runs `protocols/pong.yaml` on `sim-events` (about 20 minutes of task time each) for seeds 0, 1, 2 in three
conditions: the culture decoder, the random-action control (`--set decoder=random`) and plasticity blocked
(`--drug apv`), as `rigctl run` subprocesses (two at a time), then prints per run and per condition the rallies,
mean hits per rally and ace fraction in the first 5 minutes and in the rest (`rigctl.tasks.pong.pong_summary`).

    python bench/bench_pong.py                       # 9 runs, a few minutes on 2 cores
    python bench/bench_pong.py --seeds 0 --jobs 1 --out /tmp/pong_bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rigctl.store import load_run_meta, read_trials
from rigctl.tasks.pong import pong_summary

CONDITIONS = {"culture": [], "random": ["--set", "decoder=random"], "apv": ["--drug", "apv"]}


def run_one(condition: str, seed: int, out: Path) -> tuple[str, int, Path, float]:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "rigctl.cli", "run", "pong", "--rig", "sim-events", "--seed", str(seed),
           "--out", str(out), "--no-progress", "--no-report", *CONDITIONS[condition]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return condition, seed, out, time.monotonic() - t0


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="bench_pong_"))
    jobs = [(c, s, base / f"{c}-seed{s}") for c in CONDITIONS for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: run_one(*j), jobs))
    header = (f"{'condition':<9} {'seed':>4} {'task_min':>8} {'trials':>6} | {'rallies':>7} {'hits/rally':>10} "
              f"{'aces':>5} | {'rallies':>7} {'hits/rally':>10} {'aces':>5} | {'wall_s':>6}")
    print(f"{'':<31}| first 5 min{'':<14}| rest (5-20 min){'':<10}|")
    print(header)
    per_condition: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    for condition, seed, out, wall in done:
        trials = read_trials(out)
        fs = float(load_run_meta(out)["sample_rate_hz"])
        s = pong_summary(trials, 5.0, fs)
        per_condition[condition].append(s)
        minutes = (int(trials["sample"][-1]) - int(trials["sample"][0])) / fs / 60.0
        print(f"{condition:<9} {seed:>4} {minutes:>8.1f} {len(trials):>6} | {s['rallies_first']:>7} "
              f"{_fmt(s['hits_per_rally_first']):>10} {_fmt(s['ace_fraction_first']):>5} | {s['rallies_rest']:>7} "
              f"{_fmt(s['hits_per_rally_rest']):>10} {_fmt(s['ace_fraction_rest']):>5} | {wall:>6.0f}")
    print()
    print("mean over seeds (each seed's rally mean, then the mean of seeds; +- = SD across seeds)")
    for condition, rows in per_condition.items():
        parts = []
        for key in ("hits_per_rally_first", "ace_fraction_first", "hits_per_rally_rest", "ace_fraction_rest"):
            v = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
            parts.append(f"{key} {v.mean():.2f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
        print(f"{condition:<9} " + "; ".join(parts))
    print(f"\nruns in {base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
