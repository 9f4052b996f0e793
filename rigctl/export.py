"""Trial export in the layout of the released data (s, o, r): for the model, for CSV, for users."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np

from rigctl.errors import StoreError
from rigctl.store import RunInfo, load_run_meta, read_records

SHAPE_FIELDS = ("n_sources", "n_stimuli", "n_electrodes")


def load_run_info(run_dir: Path) -> RunInfo:
    """A run directory's run.json, checked far enough to read its records: a missing path, a file, a
    directory without run.json or a corrupt run.json is one StoreError line naming it."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise StoreError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir}: is a file, not a run directory")
    where = run_dir / "run.json"
    try:
        meta = load_run_meta(run_dir)
    except UnicodeDecodeError as exc:
        raise StoreError(f"{where}: corrupt: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise StoreError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{where}: corrupt: expected a JSON object, got {type(meta).__name__}")
    if "shapes" not in meta:
        raise StoreError(f"{where}: corrupt: field 'shapes' is missing")
    shapes = meta["shapes"]
    if not isinstance(shapes, dict):
        raise StoreError(f"{where}: corrupt: field 'shapes' has value {shapes!r}; allowed: an object with "
                         f"{', '.join(SHAPE_FIELDS)}")
    required = ("n_electrodes",) if "trial_fields" in meta else SHAPE_FIELDS  # runs before declared fields: BSS
    for name in required:
        if name not in shapes:
            raise StoreError(f"{where}: corrupt: field 'shapes.{name}' is missing")
        value = shapes[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreError(f"{where}: corrupt: field 'shapes.{name}' has value {value!r}; allowed: an integer >= 0")
    info = RunInfo(run_dir, meta)
    try:
        info.trial_dtype
    except (TypeError, ValueError, KeyError) as exc:
        raise StoreError(f"{where}: corrupt: field 'trial_fields' cannot describe a record ({exc})") from None
    return info


def load_run_trials(run_dir: Path) -> dict[str, np.ndarray]:
    """s uint8 [T,2], o uint8 [T,n_stimuli], r int32 [T,N], session int32 [T] (1-based), trial, sample."""
    info = load_run_info(run_dir)
    names = {f.name for f in info.trial_fields}
    if not {"sources", "stimuli"} <= names:
        raise StoreError(f"{run_dir}: a {info.meta.get('protocol_kind', '?')} run; its trials have no hidden "
                         "sources and stimuli (only BSS runs do)")
    trials = read_records(info.path / "trials.bin", info.trial_dtype)
    if len(trials) == 0:
        raise StoreError(f"{run_dir}: the run holds no trials yet (status: {info.meta.get('status', 'not recorded')})")
    return {"s": trials["sources"].astype(np.uint8), "o": trials["stimuli"].astype(np.uint8),
            "r": trials["counts"].astype(np.int32), "session": trials["session"].astype(np.int32),
            "trial": trials["trial"].astype(np.int32), "sample": trials["sample"].astype(np.int64)}


def csv_columns(trial_fields, n_electrodes: int) -> list[str]:
    """session, trial, sample, the protocol's fields (BSS: s1,s2,o1..o32), r1..rN."""
    cols = ["session", "trial", "sample"]
    for f in trial_fields:
        cols += f.columns()
    return cols + [f"r{i + 1}" for i in range(n_electrodes)]


def csv_header(n_stimuli: int, n_electrodes: int) -> str:
    """The header of a BSS run's export."""
    from rigctl.store import bss_trial_fields

    return ",".join(csv_columns(bss_trial_fields(2, n_stimuli), n_electrodes))


def write_trials_csv(run_dir: Path, out: TextIO) -> int:
    """One row per trial, columns as `csv_columns`; returns the number of rows written."""
    info = load_run_info(run_dir)
    trials = read_records(info.path / "trials.bin", info.trial_dtype)
    if len(trials) == 0:
        raise StoreError(f"{run_dir}: the run holds no trials yet (status: {info.meta.get('status', 'not recorded')})")
    n_electrodes = info.meta["shapes"]["n_electrodes"]
    out.write(",".join(csv_columns(info.trial_fields, n_electrodes)) + "\n")
    parts = [trials[name].reshape(len(trials), -1) for name in trials.dtype.names]
    if all(np.issubdtype(p.dtype, np.integer) for p in parts):
        np.savetxt(out, np.concatenate([p.astype(np.int64) for p in parts], axis=1), fmt="%d", delimiter=",")
    else:
        fmt = [("%d" if np.issubdtype(p.dtype, np.integer) else "%.9g") for p in parts for _ in range(p.shape[1])]
        np.savetxt(out, np.concatenate([p.astype(np.float64) for p in parts], axis=1), fmt=fmt, delimiter=",")
    return len(trials)
