"""`rigctl bench latency`: closed-loop latency of the loop on a rig (see docs/latency.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rigctl.commands.bench import add_bench_command
from rigctl.errors import RigctlError


def _latency(args: argparse.Namespace) -> int:
    from rigctl.latency import measure_latency

    if args.channels < 48:
        raise RigctlError(f"--channels {args.channels}: allowed: 48 or more (32 protocol electrodes + 16 for the rule)")
    if args.seconds < 2:
        raise RigctlError(f"--seconds {args.seconds}: allowed: 2 or more")
    result = measure_latency(args.rig, args.channels, args.rate_hz, args.chunk_ms, args.seconds, args.seed,
                             realtime=args.realtime)
    f = result.figures()
    print(f"closed-loop latency on {result.rig}: {result.channels} ch x {result.rate_hz:g} Hz, "
          f"{args.chunk_ms:g}-ms chunks, {args.seconds:g} s of rig time in {result.wall_s:.1f} s wall")
    print("  (chunk arrival -> spike-triggered command handed to the stimulator driver)")
    if f["n"]:
        print(f"  n={f['n']}  median {f['p50_us']} us  p99 {f['p99_us']} us  max {f['max_us']} us")
    print(result.histogram_text())
    if f["n"] and args.png:
        print(f"histogram: {result.plot(args.png)}")
    print(json.dumps(f))
    return 0


def register(sub) -> None:
    p = add_bench_command("latency", "closed-loop latency from a chunk's arrival to a spike-triggered "
                                     "stimulation command handed to the driver, on any rig")
    p.add_argument("--rig", default="sim", help="sim, sim-events, playback (synthetic voltage at any channel "
                                                 "count and rate) or a rig file (default: sim)")
    p.add_argument("--channels", type=int, default=64, help="channels (sim with other than 64 ch uses playback)")
    p.add_argument("--rate-hz", type=float, default=25000.0)
    p.add_argument("--chunk-ms", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of rig time (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--realtime", action="store_true", help="pace the rig to the wall clock")
    p.add_argument("--png", type=Path, default=Path("latency.png"), help="histogram PNG (default latency.png)")
    p.set_defaults(func=_latency)
