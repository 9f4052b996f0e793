"""Report of an electrode scan: the response map (stimulated x recording electrode) and the electrodes
that respond reliably, which is how a lab picks its stimulation groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigctl.store import RunInfo, read_records, read_spikes


def scan_summary(info: RunInfo, protocol: dict[str, Any]) -> dict[str, Any]:
    trials = read_records(info.path / "trials.bin", info.trial_dtype)
    candidates = [int(e) for e in protocol["electrodes"]]
    n_rec = info.meta["shapes"]["n_electrodes"]
    threshold = float(protocol.get("reliable_probability", 0.5))
    mean = np.zeros((len(candidates), n_rec))
    p_any = np.zeros((len(candidates), n_rec))
    n_trials = np.zeros(len(candidates), np.int64)
    for k, e in enumerate(candidates):
        counts = trials["counts"][trials["stim_electrode"] == e]
        n_trials[k] = len(counts)
        if len(counts):
            mean[k] = counts.mean(axis=0)
            p_any[k] = (counts > 0).mean(axis=0)
    baseline = _baseline_probability(info, trials, protocol)
    reliable = p_any - baseline[None, :] >= threshold
    for k, e in enumerate(candidates):
        if e < n_rec:
            reliable[k, e] = False  # the stimulated electrode's own artifact-blanked trace does not count
    responders = {str(e): np.flatnonzero(reliable[k]).tolist() for k, e in enumerate(candidates)}
    ranking = sorted(candidates, key=lambda e: -len(responders[str(e)]))
    return {
        "stimulated_electrodes": candidates, "trials_per_electrode": n_trials.tolist(),
        "reliable_probability": threshold, "p_baseline": np.round(baseline, 4).tolist(),
        "mean_evoked": np.round(mean, 4).tolist(), "p_response": np.round(p_any, 4).tolist(),
        "reliable_responders": responders,
        "responders_count": {str(e): len(responders[str(e)]) for e in candidates},
        "best_stimulation_electrodes": [e for e in ranking if responders[str(e)]][:16],
        "definition": f"a recording electrode responds reliably to a stimulated one when P(>= 1 spike in the "
                      f"response window) exceeds its baseline P (an equally long window just before each pulse) by "
                      f">= {threshold}; the stimulated electrode itself is left out",
    }


def _baseline_probability(info: RunInfo, trials: np.ndarray, protocol: dict[str, Any]) -> np.ndarray:
    """Per recording electrode: P(>= 1 spike) in a window as long as the response window, ending at each
    pulse (the spontaneous chance of a "response"). Needs the kept spikes to reach that far back."""
    fs = float(info.meta["sample_rate_hz"])
    n_rec = info.meta["shapes"]["n_electrodes"]
    w0, w1 = (float(x) for x in protocol["response_window_ms"])
    kept_from_ms = float(protocol.get("spike_window_ms", [0, 0])[0])
    length_ms = min(w1 - w0, -kept_from_ms) if protocol.get("spikes") != "all" else w1 - w0
    if length_ms <= 0 or len(trials) == 0:
        return np.zeros(n_rec)
    spikes = read_spikes(info.path)
    order = np.argsort(spikes["sample"], kind="stable")
    sample, channel = spikes["sample"][order], spikes["channel"][order]
    length = int(round(length_ms * 1e-3 * fs))
    hit = np.zeros(n_rec)
    for s in trials["sample"]:
        lo, hi = np.searchsorted(sample, (int(s) - length, int(s)))
        hit[np.unique(channel[lo:hi])] += 1
    p = hit / len(trials)
    # scale a shorter baseline window to the response window's length (Poisson: 1 - (1 - p)^(L_resp / L_base))
    return 1.0 - (1.0 - p) ** ((w1 - w0) / length_ms)


def plot_scan(summary: dict[str, Any], layout: dict[str, Any] | None, out_dir: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scan = summary["scan"]
    mean = np.asarray(scan["mean_evoked"])
    candidates = scan["stimulated_electrodes"]
    fig, ax = plt.subplots(figsize=(12, 0.18 * len(candidates) + 2.5))
    im = ax.imshow(mean, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(candidates)), [str(e) for e in candidates], fontsize=6)
    ax.set(xlabel="recording electrode", ylabel="stimulated electrode",
           title=f"{title}: mean evoked spikes in the response window")
    fig.colorbar(im, ax=ax, label="spikes / trial")
    fig.tight_layout()
    paths = [out_dir / "response_map.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    grid = _grid_shape(layout, mean.shape[1])
    if grid is not None:
        rows, cols = grid
        picture = np.full(rows * cols, np.nan)
        total = mean.sum(axis=1)
        for k, e in enumerate(candidates):
            if e < rows * cols:
                picture[e] = total[k]
        fig, ax = plt.subplots(figsize=(6, 5.5))
        cmap = plt.get_cmap("magma").copy()
        cmap.set_bad("lightgrey")
        im = ax.imshow(np.ma.masked_invalid(picture.reshape(rows, cols)), cmap=cmap, interpolation="nearest")
        for e in range(rows * cols):
            count = scan["responders_count"].get(str(e))
            ax.text(e % cols, e // cols, "" if count is None else str(count), ha="center", va="center",
                    color="cyan", fontsize=8)
        ax.set(title="stimulated electrode: evoked spikes (colour),\nreliable responders (number); grey: not scanned",
               xticks=range(cols), yticks=range(rows))
        fig.colorbar(im, ax=ax, label="evoked spikes / trial, all electrodes")
        fig.tight_layout()
        paths.append(out_dir / "response_grid.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _grid_shape(layout: dict[str, Any] | None, n: int) -> tuple[int, int] | None:
    """(rows, cols) of a full rectangular grid layout of n electrodes (the 8 x 8 MEA), else None."""
    if not layout:
        return None
    rows, cols = layout.get("rows"), layout.get("cols")
    if isinstance(rows, int) and isinstance(cols, int) and rows * cols == n:
        return rows, cols
    return (8, 8) if n == 64 else None
