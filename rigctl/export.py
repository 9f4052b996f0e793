"""Trial export in the layout of the released data (s, o, r): for the model, for CSV, for users."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from rigctl.errors import StoreError
from rigctl.store import read_trials


def load_run_trials(run_dir: Path) -> dict[str, np.ndarray]:
    """s uint8 [T,2], o uint8 [T,n_stimuli], r int32 [T,N], session int32 [T] (1-based), trial, sample."""
    trials = read_trials(Path(run_dir))
    if len(trials) == 0:
        raise StoreError(f"{run_dir}: the run holds no trials yet")
    return {"s": trials["sources"].astype(np.uint8), "o": trials["stimuli"].astype(np.uint8),
            "r": trials["counts"].astype(np.int32), "session": trials["session"].astype(np.int32),
            "trial": trials["trial"].astype(np.int32), "sample": trials["sample"].astype(np.int64)}


def csv_header(n_stimuli: int, n_electrodes: int) -> str:
    cols = ["session", "trial", "sample", "s1", "s2"]
    cols += [f"o{i + 1}" for i in range(n_stimuli)] + [f"r{i + 1}" for i in range(n_electrodes)]
    return ",".join(cols)


def write_trials_csv(run_dir: Path, out: TextIO) -> int:
    """One row per trial; returns the number of rows written."""
    t = load_run_trials(run_dir)
    out.write(csv_header(t["o"].shape[1], t["r"].shape[1]) + "\n")
    table = np.concatenate([t["session"][:, None], t["trial"][:, None], t["sample"][:, None],
                            t["s"], t["o"], t["r"]], axis=1).astype(np.int64)
    np.savetxt(out, table, fmt="%d", delimiter=",")
    return len(table)
