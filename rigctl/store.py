"""Session store: one directory per run, append-only files, crash-safe resume by truncation.

Layout (see docs/store.md):
  run.json            run metadata: protocol name, seed, rig, software version, shapes, status
  protocol.yaml       the resolved protocol, exactly as run
  trials.bin          fixed-size records (TRIAL dtype): session, trial, sample, sources, stimuli, counts
  spikes.bin          16-byte records: sample int64, channel int32, amplitude_uV float32
  stims.bin           one record per (command, electrode): sample, electrode, pulse parameters
  raw.bin, raw_index.bin   kept raw int16 samples (interleaved) and their (first_sample, n, offset) index
  events.jsonl        session starts/ends, overruns, faults, resumes (one JSON object per line)
  model_sessions.jsonl     per-session outputs of the online models (predictions, free energy, ...)
  .lock               held (flock) by the one process writing the run; never two writers at once
  checkpoint.npz      latest checkpoint: loop/rig/model state and the byte length of every file above
                      (plain data and arrays, never pickle: rigctl.checkpoint)
Records are flushed to the OS after every chunk; a SIGKILL loses at most the records of the chunk in flight,
and `resume` truncates every file back to the checkpoint's lengths before continuing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.checkpoint import read_checkpoint_file, write_checkpoint_file
from rigctl.engine import TrialField, trial_dtype
from rigctl.errors import StoreError
from rigctl.types import SpikeEvents, StimCommand, TrialRecord

SPIKE_DTYPE = np.dtype([("sample", "<i8"), ("channel", "<i4"), ("amplitude_uV", "<f4")])
STIM_DTYPE = np.dtype([("sample", "<i8"), ("electrode", "<i4"), ("unit", "u1"), ("pad", "u1", (3,)),
                       ("phase1_amplitude", "<f4"), ("phase1_us", "<f4"), ("interphase_us", "<f4"),
                       ("phase2_amplitude", "<f4"), ("phase2_us", "<f4")])
RAW_INDEX_DTYPE = np.dtype([("first_sample", "<i8"), ("n_samples", "<i8"), ("offset", "<i8")])
UNIT_CODES = {"uA": 0, "mV": 1}
APPEND_FILES = ("trials.bin", "spikes.bin", "stims.bin", "raw.bin", "raw_index.bin", "events.jsonl",
                "model_sessions.jsonl")


def bss_trial_fields(n_sources: int, n_stimuli: int) -> tuple[TrialField, ...]:
    """The trial fields of a BSS run (and of every run made before protocols declared their fields)."""
    return (TrialField("sources", "u1", (n_sources,), csv="s"), TrialField("stimuli", "u1", (n_stimuli,), csv="o"))


def read_records(path: Path, dtype: np.dtype) -> np.ndarray:
    """All complete records of an append-only file (a torn last record is ignored)."""
    if not path.exists():
        return np.empty(0, dtype)
    n = path.stat().st_size // dtype.itemsize
    return np.fromfile(path, dtype=dtype, count=n)


@dataclass
class RunInfo:
    """What run.json holds; everything needed to reopen the run."""

    path: Path
    meta: dict[str, Any]

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        """The protocol's declared trial fields (run.json `trial_fields`; runs before that are BSS runs)."""
        if "trial_fields" in self.meta:
            return tuple(TrialField.from_json(item) for item in self.meta["trial_fields"])
        shp = self.meta["shapes"]
        return bss_trial_fields(shp["n_sources"], shp["n_stimuli"])

    @property
    def trial_dtype(self) -> np.dtype:
        return trial_dtype(self.trial_fields, self.meta["shapes"]["n_electrodes"])


class SessionStore:
    """Append-only writer for one run directory (open an existing one, or `create` a new one)."""

    def __init__(self, path: Path, meta: dict[str, Any], lock: "RunLock | None" = None):
        self.path = Path(path)
        self.meta = meta
        self._lock = lock
        self.info = RunInfo(self.path, meta)
        self._trial_dtype = self.info.trial_dtype
        self._trial_field_names = [f.name for f in self.info.trial_fields]
        self._files = {name: open(self.path / name, "ab") for name in APPEND_FILES}
        self._synced_lengths: dict[str, int] = {}  # each file's length at its last fsync
        self._raw_offset = (self.path / "raw.bin").stat().st_size

    @staticmethod
    def create(path: Path, meta: dict[str, Any], texts: dict[str, str]) -> "SessionStore":
        """Create the run directory atomically: run.json and `texts` are written under a temporary name
        beside it, which is renamed to `path` only when complete, so a kill leaves either no run
        directory or a whole one."""
        path = Path(path)
        check_new_run_dir(path)
        tmp = path.parent / f".{path.name}.creating-{os.getpid()}"
        lock = None
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            lock = RunLock.acquire(tmp)  # held across the rename: nobody resumes a run still being started
            for name, text in {"run.json": json.dumps(meta, indent=2) + "\n", **texts}.items():
                (tmp / name).write_text(text)
            for name in APPEND_FILES:
                (tmp / name).touch()
            _fsync_dir(tmp)
            os.rename(tmp, path)  # onto a missing or empty directory only
            _fsync_dir(path.parent)
        except OSError as exc:
            if lock is not None:
                lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"{path}: cannot create the run directory ({exc.strerror or exc})") from exc
        return SessionStore(path, meta, lock)

    # ---- opening -------------------------------------------------------------------------------
    @staticmethod
    def open_existing(path: Path, lock: "RunLock") -> "SessionStore":
        """The store of a run this process holds the lock of (`RunLock.acquire`, before anything is read)."""
        return SessionStore(path, load_run_meta(path), lock)

    def _write_json(self, name: str, obj: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.path / name)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self._write_json("run.json", self.meta)

    def write_text(self, name: str, text: str) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    # ---- appending -----------------------------------------------------------------------------
    def append_trial(self, trial: TrialRecord) -> None:
        rec = np.zeros(1, self._trial_dtype)
        rec["session"], rec["trial"], rec["sample"] = trial.session, trial.trial, trial.sample
        for name in self._trial_field_names:
            rec[name][0] = trial.fields[name]
        rec["counts"][0] = trial.counts
        self._files["trials.bin"].write(rec.tobytes())

    def append_trial_array(self, records: np.ndarray) -> None:
        """Many trial records at once (an agent rig's episode), already of the run's trial dtype."""
        if records.dtype != self._trial_dtype:
            raise StoreError(f"{self.path}: trial records of dtype {records.dtype} do not match the run's "
                             f"{self._trial_dtype}")
        self._files["trials.bin"].write(records.tobytes())

    def append_spikes(self, spikes: SpikeEvents) -> None:
        if len(spikes) == 0:
            return
        rec = np.empty(len(spikes), SPIKE_DTYPE)
        rec["sample"], rec["channel"], rec["amplitude_uV"] = spikes.sample, spikes.channel, spikes.amplitude_uV
        self._files["spikes.bin"].write(rec.tobytes())

    def append_stim(self, command: StimCommand) -> None:
        p = command.pulse
        rec = np.zeros(len(command.electrodes), STIM_DTYPE)
        rec["sample"] = command.sample
        rec["electrode"] = command.electrodes
        rec["unit"] = UNIT_CODES[p.unit]
        rec["phase1_amplitude"], rec["phase1_us"] = p.phase1_amplitude, p.phase1_us
        rec["interphase_us"] = p.interphase_us
        rec["phase2_amplitude"], rec["phase2_us"] = p.phase2_amplitude, p.phase2_us
        self._files["stims.bin"].write(rec.tobytes())

    def append_raw(self, first_sample: int, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
        idx = np.array([(first_sample, samples.shape[0], self._raw_offset)], RAW_INDEX_DTYPE)
        self._files["raw.bin"].write(data)
        self._files["raw_index.bin"].write(idx.tobytes())
        self._raw_offset += len(data)

    def append_event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"event": kind, **fields}, default=json_default) + "\n"
        self._files["events.jsonl"].write(line.encode())

    def append_model_session(self, model: str, session: int, phase: str, payload: dict) -> None:
        line = json.dumps({"model": model, "session": session, "phase": phase, **payload},
                          default=json_default) + "\n"
        self._files["model_sessions.jsonl"].write(line.encode())

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    # ---- checkpoints ---------------------------------------------------------------------------
    def file_lengths(self) -> dict[str, int]:
        self.flush()
        return {name: f.tell() for name, f in self._files.items()}

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Flush and fsync every file, then atomically replace the checkpoint (rigctl.checkpoint)."""
        lengths = self.file_lengths()
        self._fsync_changed(lengths)
        write_checkpoint_file(self.path, {"lengths": lengths, "state": state})

    def read_checkpoint(self) -> dict[str, Any] | None:
        return read_checkpoint_file(self.path)

    def sync(self) -> None:
        """Flush and fsync every file: what was appended is on disk before a status change says so."""
        self._fsync_changed(self.file_lengths())

    def _fsync_changed(self, lengths: dict[str, int]) -> None:
        """fsync each file whose length changed since its last fsync (appends only grow a file; a cut resets
        the record): an fsync costs milliseconds even on an idle file, and a checkpoint is taken every 64 trials."""
        for name, f in self._files.items():
            if self._synced_lengths.get(name) != lengths[name]:
                os.fsync(f.fileno())
                self._synced_lengths[name] = lengths[name]

    def truncate_to(self, lengths: dict[str, int]) -> None:
        """Cut every append file back to `lengths` (files missing from it are emptied)."""
        self._synced_lengths.clear()
        for name in APPEND_FILES:
            f = self._files[name]
            f.flush()
            f.truncate(lengths.get(name, 0))
            f.seek(0, os.SEEK_END)
        self._raw_offset = (self.path / "raw.bin").stat().st_size

    def drop_torn_records(self) -> None:
        """Cut each fixed-size record file to a whole number of records (after a crash)."""
        self._synced_lengths.clear()
        for name, dtype in (("trials.bin", self.info.trial_dtype), ("spikes.bin", SPIKE_DTYPE),
                            ("stims.bin", STIM_DTYPE), ("raw_index.bin", RAW_INDEX_DTYPE)):
            f = self._files[name]
            f.flush()
            size = os.path.getsize(self.path / name)
            f.truncate(size - size % dtype.itemsize)
            f.seek(0, os.SEEK_END)
        for name in ("events.jsonl", "model_sessions.jsonl"):
            p = self.path / name
            data = p.read_bytes()
            if data and not data.endswith(b"\n"):
                f = self._files[name]
                f.truncate(data.rfind(b"\n") + 1)
                f.seek(0, os.SEEK_END)

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.flush()
                f.close()
            except ValueError:
                pass
        if self._lock is not None:
            self._lock.release()


class RunLock:
    """The exclusive right to write one run directory: an flock on its `.lock` file, which the kernel drops
    when the holder exits (SIGKILL included), so a killed run can be resumed at once, while two processes
    (a resume started twice, a sweep restarted while its old worker still runs) can never interleave
    their records."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @staticmethod
    def acquire(run_dir: Path) -> "RunLock":
        path = Path(run_dir) / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{run_dir}: cannot open its lock file ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{run_dir}: in use by another rigctl process (pid {holder}); wait for it to end "
                             "or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return RunLock(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def check_new_run_dir(path: Path) -> None:
    """Raise StoreError unless `path` can become a new run directory (missing, or an empty directory,
    under an existing writable parent)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise StoreError(f"--out {path}: exists and is not a directory; choose a new run directory")
    if path.is_dir() and any(path.iterdir()):
        raise StoreError(f"{path} already exists and is not empty; choose another --out "
                         f"or resume it with `rigctl run --resume {path}`")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise StoreError(f"--out {path}: {parent} is not a directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"--out {path}: cannot create {parent} ({exc.strerror or exc})") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"--out {path}: {parent} is not writable")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays as JSON values (for `json.dumps(default=...)`: events, the stream)."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_run_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "run.json"
    if not meta_path.exists():
        raise StoreError(f"{path} is not a rigctl run directory (no run.json)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{meta_path}: corrupt JSON ({exc})") from exc


def read_trials(path: Path) -> np.ndarray:
    """Every complete trial record of a run, as a structured array (TRIAL dtype)."""
    info = RunInfo(Path(path), load_run_meta(path))
    return read_records(Path(path) / "trials.bin", info.trial_dtype)


def read_spikes(path: Path) -> np.ndarray:
    return read_records(Path(path) / "spikes.bin", SPIKE_DTYPE)


def read_stims(path: Path) -> np.ndarray:
    return read_records(Path(path) / "stims.bin", STIM_DTYPE)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a crash
    return out
