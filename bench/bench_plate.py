"""Plate speed (issue 18, item 4): one culture's BSS on sim-events, a 24-well plate of it in one process and split
over the cores, and the voltage rig, measured in one run. Prints each figure and its 100-session projection beside
the issue's targets (one culture <= 60 s, a 24-well plate <= 15 min on 2 cores, the voltage rig <= 10 min).

    python bench/bench_plate.py                    # 1 and 10 sessions (about 15 minutes), voltage rig 1 session
    python bench/bench_plate.py --sessions 100     # the full protocol (about an hour)

A run's time is a start-up (imports, numba cache, the lead-in) plus the same work per session (256 trials and a
rest the simulated rig skips), so each figure is measured at 1 and at N sessions and projected to 100 sessions
from the slope: start-up + 100 x per-session. The projections say so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLATE = Path(__file__).resolve().parents[1] / "plates" / "culture_conditions_24.yaml"


def _rigctl(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rigctl.cli", *args, "--no-progress", "--no-report"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--voltage-sessions", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    print(f"load average at start {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        def project(label: str, target: str, run) -> None:
            short, full = run(1, "a"), run(args.sessions, "b")
            per_session = (full - short) / (args.sessions - 1)
            start_up = short - per_session
            print(f"{label}: 1 session {short:.1f} s, {args.sessions} sessions {full:.1f} s -> start-up {start_up:.1f} s "
                  f"+ {per_session:.2f} s a session -> 100 sessions {(start_up + 100 * per_session) / 60:.1f} min "
                  f"(target {target})", flush=True)

        project("one culture, sim-events", "<= 1 min", lambda n, tag: _rigctl(
            "run", "isomura2023_bss", "--rig", "sim-events", "--sessions", str(n), "--out", f"{tmp}/one{tag}"))
        for workers in (1, args.workers):
            def plate_run(n: int, tag: str, workers: int = workers) -> float:
                plate = Path(tmp) / f"plate{n}.yaml"
                plate.write_text(PLATE.read_text().replace("set: {sessions: 10}", f"set: {{sessions: {n}}}"))
                return _rigctl("run", str(plate), "--rig", "sim-plate", "--workers", str(workers), "--out",
                               f"{tmp}/plate{workers}{tag}")
            project(f"24-well plate, {workers} process(es)", "<= 15 min on 2 cores", plate_run)
        v = _rigctl("run", "isomura2023_bss", "--rig", "sim", "--sessions", str(args.voltage_sessions), "--out",
                    f"{tmp}/voltage")
        print(f"one culture, voltage rig (sim, raw kept around trials), {args.voltage_sessions} session(s): {v:.1f} s "
              f"-> 100 sessions at most {v * 100 / args.voltage_sessions / 60:.1f} min (start-up included; "
              f"target <= 10 min)", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
