"""Report of a spontaneous recording: firing rate per electrode and network bursts.

Bursts by the ISI_N method (Bakkum et al., "Parameters for burst detection", Front. Comput. Neurosci.
7:193, 2014): on the spike train of the whole array, spike i starts a burst window when the spike N-1
later falls within ISI_N of it; overlapping windows merge into one burst. A network burst must involve
at least `burst_min_electrodes` electrodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigctl.figures import save_figure
from rigctl.store import RunInfo, read_spikes


def detect_bursts(sample: np.ndarray, channel: np.ndarray, n: int, isi_n_samples: int,
                  min_electrodes: int) -> list[tuple[int, int, int, int]]:
    """(first sample, last sample, spikes, electrodes) of each burst in a time-sorted spike train."""
    if len(sample) < n:
        return []
    starts = np.flatnonzero(sample[n - 1:] - sample[:len(sample) - n + 1] <= isi_n_samples)
    bursts = []
    if len(starts) == 0:
        return bursts
    # window i covers spikes i..i+n-1; merge windows that overlap or touch
    begin, end = int(starts[0]), int(starts[0]) + n - 1
    for i in starts[1:]:
        i = int(i)
        if i <= end:
            end = max(end, i + n - 1)
        else:
            bursts.append((begin, end))
            begin, end = i, i + n - 1
    bursts.append((begin, end))
    out = []
    for a, b in bursts:
        electrodes = len(np.unique(channel[a:b + 1]))
        if electrodes >= min_electrodes:
            out.append((int(sample[a]), int(sample[b]), b - a + 1, electrodes))
    return out


WINDOW_S = 0.020


def _interval_cv(starts: list[int]) -> float | None:
    """Coefficient of variation of the intervals between burst onsets (1 for a Poisson process)."""
    if len(starts) < 3:
        return None
    iv = np.diff(np.asarray(starts, np.float64))
    return round(float(iv.std() / iv.mean()), 4)


def spontaneous_summary(info: RunInfo, protocol: dict[str, Any]) -> dict[str, Any]:
    fs = float(info.meta["sample_rate_hz"])
    n_electrodes = info.meta["shapes"]["n_electrodes"]
    start = int(round(float(protocol["first_trial_s"]) * fs))  # the lead-in is not analysed
    spikes = read_spikes(info.path)
    spikes = spikes[spikes["sample"] >= start]
    order = np.argsort(spikes["sample"], kind="stable")
    sample, channel = spikes["sample"][order], spikes["channel"][order]
    recorded_s = max((int(sample[-1]) - start) / fs if len(sample) else 0.0, 0.0)
    duration_s = float(protocol["duration_s"])
    if info.meta.get("status") != "complete":
        duration_s = max(recorded_s, 1e-9)  # an unfinished run: rates over what was recorded
    rates = np.bincount(channel, minlength=n_electrodes)[:n_electrodes] / duration_s
    n, isi_n_ms = int(protocol["burst_n"]), float(protocol["burst_isi_n_ms"])
    bursts = detect_bursts(sample, channel, n, int(round(isi_n_ms * 1e-3 * fs)), int(protocol["burst_min_electrodes"]))
    durations_ms = [(b - a) / fs * 1000 for a, b, _, _ in bursts]
    in_bursts = sum(b[2] for b in bursts)
    return {
        "duration_s": round(duration_s, 3), "spikes": int(len(sample)),
        "firing_rate_hz": np.round(rates, 4).tolist(),
        "mean_firing_rate_hz": round(float(rates.mean()), 4),
        # the paper's response window is 20 ms: this is what an unstimulated window holds on average
        "count_per_20ms_window": round(float(rates.mean()) * WINDOW_S, 4),
        "active_electrodes": int((rates >= 0.1).sum()),
        "bursts": {"method": "ISI_N (Bakkum et al., Front. Comput. Neurosci. 7:193, 2014)", "n": n,
                   "isi_n_ms": isi_n_ms, "min_electrodes": int(protocol["burst_min_electrodes"]),
                   "count": len(bursts), "rate_per_min": round(len(bursts) / duration_s * 60, 4),
                   "mean_duration_ms": round(float(np.mean(durations_ms)), 3) if bursts else None,
                   "median_duration_ms": round(float(np.median(durations_ms)), 3) if bursts else None,
                   "interval_cv": _interval_cv([b[0] for b in bursts]),
                   "fraction_of_spikes": round(in_bursts / len(sample), 4) if len(sample) else None,
                   "mean_spikes": round(float(np.mean([b[2] for b in bursts])), 2) if bursts else None,
                   "list": [{"start_s": round(a / fs, 4), "end_s": round(b / fs, 4), "spikes": k, "electrodes": m}
                            for a, b, k, m in bursts[:1000]]},
    }


def spontaneous_lines(sp: dict[str, Any]) -> list[str]:
    """`spontaneous_summary`'s headline as a line for the terminal."""
    b = sp.get("bursts")
    if not b:
        return []
    return [f"spontaneous: {sp['count_per_20ms_window']:.3f} spikes per electrode per 20-ms window; "
            f"{b['count']} network bursts ({b['rate_per_min']:.1f} per min, median "
            f"{b['median_duration_ms'] or 0:.0f} ms, {100 * (b['fraction_of_spikes'] or 0):.0f} % of spikes)"]


def plot_spontaneous(summary: dict[str, Any], spikes_path: Path, fs: float, out_dir: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rigctl.store import SPIKE_DTYPE, read_records

    sp = summary["spontaneous"]
    rates = np.asarray(sp["firing_rate_hz"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5), gridspec_kw={"width_ratios": [2, 2, 1.3]})
    spikes = read_records(spikes_path, SPIKE_DTYPE)
    t_s = spikes["sample"] / fs
    bursts = sp["bursts"]["list"]
    if len(t_s):
        # the whole recording as the array's spike rate (50-ms bins): bursts are the spikes of it
        edges = np.arange(0.0, t_s.max() + 0.05, 0.05)
        counts, _ = np.histogram(t_s, edges)
        axes[0].plot(edges[:-1], counts / 0.05, "k-", lw=0.5)
    for b in bursts:
        axes[0].axvspan(b["start_s"], b["end_s"], color="r", alpha=0.2)
    axes[0].set(xlabel="time (s)", ylabel="array spikes / s (50-ms bins)",
                title=f"{sp['bursts']['count']} network bursts ({sp['bursts']['rate_per_min']:.1f} per min)")
    t0 = float(t_s.min()) if len(t_s) else 0.0
    shown = (t_s >= t0) & (t_s < t0 + 30.0)  # a raster of 30 s: single spikes stay visible
    axes[1].plot(t_s[shown], spikes["channel"][shown], "k|", ms=2)
    for b in bursts:
        if b["start_s"] < t0 + 30.0:
            axes[1].axvspan(b["start_s"], min(b["end_s"], t0 + 30.0), color="r", alpha=0.2)
    axes[1].set(xlabel="time (s)", ylabel="electrode", title="raster, first 30 s")
    rate_ax = axes[2]
    if len(rates) == 64:
        im = rate_ax.imshow(rates.reshape(8, 8), cmap="viridis")
        fig.colorbar(im, ax=rate_ax, label="Hz")
        rate_ax.set(title="firing rate per electrode (8 x 8)")
    else:
        rate_ax.bar(np.arange(len(rates)), rates)
        rate_ax.set(xlabel="electrode", ylabel="Hz", title="firing rate per electrode")
    return save_figure(fig, title, out_dir / "spontaneous.png")
