"""Plate speed (issue 18, item 4): one culture's BSS on sim-events, a 24-well plate of it in one process and split
over the cores, and the voltage rig, measured in one run. Prints each figure and its 100-session projection beside
the issue's targets (one culture <= 60 s, a 24-well plate <= 15 min on 2 cores, the voltage rig <= 10 min).

    python bench/bench_plate.py                    # 10 sessions (plate: about 4 minutes), voltage rig 1 session
    python bench/bench_plate.py --sessions 100     # the full protocol (about an hour)

A run's time grows linearly with its sessions (every session is the same work: 256 trials and a rest the
simulated rig skips), so 100-session figures are projected from the sessions run, and say so.
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
    scale = 100.0 / args.sessions
    print(f"load average at start {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        one = _rigctl("run", "isomura2023_bss", "--rig", "sim-events", "--sessions", str(args.sessions),
                      "--out", f"{tmp}/one")
        print(f"one culture, sim-events, {args.sessions} sessions: {one:.1f} s -> 100 sessions {one * scale:.0f} s "
              f"(target <= 60 s)")
        plate_text = PLATE.read_text().replace("set: {sessions: 10}", f"set: {{sessions: {args.sessions}}}")
        plate = Path(tmp) / "plate.yaml"
        plate.write_text(plate_text)
        for workers in (1, args.workers):
            s = _rigctl("run", str(plate), "--rig", "sim-plate", "--workers", str(workers), "--out",
                        f"{tmp}/plate{workers}")
            print(f"24-well plate, {args.sessions} sessions, {workers} process(es): {s:.0f} s -> 100 sessions "
                  f"{s * scale / 60:.1f} min (target <= 15 min on 2 cores)")
        v = _rigctl("run", "isomura2023_bss", "--rig", "sim", "--sessions", str(args.voltage_sessions), "--out",
                    f"{tmp}/voltage")
        print(f"one culture, voltage rig (sim, raw kept around trials), {args.voltage_sessions} session(s): {v:.1f} s "
              f"-> 100 sessions {v * 100 / args.voltage_sessions / 60:.1f} min (target <= 10 min)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
