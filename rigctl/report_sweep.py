"""The report of a sweep directory: each figure of sweep.csv against the swept parameters, mean and SD over seeds.

A condition is a point's parameters without its seed; its figure is the mean over the seeds that completed,
with the sample standard deviation as the error bar (n is printed, so a condition with one seed shows it).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from rigctl.figures import save_figure
from rigctl.errors import StoreError
from rigctl.sweep import FIGURE_COLUMNS, POINTS_DIR, RESULTS_FILE, SWEEP_FILE

BLOCK = 10  # episodes per block of the learning curves (the CB22 paper's)


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sweep_summary(sweep_dir: Path, results_file: str = RESULTS_FILE, points_dir: str = POINTS_DIR) -> dict[str, Any]:
    """Per condition (parameters but the seed): points, complete points, and mean / SD / n of every figure.
    A plate's wells are read the same way (`results_file` plate.csv, `points_dir` wells)."""
    path = Path(sweep_dir) / results_file
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the sweep's results ({exc.strerror or exc}); run the sweep first") \
            from None
    params = [c for c in (rows[0].keys() if rows else []) if c not in
              ("point", "status", "action", "seconds", "error", *FIGURE_COLUMNS)]
    condition_keys = [p for p in params if p != "seed"]
    conditions: dict[str, dict[str, Any]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row[k]}" for k in condition_keys if row[k] != "") or "all"
        entry = conditions.setdefault(label, {"params": {k: row[k] for k in condition_keys}, "points": 0,
                                              "complete": 0, "failed": 0, "values": {c: [] for c in FIGURE_COLUMNS}})
        entry["points"] += 1
        entry["complete"] += row["status"] == "complete"
        entry["failed"] += row["status"] == "failed"
        if row["status"] == "complete":
            for column in FIGURE_COLUMNS:
                value = _number(row.get(column, ""))
                if value is not None:
                    entry["values"][column].append(value)
        if row["status"] == "complete":
            entry.setdefault("runs", []).append(Path(sweep_dir) / points_dir / row["point"])
    for entry in conditions.values():
        values = entry.pop("values")
        entry["figures"] = {c: _stats(v) for c, v in values.items() if v}
        pooled = pooled_episodes(entry.pop("runs", []))
        if pooled:
            entry["episodes_pooled"] = pooled
    return {"sweep_dir": str(sweep_dir), "parameters": params, "conditions": conditions,
            "error_bars": "sample standard deviation over the condition's completed seeds"}


def pooled_episodes(run_dirs: list[Path]) -> dict[str, Any] | None:
    """A maze condition's episodes pooled over its runs, as the CB22 paper counts them: success = the share of
    (agent, episode) pairs in a block that reached the goal; median steps over those pairs."""
    import numpy as np

    steps, reached = [], []
    for run_dir in run_dirs:
        try:
            task = json.loads((run_dir / "summary.json").read_text()).get("task") or {}
        except (OSError, ValueError):
            continue
        if task.get("task") == "maze" and task.get("steps"):
            steps.append(task["steps"])
            reached.append(task["reached"])
    if not steps:
        return None
    n = min(len(s) for s in steps)  # runs of one condition have as many episodes (MEA: cut to the shortest)
    s = np.array([x[:n] for x in steps], dtype=np.float64)
    r = np.array([x[:n] for x in reached], dtype=np.float64)
    blocks = range(0, n, BLOCK)
    last = slice(max(0, n - BLOCK), n)
    return {"runs": len(steps), "episodes_per_run": n,
            "success_first10": round(float(r[:, :BLOCK].mean()), 4), "success_last10": round(float(r[:, last].mean()), 4),
            "median_steps_first10": float(np.median(s[:, :BLOCK])), "median_steps_last10": float(np.median(s[:, last])),
            "success_per_block": [round(float(r[:, i:i + BLOCK].mean()), 4) for i in blocks],
            "median_steps_per_block": [float(np.median(s[:, i:i + BLOCK])) for i in blocks]}


def plot_pooled(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Learning curves of the maze conditions (success and median steps per block of 10 episodes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = {label: e["episodes_pooled"] for label, e in summary["conditions"].items() if "episodes_pooled" in e}
    if not pooled:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, p in pooled.items():
        x = [BLOCK * i + BLOCK / 2 for i in range(len(p["success_per_block"]))]
        axes[0].plot(x, p["success_per_block"], "o-", label=f"{label} (n={p['runs']})")
        axes[1].plot(x, p["median_steps_per_block"], "o-", label=label)
    axes[0].set(xlabel="episode", ylabel=f"success per block of {BLOCK}", ylim=(0, 1), title="goal reached")
    axes[1].set(xlabel="episode", ylabel="median steps", title="steps per episode")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return save_figure(fig, f"sweep {Path(summary['sweep_dir']).name}: episodes pooled over seeds",
                       Path(out_dir) / "sweep_episodes.png")


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": round(mean, 6), "sd": round(sd, 6), "n": n}


def plot_sweep(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """One panel per figure: conditions on x, mean +- SD over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["conditions"])
    figures = [c for c in FIGURE_COLUMNS if any(c in e["figures"] for e in summary["conditions"].values())]
    if not labels or not figures:
        return []
    fig, axes = plt.subplots(len(figures), 1, figsize=(max(6.0, 0.9 * len(labels) + 2), 2.6 * len(figures)),
                             squeeze=False)
    for ax, column in zip(axes[:, 0], figures):
        stats = [summary["conditions"][lab]["figures"].get(column) for lab in labels]
        xs = [i for i, s in enumerate(stats) if s]
        ax.errorbar(xs, [stats[i]["mean"] for i in xs], yerr=[stats[i]["sd"] for i in xs], fmt="o", capsize=4)
        for i in xs:
            ax.annotate(f"n={stats[i]['n']}", (i, stats[i]["mean"]), textcoords="offset points", xytext=(6, 4),
                        fontsize=7)
        ax.set_ylabel(column)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels if column == figures[-1] else [""] * len(labels), rotation=20, ha="right",
                           fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, f"sweep {Path(summary['sweep_dir']).name}: mean ± SD over seeds",
                       Path(out_dir) / "sweep.png")


def write_sweep_report(sweep_dir: Path) -> Path:
    """sweep_summary.json and sweep.png in the sweep directory; returns the summary's path."""
    sweep_dir = Path(sweep_dir)
    summary = sweep_summary(sweep_dir)
    path = sweep_dir / "sweep_summary.json"
    try:
        summary["plots"] = [p.name for p in plot_sweep(summary, sweep_dir) + plot_pooled(summary, sweep_dir)]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"{sweep_dir}: cannot write the sweep report ({exc.strerror or exc})") from exc
    return path
