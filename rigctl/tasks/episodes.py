"""Episodes table of a closed-loop task: one CSV row per episode (what `rigctl export episodes RUN_DIR` writes)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO

EPISODE_COLUMNS = ("episode", "steps", "reached")


@dataclass(frozen=True)
class EpisodeRow:
    """One episode: its 1-based number, its length in steps and whether the goal was reached, plus any
    extra named values (e.g. seed, decision_prior_right) that become further columns."""

    episode: int
    steps: int
    reached: bool
    extra: dict[str, object] = field(default_factory=dict)


def write_episodes_csv(out: TextIO | Path, rows: Iterable[EpisodeRow]) -> int:
    """Write the rows (header `episode,steps,reached[,extra...]`, reached as 0/1); returns the rows written.

    Extra columns are those of the first row, in its order; every row must carry the same extra names.
    """
    if isinstance(out, Path):
        with out.open("w", newline="") as handle:
            return write_episodes_csv(handle, rows)
    writer = csv.writer(out, lineterminator="\n")
    extra_names: tuple[str, ...] | None = None
    n = 0
    for row in rows:
        if extra_names is None:
            extra_names = tuple(row.extra)
            writer.writerow(EPISODE_COLUMNS + extra_names)
        elif tuple(row.extra) != extra_names:
            raise ValueError(f"episode {row.episode}: extra columns {tuple(row.extra)} differ from {extra_names}")
        writer.writerow([row.episode, row.steps, int(row.reached)] + [row.extra[k] for k in extra_names])
        n += 1
    if extra_names is None:
        writer.writerow(EPISODE_COLUMNS)
    return n


def read_episodes_csv(path: Path) -> list[EpisodeRow]:
    """The rows written by `write_episodes_csv` (extra values come back as strings)."""
    with path.open(newline="") as handle:
        rows = []
        for rec in csv.DictReader(handle):
            extra = {k: v for k, v in rec.items() if k not in EPISODE_COLUMNS}
            rows.append(EpisodeRow(int(rec["episode"]), int(rec["steps"]), rec["reached"] == "1", extra))
        return rows


def write_dict_rows_csv(out: TextIO, rows: list[dict[str, object]], columns: tuple[str, ...]) -> int:
    """Rows of a task whose episodes are not walks to a goal (Pong: `episode,hits,...`), header `columns`."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return len(rows)
