"""`rigctl bench ...`: benchmarks that print figures and end with one JSON line.

`bench` is a sub-command group. This module owns `bench throughput`; other modules add their own
entries (e.g. `bench latency`) by calling `add_bench_command(name, help)` from their `register(sub)`:

    from rigctl.commands.bench import add_bench_command
    def register(sub):
        p = add_bench_command("latency", "closed-loop latency on a rig")
        p.add_argument(...); p.set_defaults(func=...)

The CLI imports command modules in name order, and `bench` sorts before most; `add_bench_command`
creates the group on first use whichever module calls first.
"""

from __future__ import annotations

import argparse
import json

_GROUP: dict[str, argparse._SubParsersAction] = {}
_PENDING: list[tuple[str, str, list]] = []


def _group(sub=None) -> argparse._SubParsersAction:
    if "bench" not in _GROUP:
        if sub is None:
            raise RuntimeError("the bench group is created by rigctl.commands.bench.register(sub) first")
        p = sub.add_parser("bench", help="benchmarks (throughput, latency); the last line printed is JSON",
                           description="Benchmarks that print their figures and end with one JSON line.")
        p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
        _GROUP["bench"] = p.add_subparsers(dest="bench_command", metavar="BENCH")
    return _GROUP["bench"]


def add_bench_command(name: str, help: str) -> argparse.ArgumentParser:
    """Add `rigctl bench NAME`; returns its parser (add arguments and `set_defaults(func=...)`)."""
    return _group().add_parser(name, help=help, description=help)


def _throughput(args: argparse.Namespace) -> int:
    from rigctl.signal.throughput import measure_throughput
    result = measure_throughput(args.channels, args.rate_hz, args.seconds, args.chunk_ms, args.seed)
    print(f"signal path throughput: {args.channels} ch x {args.rate_hz:g} Hz, {args.chunk_ms:g}-ms chunks, "
          f"{args.seconds:g} s of data")
    print(f"  wall {result['wall_s']:.3f} s for {result['data_s']:.3f} s of data -> real-time factor "
          f"{result['rtf']:.1f}x; per chunk median {result['chunk_p50_us']:.1f} us, p99 "
          f"{result['chunk_p99_us']:.1f} us; {result['spikes']} spikes")
    print(json.dumps(result))
    return 0


def register(sub) -> None:
    _GROUP.clear()  # a new top-level parser (e.g. a second main() in one process) gets a new group
    _group(sub)
    p = add_bench_command("throughput", "throughput of the online signal path (filter, blanking, detection) "
                                        "on the simulated rig's signals, on one core")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--rate-hz", type=float, default=25000.0)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of data (default 5)")
    p.add_argument("--chunk-ms", type=float, default=1.0, help="chunk length in ms (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_throughput)
