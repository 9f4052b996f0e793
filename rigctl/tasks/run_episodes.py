"""The episodes of a stored task run, whoever played it (what `rigctl export episodes` and the report read).

- an agent rig's run: the `episode_end` lines of events.jsonl (its trials.bin may keep only some episodes' steps);
- a maze played on an MEA: its step trials in trials.bin, grouped by episode; an episode the run's end cut short
  is marked `complete = 0`;
- Pong: rallies, by rigctl.tasks.pong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rigctl.errors import StoreError
from rigctl.store import RunInfo, load_run_meta, read_jsonl, read_records
from rigctl.tasks.closed_loop import PHASE_STEP
from rigctl.tasks.episodes import EpisodeRow

MOVE_NAMES = ("up", "down", "left", "right")


def run_info(run_dir: Path) -> RunInfo:
    return RunInfo(Path(run_dir), load_run_meta(Path(run_dir)))


def is_agent_run(info: RunInfo) -> bool:
    return (info.meta.get("rig_description") or {}).get("mode") == "agent"


def maze_episode_rows(run_dir: Path) -> list[EpisodeRow]:
    """One row per episode: episode, steps, reached, and how each episode's moves were spread (agent runs) or
    whether it ended and when (MEA runs, in seconds of task time)."""
    info = run_info(run_dir)
    if is_agent_run(info):
        rows = []
        for e in read_jsonl(info.path / "events.jsonl"):
            if e.get("event") == "episode_end":
                moves = e.get("moves") or [0, 0, 0, 0]
                rows.append(EpisodeRow(int(e["episode"]), int(e["steps"]), bool(e["reached"]),
                                       dict(zip(MOVE_NAMES, (int(m) for m in moves)))))
        return rows
    trials = read_records(info.path / "trials.bin", info.trial_dtype)
    return mea_maze_rows(trials, float(info.meta["sample_rate_hz"]), _max_steps(info))


def _max_steps(info: RunInfo) -> int:
    from rigctl.yamlcheck import load_located

    return int(load_located(info.path / "protocol.yaml", error=StoreError).data.get("max_steps", 0))


def mea_maze_rows(trials: np.ndarray, sample_rate_hz: float, max_steps: int) -> list[EpisodeRow]:
    steps = trials[trials["phase"] == PHASE_STEP]
    rows = []
    for episode in np.unique(steps["episode"]).tolist():
        mine = steps[steps["episode"] == episode]
        reached = bool(mine["reached"].any())
        n = int(len(mine))
        moves = np.bincount(mine["action"][mine["action"] >= 0].astype(np.int64), minlength=4)[:4]
        rows.append(EpisodeRow(int(episode), n, reached, {
            "complete": int(reached or n >= max_steps),
            "start_s": round(float(mine["sample"][0]) / sample_rate_hz, 3),
            "end_s": round(float(mine["sample"][-1]) / sample_rate_hz, 3),
            **dict(zip(MOVE_NAMES, (int(m) for m in moves)))}))
    return rows
