"""A sweep on a local Dask cluster against the same points run one after another, in one run of this script.

The points: 3 seeds x 4 conditions (control, APV, bicuculline, diazepam) of the BSS protocol, 20 sessions
each, on `sim-events`. First every point as `rigctl run` in sequence, then the same points as `rigctl sweep
--workers N`; printed: both wall times, their ratio, and whether every point's trials.bin is byte-identical
between the two. The issue's target on a 2-core machine: the sweep in <= 0.6 x the sequential time.

    python bench/bench_sweep.py [--sessions 20] [--workers 2] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RIGCTL = [sys.executable, "-m", "rigctl.cli"]
DRUGS = ("none", "apv", "bicuculline", "diazepam")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        sweep = work / "sweep.yaml"
        sweep.write_text(f"protocol: isomura2023_bss\nrig: sim-events\nset: {{sessions: {args.sessions}}}\n"
                         f"grid:\n  seed: {list(args.seeds)}\n  drug: [{', '.join(DRUGS)}]\n")
        start = time.perf_counter()
        for seed in args.seeds:
            for drug in DRUGS:
                subprocess.run([*RIGCTL, "run", "isomura2023_bss", "--seed", str(seed), "--drug", drug, "--set",
                                f"sessions={args.sessions}", "--out", str(work / "seq" / f"seed-{seed}_drug-{drug}"),
                                "--no-progress"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sequential = time.perf_counter() - start
        print(f"sequential: {sequential:.1f} s", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run([*RIGCTL, "sweep", str(sweep), "--out", str(work / "sweep"), "--workers", str(args.workers)],
                       check=True, stdout=subprocess.DEVNULL)
        swept = time.perf_counter() - start
        n = len(args.seeds) * len(DRUGS)
        same = all((work / "seq" / name / "trials.bin").read_bytes()
                   == (work / "sweep" / "points" / name / "trials.bin").read_bytes()
                   for name in (f"seed-{s}_drug-{d}" for s in args.seeds for d in DRUGS))
        print(f"{n} points ({len(args.seeds)} seeds x {len(DRUGS)} conditions), {args.sessions} sessions each, "
              f"sim-events, report included")
        print(f"one after another: {sequential:.1f} s")
        print(f"rigctl sweep --workers {args.workers}: {swept:.1f} s (local Dask cluster, start-up included)")
        print(f"ratio sweep / sequential: {swept / sequential:.3f} (target <= 0.6)")
        print(f"trials.bin of every point identical between the two: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
