"""Simulated-rig benchmarks (issue 7): render speed, whole voltage-mode run speed, events-mode full run,
and the agreement of the two modes' evoked counts for one seed. Prints figures, ends with one JSON line.

    python bench/bench_sim_rig.py [--sessions 1] [--full-events] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rigctl.protocol import BssSchedule, load_protocol
from rigctl.session import RunOptions, start_run
from rigctl.sim.rig import SimRig
from rigctl.store import read_trials


def rig_alone_rtf(seconds: float, seed: int) -> float:
    """SimRig.read() in voltage mode with the BSS pulses scheduled: seconds of data per wall second."""
    rig = SimRig(seed=seed, mode="voltage")
    schedule = BssSchedule(load_protocol("isomura2023_bss"), seed, rig.sample_rate_hz)
    rig.start()
    rig.read()  # compile
    nxt = 0
    t0 = time.perf_counter()
    end = rig.now_sample + int(seconds * rig.sample_rate_hz)
    while rig.now_sample < end:
        while schedule.trial_sample(nxt) < rig.now_sample + int(0.2 * rig.sample_rate_hz):
            cmd = schedule.trial(nxt).command
            if cmd is not None and cmd.sample >= rig.culture.now_sample:
                rig.schedule(cmd)
            nxt += 1
        rig.read()
    return seconds / (time.perf_counter() - t0)


def timed_run(rig: str, sessions: int, seed: int, out: Path, protocol: str = "isomura2023_bss") -> tuple[float, Path]:
    t0 = time.perf_counter()
    start_run(protocol, RunOptions(rig=rig, seed=seed, sessions=sessions, progress=False), out)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1, help="sessions for the voltage-mode run and mode agreement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-seconds", type=float, default=30.0)
    ap.add_argument("--full-events", action="store_true", help="also time the full 100-session sim-events run")
    args = ap.parse_args()
    figures: dict = {}
    rtf = rig_alone_rtf(args.render_seconds, args.seed)
    figures["rig_alone_rtf"] = round(rtf, 1)
    print(f"rig alone (voltage, 64 ch x 25 kHz, BSS pulses): {rtf:.1f}x real time (target >= 20x)")
    protocol = load_protocol("isomura2023_bss")
    cycle_s = protocol.trials_per_session * protocol.isi_s + protocol.rest_s
    with tempfile.TemporaryDirectory() as tmp:
        wall_v, out_v = timed_run("sim", args.sessions, args.seed, Path(tmp) / "voltage")
        recorded_s = args.sessions * protocol.trials_per_session * protocol.isi_s
        figures["voltage_run_wall_s"] = round(wall_v, 1)
        figures["voltage_run_rtf_recorded"] = round(recorded_s / wall_v, 1)
        figures["voltage_run_rtf_protocol"] = round(args.sessions * cycle_s / wall_v, 1)
        print(f"whole voltage-mode run, {args.sessions} session(s): {wall_v:.1f} s wall; "
              f"{recorded_s / wall_v:.1f}x real time over the recorded {recorded_s:.0f} s "
              f"({args.sessions * cycle_s / wall_v:.1f}x over the protocol's {args.sessions * cycle_s:.0f} s "
              f"including rests) (target >= 10x)")
        wall_e, out_e = timed_run("sim-events", args.sessions, args.seed, Path(tmp) / "events")
        tv, te = read_trials(out_v), read_trials(out_e)
        cv, ce = tv["counts"].astype(float), te["counts"].astype(float)
        same_schedule = bool(np.array_equal(tv["stimuli"], te["stimuli"]) and np.array_equal(tv["sample"], te["sample"]))
        corr = float(np.corrcoef(cv.ravel(), ce.ravel())[0, 1])
        per_trial_v, per_trial_e = cv.sum(axis=1), ce.sum(axis=1)
        figures.update({
            "modes_same_schedule": same_schedule,
            "modes_count_correlation": round(corr, 4),
            "modes_mean_evoked_voltage": round(float(per_trial_v.mean()), 3),
            "modes_mean_evoked_events": round(float(per_trial_e.mean()), 3),
            "modes_abs_diff_per_electrode_trial": round(float(np.abs(cv - ce).mean()), 4),
            "modes_exact_cells": round(float((cv == ce).mean()), 4),
        })
        print(f"mode agreement, seed {args.seed}, {len(tv)} trials: same schedule {same_schedule}; "
              f"evoked spikes per trial {per_trial_v.mean():.2f} (voltage, detected) vs {per_trial_e.mean():.2f} "
              f"(events); per electrode-trial correlation {corr:.3f}, mean |diff| "
              f"{figures['modes_abs_diff_per_electrode_trial']}, identical cells {figures['modes_exact_cells']:.1%}")
        if args.full_events:
            wall_full, _ = timed_run("sim-events", protocol.sessions, args.seed, Path(tmp) / "full")
            figures["events_full_run_wall_s"] = round(wall_full, 1)
            print(f"full {protocol.sessions}-session sim-events run: {wall_full:.1f} s wall (target <= 120 s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
