"""The report of a plate: each well's own report, plate.csv (a row per well: condition, seed, status, figures),
plate_summary.json (per condition: mean and SD over its wells, as a sweep's) and plate.png (the wells on the
plate, coloured by their ensemble separation, beside the per-condition figures)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rigctl.errors import RigctlError, StoreError
from rigctl.figures import save_figure
from rigctl.plate_file import WELLS_DIR, Plate, read_plate_meta
from rigctl.report import write_report
from rigctl.report_sweep import sweep_summary
from rigctl.store import load_run_meta
from rigctl.sweep import Outcome, Point, point_figures, write_results

RESULTS_FILE = "plate.csv"
COLOUR_FIGURE = "separation_last10"


def write_plate_report(plate_dir: Path, warn: Callable[[str], None] = lambda message: None) -> Path:
    """Every well's report (a well that cannot be reported yet is named through `warn`), then the plate's."""
    plate_dir = Path(plate_dir)
    meta = read_plate_meta(plate_dir)
    plate = Plate.from_json(meta["plate"])
    outcomes = []
    for well in plate.wells:
        run_dir = plate_dir / WELLS_DIR / well.name
        status = "not run"
        if (run_dir / "run.json").is_file():
            status = str(load_run_meta(run_dir).get("status") or "not run")
            try:
                write_report(run_dir)
            except RigctlError as exc:  # a well with no trials yet: the plate is reported without it
                warn(f"well {well.name}: {exc}")
        outcomes.append(Outcome(Point(well.name, {"condition": well.condition, "seed": well.seed}), status,
                                figures=point_figures(run_dir)))
    write_results(plate_dir, outcomes, ["condition", "seed"], RESULTS_FILE)
    summary = sweep_summary(plate_dir, RESULTS_FILE, WELLS_DIR)
    summary["plate"] = {"name": plate.name, "rows": plate.rows, "cols": plate.cols, "status": meta.get("status"),
                        "wells": {o.point.name: {"condition": o.point.params["condition"], "status": o.status,
                                                 **{k: v for k, v in o.figures.items() if v is not None}}
                                  for o in outcomes}}
    path = plate_dir / "plate_summary.json"
    try:
        summary["plots"] = [p.name for p in plot_plate(summary, plate_dir)]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(f"{plate_dir}: cannot write the plate report ({exc.strerror or exc})") from exc
    return path


def plot_plate(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = summary["plate"]
    rows, cols = p["rows"], p["cols"]
    grid = np.full((rows, cols), np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(6 + 1.3 * cols, 1.2 * rows + 2.5))
    ax = axes[0]
    for name, well in p["wells"].items():
        value = well.get(COLOUR_FIGURE)
        grid[ord(name[0]) - ord("A"), int(name[1:]) - 1] = np.nan if value is None else value
    finite = np.isfinite(grid).any()
    lo, hi = (float(np.nanmin(grid)), float(np.nanmax(grid))) if finite else (0.0, 1.0)
    image = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    for name, well in p["wells"].items():
        r, c = ord(name[0]) - ord("A"), int(name[1:]) - 1
        value = grid[r, c]
        label = "\n".join(textwrap.wrap(well["condition"], 14)[:3])
        dark = not np.isfinite(value) or (value - lo) < 0.6 * (hi - lo)  # white on the dark end of viridis
        ax.text(c, r, f"{name}\n{label}\n{'-' if not np.isfinite(value) else f'{value:.2f}'}", ha="center",
                va="center", fontsize=6, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=COLOUR_FIGURE, shrink=0.8)
    ax.set_xticks(range(cols))
    ax.set_xticklabels([str(c + 1) for c in range(cols)])
    ax.set_yticks(range(rows))
    ax.set_yticklabels([chr(ord("A") + r) for r in range(rows)])
    ax.set_title("wells: ensemble separation, sessions' last 10")
    labels = list(summary["conditions"])
    stats = [summary["conditions"][lab]["figures"].get(COLOUR_FIGURE) for lab in labels]
    xs = [i for i, s in enumerate(stats) if s]
    axes[1].errorbar(xs, [stats[i]["mean"] for i in xs], yerr=[stats[i]["sd"] for i in xs], fmt="o", capsize=4)
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=25, ha="right", fontsize=7)
    axes[1].set(ylabel=COLOUR_FIGURE, title="per condition: mean ± SD over wells")
    axes[1].grid(alpha=0.3)
    return save_figure(fig, f"plate {p['name']} ({p['status']})", Path(out_dir) / "plate.png")
