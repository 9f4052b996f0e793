"""The BSS main job run by two rigctl installs side by side: wall time of each, and whether their data agree.

Two installs (for example the last release in one venv and a working tree in another) each run
`rigctl run isomura2023_bss --rig sim-events --seed S --no-report`, alternating A, B, A, B... so that a
shared, noisy machine slows both alike. Printed: every run's wall time, the median per install and the
ratio B / A, then for the first run of each whether trials.bin, spikes.bin and stims.bin are byte-identical
(and, if not, the first differing trial).

    python bench/compare_main_job.py --a OLD_VENV/bin/rigctl --b NEW_VENV/bin/rigctl [--repeats 2] [--sessions 100]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_FILES = ("trials.bin", "spikes.bin", "stims.bin")


def run_once(rigctl: str, out: Path, sessions: int, seed: int) -> float:
    """Wall seconds of one main-job run (the report is left out: it is not the loop being compared)."""
    cmd = [rigctl, "run", "isomura2023_bss", "--rig", "sim-events", "--seed", str(seed), "--sessions",
           str(sessions), "--out", str(out), "--no-progress", "--no-report"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="baseline rigctl executable")
    ap.add_argument("--b", required=True, help="candidate rigctl executable")
    ap.add_argument("--repeats", type=int, default=2, help="runs per install (default 2)")
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="compare_main_job_"))
    times: dict[str, list[float]] = {"a": [], "b": []}
    try:
        for i in range(args.repeats):
            for name in ("a", "b"):
                seconds = run_once(getattr(args, name), work / f"{name}{i}", args.sessions, args.seed)
                times[name].append(seconds)
                print(f"run {i + 1} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        a, b = statistics.median(times["a"]), statistics.median(times["b"])
        print(f"a = {args.a}\nb = {args.b}\nsessions {args.sessions}, seed {args.seed}, {args.repeats} runs each, "
              f"alternating")
        print(f"median wall time: a {a:.1f} s, b {b:.1f} s, b / a = {b / a:.3f}")
        print("runs: a " + ", ".join(f"{t:.1f}" for t in times["a"]) + "; b " + ", ".join(f"{t:.1f}" for t in times["b"]))
        same = True
        for name in DATA_FILES:
            da, db = digest(work / "a0" / name), digest(work / "b0" / name)
            same &= da == db
            print(f"{name}: {'identical' if da == db else 'DIFFERENT'} ({(work / 'a0' / name).stat().st_size} "
                  f"vs {(work / 'b0' / name).stat().st_size} bytes)")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
