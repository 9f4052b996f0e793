"""rigctl's online detection vs SpikeInterface's `detect_peaks` on the same recording read from disk.

The recording is SpikeInterface's ground-truth simulator (no real recording ships in a package we can
install; tests/recordings.py), quantized to int16 and written as NWB, then read back through
`rigctl.interop.recording` like any lab's file. rigctl runs its signal path chunk by chunk (10-ms chunks,
as `rigctl detect --recording` does); SpikeInterface band-passes 300-6000 Hz and runs
`detect_peaks(method="by_channel", peak_sign="neg", detect_threshold=5)`, one job.

Prints: spikes per detector; agreement (a spike of one matched by a spike of the other on the same channel
within +-0.4 ms, both directions, and the F1 of the two); recall of the ground-truth spikes (on any channel,
within 0.4 ms); wall time of each and the speed ratio (SpikeInterface time / rigctl time). One JSON line last.

    .venv/bin/pip install -e '.[spikeinterface,nwb]'
    .venv/bin/python bench/bench_playback_vs_spikeinterface.py [--duration-s 60] [--channels 32]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recordings import ground_truth, write_nwb  # noqa: E402

from rigctl.interop.recording import RecordingFrames, open_recording  # noqa: E402
from rigctl.signal import SignalConfig, SignalPath  # noqa: E402
from rigctl.types import Chunk  # noqa: E402

TOLERANCE_MS = 0.4


def rigctl_detect(frames: RecordingFrames, chunk_ms: float = 10.0) -> np.ndarray:
    """[k, 2] (sample, channel) from rigctl's online signal path, chunk by chunk."""
    path = SignalPath(frames.shape[1], frames.sample_rate_hz, frames.uV_per_bit, SignalConfig(threshold_sd=5.0))
    step = max(1, int(round(chunk_ms * 1e-3 * frames.sample_rate_hz)))
    out = []
    for a in range(0, len(frames), step):
        spikes = path.process(Chunk(a, np.ascontiguousarray(frames[a:a + step]), frames.uV_per_bit,
                                    frames.sample_rate_hz))
        out.append(np.c_[spikes.sample, spikes.channel])
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def spikeinterface_detect(recording) -> np.ndarray:
    import spikeinterface.core as sc
    from spikeinterface.preprocessing import bandpass_filter
    from spikeinterface.sortingcomponents.peak_detection import detect_peaks

    filtered = bandpass_filter(recording, freq_min=300.0, freq_max=6000.0, dtype="float32")
    noise = sc.get_noise_levels(filtered, return_scaled=False, progress_bar=False)
    peaks = detect_peaks(filtered, method="by_channel", peak_sign="neg", detect_threshold=5.0, exclude_sweep_ms=0.1,
                         noise_levels=noise, n_jobs=1, chunk_duration="1s", progress_bar=False)
    return np.c_[peaks["sample_index"], peaks["channel_index"]].astype(np.int64)


def matched_fraction(a: np.ndarray, b: np.ndarray, tol: int) -> float:
    """Fraction of the (sample, channel) spikes of `a` with a spike of `b` on the same channel within tol."""
    if len(a) == 0:
        return float("nan")
    hits = 0
    for ch in np.unique(a[:, 1]):
        sa = np.sort(a[a[:, 1] == ch, 0])
        sb = np.sort(b[b[:, 1] == ch, 0])
        if len(sb) == 0:
            continue
        i = np.clip(np.searchsorted(sb, sa), 1, max(len(sb) - 1, 1))
        gap = np.minimum(np.abs(sb[np.minimum(i, len(sb) - 1)] - sa), np.abs(sb[i - 1] - sa))
        hits += int((gap <= tol).sum())
    return hits / len(a)


def recall_any_channel(truth_samples: np.ndarray, found: np.ndarray, tol: int) -> float:
    s = np.unique(found[:, 0])
    if len(s) == 0:
        return 0.0
    i = np.clip(np.searchsorted(s, truth_samples), 1, max(len(s) - 1, 1))
    gap = np.minimum(np.abs(s[np.minimum(i, len(s) - 1)] - truth_samples), np.abs(s[i - 1] - truth_samples))
    return float((gap <= tol).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    truth = ground_truth(duration_s=args.duration_s, n_channels=args.channels, n_units=args.units, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nwb(Path(tmp) / "gt.nwb", truth)
        recording = open_recording(path)
        frames = RecordingFrames(recording)
        rigctl_detect(RecordingFrames(recording.frame_slice(0, int(frames.sample_rate_hz))))  # JIT warm-up
        t0 = time.perf_counter()
        ours = rigctl_detect(frames)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = spikeinterface_detect(recording)
        t_theirs = time.perf_counter() - t0
    fs = frames.sample_rate_hz
    tol = int(round(TOLERANCE_MS * 1e-3 * fs))
    settle = int(fs * 0.1)  # rigctl's first noise estimate: both compared after it
    ours, theirs = ours[ours[:, 0] >= settle], theirs[theirs[:, 0] >= settle]
    ours_in_theirs, theirs_in_ours = matched_fraction(ours, theirs, tol), matched_fraction(theirs, ours, tol)
    f1 = 2 * ours_in_theirs * theirs_in_ours / (ours_in_theirs + theirs_in_ours)
    gt = truth.spike_samples[truth.spike_samples >= settle]
    si_version = importlib.metadata.version("spikeinterface")
    result = {"recording": f"SpikeInterface ground truth, {args.channels} ch x {fs:g} Hz x {args.duration_s:g} s, "
                           f"{args.units} units, seed {args.seed}, NWB",
              "spikeinterface": si_version, "rigctl_spikes": int(len(ours)), "si_peaks": int(len(theirs)),
              "rigctl_matched_by_si": round(ours_in_theirs, 4), "si_matched_by_rigctl": round(theirs_in_ours, 4),
              "agreement_f1": round(f1, 4), "gt_recall_rigctl": round(recall_any_channel(gt, ours, tol), 4),
              "gt_recall_si": round(recall_any_channel(gt, theirs, tol), 4), "rigctl_s": round(t_ours, 3),
              "si_s": round(t_theirs, 3), "speed_ratio_si_over_rigctl": round(t_theirs / t_ours, 2)}
    print(f"recording: {result['recording']}")
    print(f"rigctl {result['rigctl_spikes']} spikes in {t_ours:.2f} s; SpikeInterface {si_version} "
          f"{result['si_peaks']} peaks in {t_theirs:.2f} s; speed ratio (SI / rigctl) {result['speed_ratio_si_over_rigctl']}")
    print(f"agreement (same channel, +-{TOLERANCE_MS} ms): rigctl matched by SI {ours_in_theirs:.3f}, "
          f"SI matched by rigctl {theirs_in_ours:.3f}, F1 {f1:.3f}")
    print(f"ground-truth recall (any channel): rigctl {result['gt_recall_rigctl']}, SI {result['gt_recall_si']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
