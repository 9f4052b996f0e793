"""Throughput of the signal path on the simulated rig's signals (used by `rigctl bench throughput`
and bench/bench_throughput.py): the same `SignalPath.process` the loop calls, chunk by chunk."""

from __future__ import annotations

import time

import numpy as np

from rigctl.signal.path import PARALLEL_MIN_CHANNELS, SignalConfig, SignalPath
from rigctl.types import Chunk

UV_PER_BIT = 0.195


def rig_like_recording(channels: int, rate_hz: float, seconds: float, seed: int) -> np.ndarray:
    """int16 [n, channels]: white noise (6 uV rms) and spikes (40-120 uV troughs, 10 Hz per channel), none
    within 50 samples of either end (a recording of 100 samples or fewer has none)."""
    from rigctl.sim.render import VoltageRenderer
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    renderer = VoltageRenderer(channels, rate_hz, seed)
    k = rng.poisson(10.0 * seconds * channels) if n > 100 else 0
    samples = np.sort(rng.integers(50, n - 50, k)) if k else np.zeros(0, np.int64)
    return renderer.render(0, n, samples, rng.integers(0, channels, k), -rng.uniform(40, 120, k).astype(np.float32), [])


def measure_throughput(channels: int, rate_hz: float, seconds: float, chunk_ms: float, seed: int = 0,
                       data: np.ndarray | None = None, threads: int | None = None,
                       parallel_min_channels: int = PARALLEL_MIN_CHANNELS,
                       parallel_min_work: int | None = None) -> dict:
    """Process `seconds` of data in `chunk_ms` chunks once to warm up, then time a second pass.

    `threads`, `parallel_min_channels`, `parallel_min_work`: as `SignalPath` takes them (None: its defaults)."""
    if data is None:
        data = rig_like_recording(channels, rate_hz, seconds, seed)
    chunk = max(1, int(round(chunk_ms * 1e-3 * rate_hz)))
    starts = range(0, len(data), chunk)
    pieces = [np.ascontiguousarray(data[a:a + chunk]) for a in starts]

    def make() -> SignalPath:
        return SignalPath(channels, rate_hz, UV_PER_BIT, SignalConfig(), threads, parallel_min_channels,
                          parallel_min_work)
    warm = make()
    for a, piece in zip(starts, pieces[: max(1, int(0.2 * rate_hz) // chunk)]):
        warm.process(Chunk(a, piece, UV_PER_BIT, rate_hz))
    path = make()
    per_chunk = np.empty(len(pieces), np.float64)
    n_spikes = 0
    clock = time.perf_counter
    t0 = clock()
    for i, (a, piece) in enumerate(zip(starts, pieces)):
        c0 = clock()
        n_spikes += len(path.process(Chunk(a, piece, UV_PER_BIT, rate_hz)))
        per_chunk[i] = clock() - c0
    wall = clock() - t0
    data_s = len(data) / rate_hz
    return {"bench": "throughput", "channels": channels, "rate_hz": rate_hz, "chunk_ms": chunk_ms,
            "threads": path.threads_for(chunk), "data_s": data_s, "wall_s": wall, "rtf": data_s / wall,
            "spikes": n_spikes, "chunk_p50_us": float(np.median(per_chunk) * 1e6),
            "chunk_p99_us": float(np.percentile(per_chunk, 99) * 1e6), "chunk_max_us": float(per_chunk.max() * 1e6)}
