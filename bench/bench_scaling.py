"""Scaling of the online signal path from 64 to 6,144 channels, one thread beside all of numba's threads.

For each channel count and chunk length it prints the real-time factor (seconds of data per second of wall
time), the RTF per core, ns per sample (per channel-sample), the per-chunk p50/p99, and two floors measured on
the same machine in the same run, to say what bounds the path:

- memory: a pass that only reads the int16 chunk and writes it as float32 (what any path must move), in the
  same chunks, with the same number of threads;
- arithmetic: the path's floating-point operations per sample (convert, biquads, matched-filter taps, noise
  sums, threshold) divided by this core's measured rate of separate multiplies and adds (no FMA: the kernels
  run without fast-math), over data that stays in L1.

Then the memory the path holds per channel (state that a checkpoint keeps, and buffers), the threading
layer, and `os.getloadavg()` before and after: the machine is shared, so a load above ~1 means another job
took a core and the parallel figures are low. Ends with one JSON line.

    python bench/bench_scaling.py                                   # 64 .. 6144 ch x 20 kHz, 1- and 10-ms chunks
    NUMBA_THREADING_LAYER=workqueue python bench/bench_scaling.py   # the layer CI has without TBB/OpenMP
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numba
import numpy as np
from numba import njit, prange

from rigctl.benchmarks.throughput import UV_PER_BIT, measure_throughput, rig_like_recording
from rigctl.signal.path import PARALLEL_MIN_CHANNELS, PARALLEL_MIN_WORK, SignalPath, channel_blocks, default_threads
from rigctl.types import Chunk

BASE_CHANNELS = 1024  # recorded once; larger counts reuse its channels (the speed does not depend on which)
SAMPLE_BUDGET = 2 * 6144 * 20000  # channel-samples per configuration: ~2 s at 6,144 ch, longer below


@njit(parallel=True, cache=True)
def _copy_pass(data: np.ndarray, chunk: int, bounds: np.ndarray, out: np.ndarray, scale: np.float32) -> None:
    """int16 -> float32 of every chunk into one chunk-sized buffer, channel blocks in parallel (one parallel
    region for the whole pass, so no launch cost per chunk): the memory-traffic floor."""
    n = data.shape[0]
    for b in prange(bounds.shape[0] - 1):
        u0 = np.uint64(bounds[b])
        u1 = np.uint64(bounds[b + 1])
        for a in range(0, n, chunk):
            for i in range(min(chunk, n - a)):
                for c in range(u0, u1):
                    out[i, c] = np.float32(data[a + i, c]) * scale


@njit(cache=True)
def _mul_add_rate(y: np.ndarray, passes: int) -> float:
    """Separate multiplies and adds over an L1-resident array (vectorised, no FMA): returns a checksum."""
    a = np.float32(0.999)
    b = np.float32(0.001)
    for _ in range(passes):
        for k in range(y.shape[0]):
            y[k] = y[k] * a + b
    return float(y[0])


def arithmetic_rate_per_s() -> float:
    """Multiplies + adds per second on one core (best of 5)."""
    y = np.ones(2048, np.float32)
    passes = 20000
    _mul_add_rate(y, 1)
    best = np.inf
    for _ in range(5):
        t0 = time.perf_counter()
        _mul_add_rate(y, passes)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * y.shape[0] * passes / best


def ops_per_sample(path: SignalPath) -> int:
    """Floating-point operations per channel-sample: convert 1, biquad 9 each (5 mul, 4 add), matched filter
    2 x taps - 1, noise sums of |x| and |y| 3 each (abs, min, add), threshold compare 1."""
    return 1 + 9 * path._sos.shape[0] + 2 * path._taps - 1 + 6 + 1


def copy_ns_per_sample(data: np.ndarray, chunk: int, threads: int, repeats: int) -> float:
    bounds = channel_blocks(data.shape[1], threads)
    out = np.empty((chunk, data.shape[1]), np.float32)
    _copy_pass(data[:chunk], chunk, bounds, out, np.float32(UV_PER_BIT))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _copy_pass(data, chunk, bounds, out, np.float32(UV_PER_BIT))
        best = min(best, time.perf_counter() - t0)
    return best / data.size * 1e9


def memory_per_channel(channels: int, rate_hz: float, chunk_ms: float) -> dict:
    """Bytes per channel: state (what get_state keeps) and buffers (work rows, matched-filter scratch, spike
    buffers) after a chunk of `chunk_ms`."""
    path = SignalPath(channels, rate_hz, UV_PER_BIT)
    n = max(1, int(round(chunk_ms * 1e-3 * rate_hz)))
    path.process(Chunk(0, np.zeros((n, channels), np.int16), UV_PER_BIT, rate_hz))
    state = path.get_state()
    state_b = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))
    buffers = [path._work, path._ys, path._out_s, path._out_c, path._out_a, path._blk_s, path._blk_c, path._blk_a]
    return {"state_B": state_b / channels, "buffers_B": sum(b.nbytes for b in buffers) / channels}


def bound(ns: float, copy_ns: float, arith_ns: float) -> str:
    """Which floor the path is nearer, as a multiple of each."""
    return f"{ns / copy_ns:4.1f}x mem, {ns / arith_ns:4.1f}x arith"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096, 6144])
    parser.add_argument("--rate-hz", type=float, default=20000.0)
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--repeats", type=int, default=3, help="passes per figure; the best is shown")
    args = parser.parse_args()
    threads = default_threads()
    load0 = os.getloadavg()
    rate_per_s = arithmetic_rate_per_s()
    print(f"signal path scaling, {args.rate_hz:g} Hz, {threads} threads vs 1; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}; multiply+add rate {rate_per_s / 1e9:.1f} G/s per core; default parallel from "
          f"{PARALLEL_MIN_CHANNELS} ch and {PARALLEL_MIN_WORK} channel-samples per chunk")
    seconds_base = SAMPLE_BUDGET / (BASE_CHANNELS * args.rate_hz)
    base = rig_like_recording(BASE_CHANNELS, args.rate_hz, min(seconds_base, 4.0), seed=0)
    print(f"{'ch':>5} {'chunk':>6} | {'RTF 1T':>7} {'RTF NT':>7} {'x':>5} {'RTF/core':>8} | "
          f"{'ns/S 1T':>7} {'ns/S NT':>7} {'copy 1T':>7} {'copy NT':>7} {'arith':>6} | "
          f"{'p50 1T':>7} {'p99 1T':>7} {'p50 NT':>7} {'p99 NT':>7} us | path / floor (1T); threads SignalPath picks")
    rows = []
    for channels in args.channels:
        reps = max(1, int(round(SAMPLE_BUDGET / (channels * args.rate_hz) / (len(base) / args.rate_hz))))
        data = np.ascontiguousarray(np.tile(base[:, np.arange(channels) % BASE_CHANNELS], (reps, 1)))
        seconds = len(data) / args.rate_hz
        probe = SignalPath(channels, args.rate_hz, UV_PER_BIT, threads=1)
        arith_ns = ops_per_sample(probe) / rate_per_s * 1e9
        for chunk_ms in args.chunk_ms:
            chunk = max(1, int(round(chunk_ms * 1e-3 * args.rate_hz)))
            res = {}
            for t in (1, threads):
                runs = [measure_throughput(channels, args.rate_hz, seconds, chunk_ms, data=data, threads=t,
                                           parallel_min_channels=1, parallel_min_work=0)
                        for _ in range(args.repeats)]
                res[t] = max(runs, key=lambda r: r["rtf"])
            one, par = res[1], res[threads]
            ns1 = 1e9 / (one["rtf"] * channels * args.rate_hz)
            nsn = 1e9 / (par["rtf"] * channels * args.rate_hz)
            copy1 = copy_ns_per_sample(data, chunk, 1, args.repeats)
            copyn = copy_ns_per_sample(data, chunk, threads, args.repeats)
            row = {"channels": channels, "chunk_ms": chunk_ms, "rtf_1": one["rtf"], "rtf_n": par["rtf"],
                   "threads_n": par["threads"], "ns_per_sample_1": ns1, "ns_per_sample_n": nsn,
                   "copy_ns_per_sample_1": copy1, "copy_ns_per_sample_n": copyn, "arith_ns_per_sample": arith_ns,
                   "ops_per_sample": ops_per_sample(probe), "p50_1_us": one["chunk_p50_us"],
                   "p99_1_us": one["chunk_p99_us"], "p50_n_us": par["chunk_p50_us"], "p99_n_us": par["chunk_p99_us"],
                   "default_threads": SignalPath(channels, args.rate_hz, UV_PER_BIT).threads_for(chunk)}
            rows.append(row)
            print(f"{channels:5d} {chunk_ms:4g}ms | {one['rtf']:7.1f} {par['rtf']:7.1f} {par['rtf'] / one['rtf']:5.2f} "
                  f"{par['rtf'] / par['threads']:8.1f} | {ns1:7.2f} {nsn:7.2f} {copy1:7.2f} {copyn:7.2f} "
                  f"{arith_ns:6.2f} | "
                  f"{one['chunk_p50_us']:7.1f} {one['chunk_p99_us']:7.1f} {par['chunk_p50_us']:7.1f} "
                  f"{par['chunk_p99_us']:7.1f}    | {bound(ns1, copy1, arith_ns)}; {row['default_threads']}T",
                  flush=True)
    memory = {str(c): memory_per_channel(c, args.rate_hz, 10.0) for c in (64, max(args.channels))}
    for c, m in memory.items():
        print(f"memory per channel at {c} ch (10-ms chunks): state {m['state_B']:.0f} B, "
              f"buffers {m['buffers_B']:.0f} B")
    load1 = os.getloadavg()
    busy = max(load0[0], load1[0]) > 1.5
    print(f"threading layer {numba.threading_layer()}; load after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
          f"(includes this bench's own threads)"
          + ("; above 1.5: another job shared the cores, the parallel figures are low" if busy else ""))
    print(json.dumps({"bench": "signal_scaling", "rate_hz": args.rate_hz, "threads": threads,
                      "threading_layer": numba.threading_layer(), "load_before": load0, "load_after": load1,
                      "mul_add_per_s": rate_per_s, "parallel_min_channels": PARALLEL_MIN_CHANNELS,
                      "parallel_min_work": PARALLEL_MIN_WORK, "memory": memory,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
