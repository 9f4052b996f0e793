"""A run directory read into plain arrays for exporters (NWB, SpikeInterface): no optional library here.

Everything an exporter needs is checked once, here: a missing or non-run directory, a corrupt run.json,
torn last records (ignored, like every reader of the store), raw segments out of order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.errors import StoreError
from rigctl.export import load_run_info
from rigctl.layout import ElectrodeLayout
from rigctl.store import RAW_INDEX_DTYPE, RunInfo, read_jsonl, read_records, read_spikes, read_stims

DEFAULT_UV_PER_BIT = 0.195  # runs made before run.json recorded `uV_per_bit`: every driver's default then
UNIT_NAMES = {0: "uA", 1: "mV"}


@dataclass(frozen=True)
class RawRanges:
    """Kept raw samples: `raw.bin` is their concatenation; range k covers samples
    first_sample[k] .. first_sample[k] + n_samples[k] - 1 and rows start_row[k].. of `frames`."""

    first_sample: np.ndarray  # int64 [K]
    n_samples: np.ndarray  # int64 [K]
    frames: np.ndarray  # int16 [sum(n_samples), n_channels], a read-only memmap (or empty)

    @property
    def start_row(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_samples)[:-1]]).astype(np.int64)

    def sample_of_rows(self, rows: slice) -> np.ndarray:
        """Amplifier sample index of each row of `frames` in `rows` (for timestamps exact to the sample)."""
        idx = np.arange(*rows.indices(len(self.frames)), dtype=np.int64)
        k = np.searchsorted(self.start_row, idx, side="right") - 1
        return self.first_sample[k] + (idx - self.start_row[k])


@dataclass
class RunData:
    """One run directory's records, ready to export."""

    info: RunInfo
    sample_rate_hz: float
    uV_per_bit: float
    layout: ElectrodeLayout
    raw: RawRanges
    spikes: np.ndarray  # SPIKE_DTYPE
    stims: np.ndarray  # STIM_DTYPE
    trials: np.ndarray  # the run's trial dtype
    model_rows: list[dict]
    events: list[dict]
    protocol_yaml: str
    warnings: list[str] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        return self.info.meta

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "not recorded"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (finished or not: `warnings` says what an unfinished run lacks)."""
    info = load_run_info(Path(run_dir))
    meta, path = info.meta, info.path
    fs = meta.get("sample_rate_hz") or (meta.get("rig_description") or {}).get("sample_rate_hz")
    if not isinstance(fs, (int, float)) or not fs > 0:
        raise StoreError(f"{path / 'run.json'}: corrupt: field 'sample_rate_hz' has value {fs!r}; allowed: Hz > 0")
    warnings = []
    upb = meta.get("uV_per_bit")
    if upb is None:
        upb = DEFAULT_UV_PER_BIT
        warnings.append(f"{path / 'run.json'}: no 'uV_per_bit' (a run made before it was recorded); "
                        f"assuming {DEFAULT_UV_PER_BIT} uV per bit")
    if meta.get("status") != "complete":
        warnings.append(f"{path}: the run is not complete (status: {meta.get('status', 'not recorded')}); "
                        "exporting the records on disk")
    n_ch = int(meta["shapes"]["n_electrodes"])
    layout = _layout(meta, n_ch, path)
    protocol = path / "protocol.yaml"
    return RunData(info=info, sample_rate_hz=float(fs), uV_per_bit=float(upb), layout=layout,
                   raw=_raw_ranges(path, n_ch), spikes=read_spikes(path), stims=read_stims(path),
                   trials=read_records(path / "trials.bin", info.trial_dtype),
                   model_rows=read_jsonl(path / "model_sessions.jsonl"), events=read_jsonl(path / "events.jsonl"),
                   protocol_yaml=protocol.read_text() if protocol.exists() else "", warnings=warnings)


def _layout(meta: dict, n_ch: int, path: Path) -> ElectrodeLayout:
    raw = (meta.get("rig_description") or {}).get("layout")
    if not raw:
        return ElectrodeLayout.grid(int(np.ceil(n_ch / 8)), 8)  # cannot happen for runs of this version
    positions = np.asarray(raw.get("positions_um"), dtype=np.float64)
    names = tuple(str(n) for n in raw.get("names", ()))
    if positions.shape != (n_ch, 2) or len(names) != n_ch:
        raise StoreError(f"{path / 'run.json'}: corrupt: field 'rig_description.layout' describes "
                         f"{len(names)} electrodes; allowed: {n_ch} (shapes.n_electrodes)")
    return ElectrodeLayout(positions, names)


def _raw_ranges(path: Path, n_ch: int) -> RawRanges:
    """Merge the per-chunk raw segments into contiguous kept ranges; drop a torn tail."""
    index = read_records(path / "raw_index.bin", RAW_INDEX_DTYPE)
    raw_file = path / "raw.bin"
    size = raw_file.stat().st_size if raw_file.exists() else 0
    frame = 2 * n_ch
    expected = np.concatenate([[0], np.cumsum(index["n_samples"].astype(np.int64) * frame)[:-1]])
    if len(index) and not np.array_equal(index["offset"], expected):
        bad = int(np.flatnonzero(index["offset"] != expected)[0])
        raise StoreError(f"{path / 'raw_index.bin'}: corrupt: segment {bad} has byte offset "
                         f"{int(index['offset'][bad])}; allowed: {int(expected[bad])} (segments are contiguous)")
    whole = (index["offset"] + index["n_samples"] * frame) <= size
    index = index[whole] if len(index) else index
    ends = index["first_sample"] + index["n_samples"]
    if len(index) > 1 and np.any(index["first_sample"][1:] < ends[:-1]):
        bad = int(np.flatnonzero(index["first_sample"][1:] < ends[:-1])[0]) + 1
        raise StoreError(f"{path / 'raw_index.bin'}: corrupt: segment {bad} starts at sample "
                         f"{int(index['first_sample'][bad])}, before the previous one ends ({int(ends[bad - 1])})")
    starts = np.flatnonzero(np.concatenate([[True], index["first_sample"][1:] != ends[:-1]])) if len(index) else \
        np.zeros(0, np.int64)
    first = index["first_sample"][starts].astype(np.int64)
    stops = np.concatenate([starts[1:], [len(index)]]).astype(np.int64)
    lengths = np.array([int(index["n_samples"][a:b].sum()) for a, b in zip(starts, stops)], np.int64)
    total = int(lengths.sum())
    frames = np.memmap(raw_file, np.int16, "r", shape=(total, n_ch)) if total else np.zeros((0, n_ch), np.int16)
    return RawRanges(first, lengths, frames)


def model_tables(rows: list[dict]) -> dict[str, dict[str, list]]:
    """model_sessions.jsonl rows grouped by model name, as columns: session, phase, one column per scalar
    value (numbers as float, NaN where a row lacks it; text as str), `nested_json` for the rest."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(str(row.get("model", "unknown")), []).append(row)
    out: dict[str, dict[str, list]] = {}
    for name, group in grouped.items():
        payloads = [{k: v for k, v in r.items() if k not in ("model", "session", "phase")} for r in group]
        cols: dict[str, list] = {"session": [int(r.get("session", 0)) for r in group],
                                 "phase": [str(r.get("phase", "")) for r in group]}
        keys = sorted({k for p in payloads for k, v in p.items() if _scalar(v)} - set(cols))
        for key in keys:
            text = any(isinstance(p.get(key), str) for p in payloads)
            cols[key] = [str(p.get(key, "")) if text else float(p[key]) if _scalar(p.get(key)) else float("nan")
                         for p in payloads]
        nested = [{k: v for k, v in p.items() if not _scalar(v)} for p in payloads]
        if any(nested):
            cols["nested_json"] = [json.dumps(n, sort_keys=True) for n in nested]
        out[name] = cols
    return out


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and value is not None
