"""`rigctl bench latency`: closed-loop latency of the loop on a rig (see docs/latency.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rigctl.commands._argtypes import chunk_ms, finite_float_in, int_in, output_file, sample_rate_hz, seed
from rigctl.commands.bench import add_bench_command
from rigctl.errors import RigctlError


def _latency(args: argparse.Namespace) -> int:
    from rigctl.benchmarks.latency import measure_latency

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
        try:
            print(f"histogram: {result.plot(args.png)}")
        except OSError as exc:
            raise RigctlError(f"--png {args.png}: cannot write ({exc.strerror or exc})") from None
    print(json.dumps(f))
    return 0


def register(sub) -> None:
    p = add_bench_command("latency", "closed-loop latency from a chunk's arrival to a spike-triggered "
                                     "stimulation command handed to the driver, on any rig")
    p.add_argument("--rig", default="sim", help="sim, sim-events, playback (synthetic voltage at any channel "
                                                 "count and rate) or a rig file (default: sim)")
    p.add_argument("--channels", type=int_in(48, 4096), default=64,
                   help="channels, 48 to 4096: 32 protocol electrodes + 16 for the rule (sim with other than 64 ch "
                        "uses playback)")
    p.add_argument("--rate-hz", type=sample_rate_hz, default=25000.0, help="sample rate (1000 to 100000 Hz; "
                                                                          "default 25000)")
    p.add_argument("--chunk-ms", type=chunk_ms, default=1.0, help="chunk length (0.1 to 10000 ms; default 1)")
    p.add_argument("--seconds", type=finite_float_in(2.0, 3600.0), default=10.0,
                   help="seconds of rig time (2 to 3600; default 10)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--realtime", action="store_true", help="pace the rig to the wall clock")
    p.add_argument("--png", type=output_file, default=Path("latency.png"),
                   help="histogram PNG, in an existing directory (default latency.png)")
    p.set_defaults(func=_latency)
