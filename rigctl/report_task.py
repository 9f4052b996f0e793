"""The report of a task run. Maze: learning curve, action frequencies and the trajectories of the first and last
episode. Pong: hits per rally over time and the aces, first 5 minutes against the rest (DishBrain).

Maze figures follow the CB22 paper: success = the goal reached within the step cap; the first and the last block of
10 episodes; median steps over a block's episodes (an episode that hit the cap counts as the cap). On an MEA an
episode cut short by the run's end is left out (`complete = 0` in `rigctl export episodes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigctl.figures import save_figure
from rigctl.store import RunInfo, read_records
from rigctl.tasks.episodes import EpisodeRow
from rigctl.tasks.maze import generate_maze
from rigctl.tasks.run_episodes import MOVE_NAMES, maze_episode_rows

BLOCK = 10
MOVING_AVERAGE = 10


def block_figures(rows: list[EpisodeRow], block: int = BLOCK) -> dict[str, Any]:
    """Success rate and median steps of the first and the last `block` episodes, and per block."""
    steps = np.array([r.steps for r in rows], dtype=np.float64)
    reached = np.array([r.reached for r in rows], dtype=np.float64)
    out: dict[str, Any] = {"episodes": len(rows)}
    if not len(rows):
        return out
    first, last = slice(0, block), slice(max(0, len(rows) - block), len(rows))
    out.update(success_first10=round(float(reached[first].mean()), 4), success_last10=round(float(reached[last].mean()), 4),
               median_steps_first10=float(np.median(steps[first])), median_steps_last10=float(np.median(steps[last])),
               success_per_block=[round(float(reached[i:i + block].mean()), 4) for i in range(0, len(rows), block)],
               median_steps_per_block=[float(np.median(steps[i:i + block])) for i in range(0, len(rows), block)])
    return out


def moving_average(values: np.ndarray, width: int = MOVING_AVERAGE) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return []
    c = np.cumsum(np.insert(v, 0, 0.0))
    return [round(float((c[i + 1] - c[max(0, i + 1 - width)]) / min(width, i + 1)), 3) for i in range(len(v))]


def maze_summary(info: RunInfo, protocol: dict[str, Any]) -> dict[str, Any]:
    """The `task` block of summary.json for a maze run."""
    rows = maze_episode_rows(info.path)
    counted = [r for r in rows if int(r.extra.get("complete", 1))]
    moves = np.array([[int(r.extra.get(m, 0)) for m in MOVE_NAMES] for r in counted], dtype=np.int64).reshape(-1, 4)
    totals = moves.sum(axis=0)
    return {
        "task": "maze", "player": "agent" if "complete" not in (rows[0].extra if rows else {}) else "culture",
        "decision_prior_right": protocol.get("decision_prior_right"), "max_steps": protocol.get("max_steps"),
        "decoder": (protocol.get("mea") or {}).get("decoder"),
        "episodes_cut_short": len(rows) - len(counted),
        **block_figures(counted),
        "steps": [r.steps for r in counted], "reached": [int(r.reached) for r in counted],
        "steps_moving_average": moving_average(np.array([r.steps for r in counted])),
        "move_share": _shares(totals),
        "move_share_first10": _shares(moves[:BLOCK].sum(axis=0)),
        "move_share_last10": _shares(moves[-BLOCK:].sum(axis=0)),
    }


def _shares(counts: np.ndarray) -> dict[str, float]:
    return {m: round(float(c / max(1, counts.sum())), 4) for m, c in zip(MOVE_NAMES, counts)}


def _trajectory(trials: np.ndarray, episode: int) -> np.ndarray | None:
    mine = trials[(trials["episode"] == episode) & (trials["phase"] == 0)]
    return None if not len(mine) else np.stack([mine["row"], mine["col"]], axis=1)


def plot_maze(summary: dict[str, Any], info: RunInfo, protocol: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = summary["task"]
    steps = np.array(task["steps"])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [1.3, 1, 1.6]})
    ax = axes[0]
    episodes = np.arange(1, len(steps) + 1)
    reached = np.array(task["reached"], dtype=bool)
    ax.plot(episodes[reached], steps[reached], "o", ms=3, color="tab:blue", label="goal reached")
    ax.plot(episodes[~reached], steps[~reached], "x", ms=4, color="tab:red", label="step cap")
    ax.plot(episodes, task["steps_moving_average"], "k-", label=f"moving average ({MOVING_AVERAGE})")
    ax.set(xlabel="episode", ylabel="steps", title=f"learning curve: success {task.get('success_first10', 0):.2f} -> "
                                                   f"{task.get('success_last10', 0):.2f} (first/last {BLOCK})")
    ax.legend(fontsize=8)
    x = np.arange(len(MOVE_NAMES))
    for offset, key, label in ((-0.2, "move_share_first10", f"first {BLOCK} episodes"),
                               (0.2, "move_share_last10", f"last {BLOCK} episodes")):
        axes[1].bar(x + offset, [task[key][m] for m in MOVE_NAMES], 0.4, label=label)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(MOVE_NAMES)
    axes[1].legend(fontsize=8, loc="lower center")
    axes[1].set(ylabel="share of moves", title="action frequencies")
    maze = generate_maze(int(summary["seed"]), int(protocol["maze_rows"]), int(protocol["maze_cols"]))
    axes[2].imshow(maze, cmap="Greys", interpolation="nearest")
    n = len(steps)
    trials = read_records(info.path / "trials.bin", info.trial_dtype) if n else None  # once: up to ~35 B a step
    for episode, color in ((1, "tab:orange"), (n, "tab:green")):
        path = _trajectory(trials, episode) if n else None
        if path is not None:
            axes[2].plot(path[:, 1], path[:, 0], "-", color=color, lw=0.8, alpha=0.8, label=f"episode {episode}")
    axes[2].set(title="trajectories (first and last episode)", xticks=[], yticks=[])
    if n:
        axes[2].legend(fontsize=8, loc="lower right")
    return save_figure(fig, title, out_dir / "maze.png")


def pong_task_summary(trials: np.ndarray, sample_rate_hz: float) -> dict[str, Any]:
    """The `task` block of summary.json for a Pong run: the rallies and the first-5-minutes comparison."""
    from rigctl.tasks.pong import pong_episode_rows, pong_summary

    rows = pong_episode_rows(trials, sample_rate_hz)
    steps = trials[trials["phase"] == 0] if len(trials) else trials
    moves = np.bincount(steps["action"][steps["action"] >= 0].astype(np.int64), minlength=2)[:2] if len(steps) else [0, 0]
    return {"task": "pong", **pong_summary(trials, 5.0, sample_rate_hz), "rallies": len(rows),
            "hits": [r["hits"] for r in rows], "end_s": [r["end_s"] for r in rows],
            "hits_moving_average": moving_average(np.array([r["hits"] for r in rows])),
            "move_share": {"up": round(float(moves[0] / max(1, sum(moves))), 4),
                           "down": round(float(moves[1] / max(1, sum(moves))), 4)}}


def plot_pong(summary: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = summary["task"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    minutes = np.array(task["end_s"]) / 60.0
    axes[0].plot(minutes, task["hits"], "o", ms=3, color="tab:blue", label="rally")
    axes[0].plot(minutes, task["hits_moving_average"], "k-", label=f"moving average ({MOVING_AVERAGE})")
    axes[0].axvline(task["first_minutes"], color="tab:red", ls="--", lw=1)
    axes[0].set(xlabel="task time (min)", ylabel="hits per rally", title=f"rallies: {task['rallies']}")
    axes[0].legend(fontsize=8)
    parts = ("first", "rest")
    labels = [f"first {task['first_minutes']:g} min", "rest"]
    hits = [task[f"hits_per_rally_{p}"] or 0.0 for p in parts]
    aces = [task[f"ace_fraction_{p}"] or 0.0 for p in parts]
    x = np.arange(2)
    axes[1].bar(x - 0.2, hits, 0.4, label="hits per rally")
    axes[1].bar(x + 0.2, aces, 0.4, label="ace fraction")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels)
    axes[1].legend(fontsize=8)
    axes[1].set(title="first minutes against the rest")
    return save_figure(fig, title, out_dir / "pong.png")


def task_lines(task: dict[str, Any], label: str = "") -> list[str]:
    """What a person reads of a task's figures at the end of `rigctl run` or `rigctl report` (stderr)."""
    prefix = f"{label}: " if label else ""
    if task.get("task") == "maze" and "success_first10" in task:
        n = task.get("runs")
        return [f"{prefix}success {task['success_first10']:.2f} -> {task['success_last10']:.2f} (first -> last "
                f"{BLOCK} episodes), median steps {task['median_steps_first10']:g} -> {task['median_steps_last10']:g}"
                f"{f'; episodes of {n} runs pooled' if n else ''}"]
    if task.get("task") == "pong":
        def show(v: Any) -> str:
            return "-" if v is None else f"{v:.2f}"
        return [f"{prefix}hits per rally {show(task['hits_per_rally_first'])} (first {task['first_minutes']:g} min, "
                f"{task['rallies_first']} rallies) -> {show(task['hits_per_rally_rest'])} (rest, {task['rallies_rest']}); "
                f"aces {show(task['ace_fraction_first'])} -> {show(task['ace_fraction_rest'])}"]
    return []
