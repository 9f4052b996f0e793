"""Throughput of the online signal path (the very `SignalPath.process` that `rigctl run` calls), one core.

Prints, for 64 ch x 25 kHz and 1024 ch x 20 kHz and several chunk sizes, the real-time factor (seconds
of data per second of wall time) and the per-chunk time; then, when SpikeInterface is importable, its
band-pass + by-channel peak detection on the same data, single job, as a throughput ratio. Ends with
one JSON line.

    python bench/bench_throughput.py                     # rigctl only (SpikeInterface if installed)
    python -m venv .venv-bench && .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python bench/bench_throughput.py     # side by side with SpikeInterface

The `bench` extra of pyproject.toml pins the SpikeInterface release this comparison is written for (its
`get_noise_levels(return_scaled=...)` and flat `detect_peaks` keyword arguments; 0.103 deprecated both and
0.105 removed them). The SpikeInterface version that ran is printed and recorded in the JSON line.

Targets (issue 4): rtf >= 100 at 64 x 25 kHz, >= 5 at 1024 x 20 kHz. Timings on a shared machine
vary; each figure is the best of `--repeats` passes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from rigctl.benchmarks.throughput import UV_PER_BIT, measure_throughput, rig_like_recording  # noqa: E402

CONFIGS = ((64, 25000.0), (1024, 20000.0))


def pinned_spikeinterface() -> str | None:
    """The SpikeInterface version the `bench` extra of the installed rigctl pins (None if unknown)."""
    try:
        requires = importlib.metadata.requires("rigctl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for req in requires:
        m = re.match(r"\s*spikeinterface\s*==\s*([^;\s]+)\s*;.*extra\s*==\s*[\"']bench[\"']", req)
        if m:
            return m.group(1)
    return None


def spikeinterface_version() -> str | None:
    """The importable SpikeInterface's version, or None when it is not installed."""
    try:
        import spikeinterface
    except ImportError:
        return None
    return str(spikeinterface.__version__)


def spikeinterface_rtf(data: np.ndarray, rate_hz: float, repeats: int) -> dict | None:
    """SpikeInterface band-pass (300-6000 Hz) + `detect_peaks(method="by_channel")`, 1 job, 1-s chunks.
    None when SpikeInterface is not installed; {"version", "error"} when its API is not the pinned one's."""
    try:
        import spikeinterface.core as sc
        from spikeinterface.preprocessing import bandpass_filter
        from spikeinterface.sortingcomponents.peak_detection import detect_peaks
    except ImportError:
        return None
    try:
        return _spikeinterface_rtf(sc, bandpass_filter, detect_peaks, data, rate_hz, repeats)
    except TypeError as exc:  # a keyword the pinned release takes and this one does not
        return {"version": spikeinterface_version(), "error": f"{type(exc).__name__}: {exc}"}


def _spikeinterface_rtf(sc, bandpass_filter, detect_peaks, data: np.ndarray, rate_hz: float, repeats: int) -> dict:
    rec = sc.NumpyRecording([data], sampling_frequency=rate_hz)
    rec.set_channel_gains(UV_PER_BIT)
    rec.set_channel_offsets(0.0)
    filtered = bandpass_filter(rec, freq_min=300.0, freq_max=6000.0, dtype="float32")
    noise = sc.get_noise_levels(filtered, return_scaled=False, progress_bar=False)
    job = dict(n_jobs=1, chunk_duration="1s", progress_bar=False)
    best_all, best_detect, n_peaks = np.inf, np.inf, 0
    pre = sc.NumpyRecording([filtered.get_traces()], sampling_frequency=rate_hz)  # pre-filtered, for detection only
    kwargs = dict(method="by_channel", peak_sign="neg", detect_threshold=5.0, exclude_sweep_ms=0.1,
                  noise_levels=noise)
    for _ in range(repeats):
        t0 = time.perf_counter()
        peaks = detect_peaks(filtered, **kwargs, **job)
        best_all = min(best_all, time.perf_counter() - t0)
        t0 = time.perf_counter()
        detect_peaks(pre, **kwargs, **job)
        best_detect = min(best_detect, time.perf_counter() - t0)
        n_peaks = len(peaks)
    data_s = len(data) / rate_hz
    return {"version": spikeinterface_version(), "rtf": data_s / best_all, "rtf_detect_only": data_s / best_detect,
            "peaks": int(n_peaks)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of data per configuration")
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-spikeinterface", action="store_true")
    args = parser.parse_args()
    si_version, si_pinned = spikeinterface_version(), pinned_spikeinterface()
    if args.no_spikeinterface:
        print("SpikeInterface: not compared (--no-spikeinterface)")
    elif si_version is None:
        print(f"SpikeInterface: not installed (pip install -e '.[bench]' installs {si_pinned or 'the pinned release'})")
    else:
        note = ("the pinned release" if si_version == si_pinned else
                f"NOT the pinned {si_pinned}: figures may differ" if si_pinned else "no pinned release found")
        print(f"SpikeInterface {si_version} ({note})")
    results = []
    for channels, rate_hz in CONFIGS:
        data = rig_like_recording(channels, rate_hz, args.seconds, seed=0)
        print(f"== {channels} ch x {rate_hz:g} Hz, {args.seconds:g} s of data (rig-like: 6 uV noise, 10 Hz spikes)")
        entry = {"channels": channels, "rate_hz": rate_hz, "rigctl": {}}
        for chunk_ms in args.chunk_ms:
            runs = [measure_throughput(channels, rate_hz, args.seconds, chunk_ms, data=data) for _ in range(args.repeats)]
            r = max(runs, key=lambda x: x["rtf"])
            entry["rigctl"][str(chunk_ms)] = {k: r[k] for k in ("rtf", "chunk_p50_us", "chunk_p99_us", "spikes")}
            print(f"  rigctl  chunk {chunk_ms:6g} ms: rtf {r['rtf']:8.1f}x   per chunk p50 {r['chunk_p50_us']:9.1f} us "
                  f"p99 {r['chunk_p99_us']:9.1f} us   {r['spikes']} spikes")
        si = None if args.no_spikeinterface else spikeinterface_rtf(data, rate_hz, args.repeats)
        if si is None:
            if not args.no_spikeinterface:
                print("  SpikeInterface: not importable here (install it in a separate venv, see the docstring)")
        elif "error" in si:
            print(f"  SpikeInterface {si['version']}: its API differs from the pinned {si_pinned} ({si['error']}); "
                  "install the pinned release: pip install -e '.[bench]'")
        else:
            best = max(v["rtf"] for v in entry["rigctl"].values())
            print(f"  SpikeInterface {si['version']} band-pass + by_channel detect_peaks, 1 job, 1-s chunks: "
                  f"rtf {si['rtf']:.1f}x (detection alone {si['rtf_detect_only']:.1f}x), {si['peaks']} peaks")
            print(f"  ratio rigctl / SpikeInterface (best chunking, whole path): {best / si['rtf']:.1f}x")
            si["ratio"] = best / si["rtf"]
        entry["spikeinterface"] = si
        results.append(entry)
    summary = {"bench": "signal_throughput",
               "spikeinterface_version": None if args.no_spikeinterface else si_version,
               "spikeinterface_pinned": si_pinned,
               "rtf": {f"{e['channels']}x{e['rate_hz']:g}": {c: round(v["rtf"], 1) for c, v in e["rigctl"].items()}
                       for e in results},
               "targets": {"64x25000": 100, "1024x20000": 5},
               "spikeinterface_ratio": {f"{e['channels']}x{e['rate_hz']:g}": (round(e["spikeinterface"]["ratio"], 1)
                                        if e["spikeinterface"] and "ratio" in e["spikeinterface"] else None)
                                        for e in results},
               "details": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
