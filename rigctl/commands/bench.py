"""`rigctl bench ...`: benchmarks that print figures and end with one JSON line.

`bench` is a sub-command group. This module owns `bench throughput`; other command modules add their
own entries (e.g. `bench latency`) from their `register(sub)` with `add_bench_command`:

    from rigctl.commands.bench import add_bench_command

    def register(sub) -> None:
        p = add_bench_command("latency", "closed-loop latency on a rig")   # or (sub, name, help)
        p.add_argument("--rig", required=True)
        p.set_defaults(func=run_latency)

The group is created on the top-level `sub` by whichever registers first and is stored on that `sub`
object, so every parser the CLI builds (tests call `main()` many times) gets its own group. The
two-argument form uses the group of the parser being built (the last one `bench` registered with),
which works because the CLI registers modules in name order and `bench` sorts before `bench_*`;
pass `sub` explicitly from a module whose name sorts before `bench`.
"""

from __future__ import annotations

import argparse
import json

from rigctl.commands._argtypes import chunk_ms, finite_float_in, int_in, sample_rate_hz, seed

#: seconds of data (or of reading) a benchmark may ask for: enough for one warm-up, at most ten minutes.
BENCH_SECONDS = finite_float_in(0.1, 600.0)
#: channels the throughput bench may ask for: beyond one 4,096-channel array, up to a MaxTwo plate (6 x 1,024) and more.
BENCH_CHANNELS = int_in(1, 8192)

_ATTR = "_rigctl_bench_group"
_current: list = [None]  # the `sub` of the parser being built (set by register below)


def _group(sub) -> argparse._SubParsersAction:
    group = getattr(sub, _ATTR, None)
    if group is None:
        p = sub.add_parser("bench", help="benchmarks (throughput, latency); the last line printed is JSON",
                           description="Benchmarks that print their figures and end with one JSON line.")
        group = p.add_subparsers(dest="bench_command", metavar="BENCH")
        group.required = True
        setattr(sub, _ATTR, group)
    return group


def add_bench_command(*args: object) -> argparse.ArgumentParser:
    """`add_bench_command([sub,] name, help)`: add `rigctl bench NAME` and return its parser (add
    arguments and `set_defaults(func=callable(args) -> int)`)."""
    if len(args) == 3:
        sub, name, help_text = args
    elif len(args) == 2:
        (name, help_text), sub = args, _current[0]
        if sub is None:
            raise RuntimeError("add_bench_command(name, help) before rigctl.commands.bench.register(sub); "
                               "pass sub explicitly")
    else:
        raise TypeError("add_bench_command([sub,] name, help)")
    return _group(sub).add_parser(str(name), help=str(help_text), description=str(help_text))


def _throughput(args: argparse.Namespace) -> int:
    from rigctl.benchmarks.throughput import measure_throughput
    result = measure_throughput(args.channels, args.rate_hz, args.seconds, args.chunk_ms, args.seed,
                                threads=args.threads)
    print(f"signal path throughput: {args.channels} ch x {args.rate_hz:g} Hz, {args.chunk_ms:g}-ms chunks, "
          f"{args.seconds:g} s of data, {result['threads']} thread(s)")
    print(f"  wall {result['wall_s']:.3f} s for {result['data_s']:.3f} s of data -> real-time factor "
          f"{result['rtf']:.1f}x; per chunk median {result['chunk_p50_us']:.1f} us, p99 "
          f"{result['chunk_p99_us']:.1f} us; {result['spikes']} spikes")
    print(json.dumps(result))
    return 0


def register(sub) -> None:
    _current[0] = sub  # a new top-level parser (e.g. a second main() in one process) gets a new group
    p = add_bench_command(sub, "throughput", "throughput of the online signal path (filter, blanking, detection) "
                                        "on the simulated rig's signals")
    p.add_argument("--channels", type=BENCH_CHANNELS, default=64, help="channels (1 to 8192; default 64)")
    p.add_argument("--rate-hz", type=sample_rate_hz, default=25000.0, help="sample rate (1000 to 100000 Hz; "
                                                                          "default 25000)")
    p.add_argument("--seconds", type=BENCH_SECONDS, default=5.0, help="seconds of data (0.1 to 600; default 5)")
    p.add_argument("--chunk-ms", type=chunk_ms, default=1.0, help="chunk length in ms (0.1 to 10000; default 1)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the synthetic recording (default 0)")
    p.add_argument("--threads", type=int_in(1, 1024), default=None,
                   help="threads of the signal path (default: NUMBA_NUM_THREADS, else all cores; one thread below "
                        "the parallel threshold of channels)")
    p.set_defaults(func=_throughput)
