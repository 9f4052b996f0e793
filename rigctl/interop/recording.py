"""Recordings made by other systems (any format SpikeInterface reads) as int16 frames for playback.

`open_recording(path)` picks the reader from the path (NWB, Open Ephys binary, Intan .rhd/.rhs, MCS or
MaxWell .h5); `RecordingFrames` serves one segment as int16 counts of a single µV-per-count scale, sliced on
demand (nothing is loaded whole), so the composition root can hand it to `PlaybackAmplifier` and the
online signal path runs over it chunk by chunk, as it does on a rig.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rigctl.interop import InteropError, MissingExtraError, require
from rigctl.layout import ElectrodeLayout

FORMATS = "NWB (.nwb), Open Ephys binary (a folder with structure.oebin), Intan (.rhd, .rhs), MCS (.h5), MaxWell (.raw.h5)"
DEFAULT_UV_PER_BIT = 0.195  # for recordings that carry no gains (already in µV)


def open_recording(path: str | Path, label: str = "--recording") -> Any:
    """A SpikeInterface recording of `path`, or one InteropError line (missing, unreadable, unsupported)
    starting with `label` (the flag or rig-file field that named the path)."""
    path = Path(path)
    try:
        return _open(path, label)
    except InteropError as exc:
        raise InteropError(str(exc).replace("--recording ", f"{label} ", 1)) from None


def _open(path: Path, label: str) -> Any:
    if not path.exists():
        raise InteropError(f"--recording {path}: no such file or directory")
    reader, kwargs = _reader(path)
    se = require("spikeinterface.extractors")
    try:
        return getattr(se, reader)(**kwargs)
    except MissingExtraError:
        raise
    except ImportError as exc:
        raise MissingExtraError(f"--recording {path}: the {reader} reader needs a library that is not installed "
                                f"({exc})") from None
    except Exception as exc:  # a reader's failure on a foreign file: say which file and which reader
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise InteropError(f"--recording {path}: cannot read it with {reader} ({type(exc).__name__}: {text})") from None


def _reader(path: Path) -> tuple[str, dict]:
    """(SpikeInterface reader name, its arguments) for a path, by name and, for .h5, by content."""
    if path.is_dir():
        if path.name == "continuous" or any(path.rglob("structure.oebin")):
            return "read_openephys", {"folder_path": str(path)}
        raise InteropError(f"--recording {path}: a folder without structure.oebin; allowed: {FORMATS}")
    _check_readable(path)
    name = path.name.lower()
    if name == "structure.oebin":
        return "read_openephys", {"folder_path": str(path.parent)}
    if name.endswith(".nwb"):
        return "read_nwb_recording", {"file_path": str(path)}
    if name.endswith((".rhd", ".rhs")):
        return "read_intan", {"file_path": str(path), "stream_id": "0"}
    if name.endswith(".h5"):
        return _h5_reader(path)
    raise InteropError(f"--recording {path}: unsupported format {path.suffix or '(no extension)'!r}; "
                       f"allowed: {FORMATS}")


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise InteropError(f"--recording {path}: cannot read ({exc.strerror or exc})") from None


def _h5_reader(path: Path) -> tuple[str, dict]:
    h5py = require("h5py")
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            mcs = "Data" in f and "Recording_0" in f["Data"]
    except OSError as exc:
        raise InteropError(f"--recording {path}: not an HDF5 file ({exc})") from None
    if mcs:
        return "read_mcsh5", {"file_path": str(path)}
    if keys & {"mapping", "data_store", "wells", "recordings"}:
        return "read_maxwell", {"file_path": str(path)}
    raise InteropError(f"--recording {path}: an HDF5 file of neither MCS nor MaxWell layout "
                       f"(top-level groups: {', '.join(sorted(keys)) or 'none'}); allowed: {FORMATS}")


class RecordingFrames:
    """Segment `segment` of a recording as int16 frames [n_samples, n_channels] at `uV_per_bit`.

    int16 data with one gain and no offset pass through unchanged; other data (uint16 with an offset,
    float, mixed gains) are converted to µV and requantized at the smallest gain (clipped to int16)."""

    def __init__(self, recording: Any, segment: int = 0):
        if not 0 <= segment < recording.get_num_segments():
            raise InteropError(f"segment {segment}: allowed 0..{recording.get_num_segments() - 1}")
        self.recording = recording
        self.segment = segment
        n = recording.get_num_channels()
        gains = recording.get_channel_gains() if recording.has_scaleable_traces() else None
        offsets = recording.get_channel_offsets() if gains is not None else None
        self.dtype = np.dtype(np.int16)
        self.shape = (int(recording.get_num_samples(segment)), n)
        self.ndim = 2
        self.sample_rate_hz = round(float(recording.sampling_frequency), 6)  # MCS: 1 / mean tick, 24999.999...
        raw_dtype = np.dtype(recording.get_dtype())
        if gains is not None and raw_dtype == np.int16 and np.all(offsets == 0) and np.ptp(gains) == 0:
            self._gains = None
            self.uV_per_bit = float(gains[0])
        else:
            self._gains = np.asarray(gains if gains is not None else np.ones(n), np.float64)
            self._offsets = np.asarray(offsets if offsets is not None else np.zeros(n), np.float64)
            positive = self._gains[self._gains > 0]
            self.uV_per_bit = float(positive.min()) if gains is not None and len(positive) else DEFAULT_UV_PER_BIT
        self.layout = _layout(recording)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("RecordingFrames supports row slices only")
        start, stop, _ = rows.indices(self.shape[0])
        raw = self.recording.get_traces(segment_index=self.segment, start_frame=start, end_frame=max(start, stop),
                                        return_scaled=False)
        if self._gains is None:
            return np.asarray(raw, np.int16)
        uV = raw.astype(np.float64) * self._gains + self._offsets
        return np.clip(np.rint(uV / self.uV_per_bit), -32768, 32767).astype(np.int16)


def _layout(recording: Any) -> ElectrodeLayout:
    """Channel locations (2-D, µm) and ids; a square grid of 200 µm pitch when the file has none."""
    names = tuple(str(c) for c in recording.get_channel_ids())
    n = len(names)
    positions = None
    if "location" in recording.get_property_keys():
        positions = np.asarray(recording.get_property("location"), np.float64)
        positions = positions[:, :2] if positions.ndim == 2 and positions.shape[1] >= 2 else None
    if positions is None or positions.shape != (n, 2) or not np.all(np.isfinite(positions)) or \
            len(np.unique(positions, axis=0)) < n:
        side = int(np.ceil(np.sqrt(max(n, 1))))
        positions = ElectrodeLayout.grid(side, side, 200.0).positions_um[:n]
    return ElectrodeLayout(positions, names)
