"""The BSS protocol on the voltage rig (`rigctl run isomura2023_bss --rig sim`, raw kept around trials), two
rigctl installs side by side (issue 18): seconds per session and the 100-session time, projected from a few
sessions or measured whole.

Each install runs `rigctl run isomura2023_bss --rig sim --seed S --sessions N --no-report` as a subprocess,
alternating before, after, before, after... so that a shared, noisy machine slows both alike. The time of every
session is read off the progress line the run prints when a session ends; a run's figure is the median of its
sessions 2..N (session 1 also carries the start-up: imports, loading the compiled kernels, building the culture).
Printed: every run's sessions, the load average before and after it, the median per install, the projection
start-up + 100 x per-session, and whether the runs' data files are byte-identical (trials.bin, spikes.bin,
stims.bin, raw.bin; raw_index.bin's segments follow the chunk size, so it is compared as the samples it indexes).

    python bench/bench_voltage_rig.py --before BASE_VENV/bin/rigctl [--after rigctl] [--sessions 4] [--repeats 3]
        [--also-chunk-ms 10] [--full]

`--also-chunk-ms C` adds a third line, the candidate with `--chunk-ms C` (what the chunk size alone is worth);
`--full` then runs the candidate's whole 100-session protocol once and prints its wall time. Each install
first runs one untimed session (numba compiles and caches its kernels on a fresh install's first run).

The baseline of issue 18 was main at f1842f4 in its own worktree and venv:

    git worktree add --detach ../wt-base f1842f4 && python3 -m venv ../wt-base/.venv
    ../wt-base/.venv/bin/pip install -e ../wt-base
    python bench/bench_voltage_rig.py --before ../wt-base/.venv/bin/rigctl --also-chunk-ms 10 --full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA_FILES = ("trials.bin", "spikes.bin", "stims.bin", "raw.bin")
SESSIONS_FULL = 100


def run_once(rigctl: str, out: Path, sessions: int, seed: int, extra: list[str]) -> dict:
    """One run; the wall-clock time at which each session ended, read from its progress lines."""
    cmd = [rigctl, "run", "isomura2023_bss", "--rig", "sim", "--seed", str(seed), "--sessions", str(sessions),
           "--out", str(out), "--no-report", *extra]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    ends = []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # not a terminal: one "session k/N done: ..." line per session
        if line.startswith("session ") and " done" in line:
            ends.append(time.perf_counter() - t0)
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    wall = time.perf_counter() - t0
    per_session = [b - a for a, b in zip(ends, ends[1:])]
    return {"wall_s": wall, "session_ends_s": ends, "per_session_s": per_session,
            "session_s": statistics.median(per_session) if per_session else float("nan"),
            "startup_s": ends[0] - (statistics.median(per_session) if per_session else 0.0) if ends else float("nan"),
            "load": (load0, os.getloadavg()[0])}


def kept_raw(run_dir: Path) -> dict[int, bytes]:
    """Kept raw rows by absolute sample (raw_index.bin: first_sample, n_samples, byte offset)."""
    index = np.fromfile(run_dir / "raw_index.bin", np.dtype([("first", "<i8"), ("n", "<i8"), ("offset", "<i8")]))
    n_channels = json.loads((run_dir / "run.json").read_text())["shapes"]["n_electrodes"]
    raw = np.fromfile(run_dir / "raw.bin", "<i2").reshape(-1, n_channels)
    rows = {}
    for first, n, offset in index:
        start = int(offset) // (2 * n_channels)
        for k in range(int(n)):
            rows[int(first) + k] = raw[start + k].tobytes()
    return rows


def same_data(a: Path, b: Path) -> dict[str, bool]:
    out = {name: (a / name).read_bytes() == (b / name).read_bytes() for name in DATA_FILES}
    out["raw samples by index"] = kept_raw(a) == kept_raw(b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="baseline rigctl executable (e.g. a venv of main's commit)")
    ap.add_argument("--after", default=shutil.which("rigctl") or "rigctl", help="candidate rigctl (default: on PATH)")
    ap.add_argument("--sessions", type=int, default=4, help="sessions per timed run (>= 2; default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per install, alternating (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also-chunk-ms", type=float, default=None, help="also time the candidate with this --chunk-ms")
    ap.add_argument("--full", action="store_true", help="then run the candidate's whole 100-session protocol once")
    args = ap.parse_args()
    if args.sessions < 2:
        ap.error("--sessions must be at least 2 (the first session carries the start-up)")
    configs = {"before": (args.before, []), "after": (args.after, [])}
    if args.also_chunk_ms is not None:
        configs[f"after --chunk-ms {args.also_chunk_ms:g}"] = (args.after, ["--chunk-ms", f"{args.also_chunk_ms:g}"])
    work = Path(tempfile.mkdtemp(prefix="bench_voltage_rig_"))
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    print(f"{os.cpu_count()} cores; {args.sessions} sessions per run, seed {args.seed}, {args.repeats} runs each, "
          f"alternating", flush=True)
    try:
        for exe in dict.fromkeys(exe for exe, _ in configs.values()):  # untimed: compiles and caches the kernels
            run_once(exe, work / "warm-up", 1, args.seed, [])
            shutil.rmtree(work / "warm-up")
        for i in range(args.repeats):
            for name, (exe, extra) in configs.items():
                out = work / f"{name.replace(' ', '_')}{i}"
                r = run_once(exe, out, args.sessions, args.seed, extra)
                runs[name].append(r)
                print(f"run {i + 1} {name}: {r['wall_s']:.1f} s wall, sessions "
                      + ", ".join(f"{s:.2f}" for s in r["per_session_s"])
                      + f" s after the first ({r['session_ends_s'][0]:.1f} s); load {r['load'][0]:.2f} -> "
                      f"{r['load'][1]:.2f}", flush=True)
                if i > 0:
                    shutil.rmtree(out, ignore_errors=True)
        figures: dict = {"sessions_per_run": args.sessions, "repeats": args.repeats}
        print(f"\n{'install':<24} {'s / session':>12} {'start-up s':>11} {'100 sessions, projected':>24}")
        for name, rs in runs.items():
            per = statistics.median(r["session_s"] for r in rs)
            start = statistics.median(r["startup_s"] for r in rs)
            projected = start + SESSIONS_FULL * per
            figures[name] = {"session_s": round(per, 3), "startup_s": round(start, 2),
                             "projected_100_s": round(projected, 1),
                             "runs_session_s": [round(r["session_s"], 3) for r in rs],
                             "loads": [[round(x, 2) for x in r["load"]] for r in rs]}
            print(f"{name:<24} {per:>12.2f} {start:>11.1f} {projected:>17.0f} s ({projected / 60:.1f} min)")
        ratio = figures["after"]["session_s"] / figures["before"]["session_s"]
        paired = [a["session_s"] / b["session_s"] for a, b in zip(runs["after"], runs["before"])]
        figures["after_over_before"] = round(ratio, 3)
        figures["after_over_before_paired"] = [round(x, 3) for x in paired]
        print(f"after / before, per session: {ratio:.3f} (medians); run by run, each after with the before just "
              f"ahead of it: " + ", ".join(f"{x:.2f}" for x in paired))
        base = work / "before0"
        for name in configs:
            if name == "before":
                continue
            same = same_data(base, work / f"{name.replace(' ', '_')}0")
            figures[f"same_data_{name}"] = same
            print(f"data of the first run, {name} vs before: " + ", ".join(
                f"{k} {'identical' if v else 'DIFFERENT'}" for k, v in same.items()))
        if args.full:
            r = run_once(args.after, work / "full", SESSIONS_FULL, args.seed, [])
            figures["after_full_100_wall_s"] = round(r["wall_s"], 1)
            figures["after_full_100_load"] = [round(x, 2) for x in r["load"]]
            print(f"after, whole {SESSIONS_FULL}-session run: {r['wall_s']:.1f} s wall ({r['wall_s'] / 60:.1f} min), "
                  f"median session {r['session_s']:.2f} s; load {r['load'][0]:.2f} -> {r['load'][1]:.2f}")
        print(json.dumps(figures))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
