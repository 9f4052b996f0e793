"""What a live view of a run shows, gathered from a run directory (read as it grows) or from the stream.

`LiveState` holds the figures' data; a feed fills it: `RunDirFeed` reads the bytes appended to a run's files
since its last poll (the files are append-only, so a reader never needs the writer), `StreamFeed` drains the
stream's messages (docs/stream.md). Both give the same state, so the dashboard does not care which it has.
No plotting here (rigctl.dashboard draws).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.errors import ModelInputError, RigctlError
from rigctl.store import SPIKE_DTYPE, RunInfo, load_run_meta

RASTER_S = 5.0  # the raster shows the last seconds of rig time
MAX_RASTER_SPIKES = 5000  # what a browser redraws twice a second without strain
SEPARATION_EVERY_S = 2.0  # the ensemble separation is recomputed from all trials at most this often


@dataclass
class LiveState:
    protocol: str = ""
    state: str = "waiting"  # waiting | running | paused | complete | interrupted | failed
    trials_done: int = 0
    trials_total: int = 0
    sessions_total: int = 0
    sample_rate_hz: float = 25000.0
    n_electrodes: int = 0
    positions_um: np.ndarray | None = None  # [n, 2]
    eta_s: float | None = None
    rig_time_s: float = 0.0
    spikes: deque = field(default_factory=lambda: deque(maxlen=MAX_RASTER_SPIKES))  # (sample, channel)
    electrode_counts: np.ndarray | None = None  # summed evoked counts per electrode
    session_counts: dict[int, list[float]] = field(default_factory=dict)  # session -> trial evoked totals
    sources: list[np.ndarray] = field(default_factory=list)  # BSS: per trial, for the separation
    counts: list[np.ndarray] = field(default_factory=list)
    trial_sessions: list[int] = field(default_factory=list)
    separation: dict[int, float] = field(default_factory=dict)  # session -> the paper's ensemble separation
    free_energy: dict[int, dict[str, Any]] = field(default_factory=dict)  # session -> model end payload
    predictions: dict[int, dict[str, Any]] = field(default_factory=dict)  # session -> model prediction payload
    overruns: int = 0
    faults: list[str] = field(default_factory=list)
    notes: deque = field(default_factory=lambda: deque(maxlen=12))  # pauses, marks, aborts (text lines)
    _separation_due_s: float = 0.0
    _separation_n: int = 0

    # ---- updates ------------------------------------------------------------------------------------------
    def add_trial(self, session: int, counts: np.ndarray, sources: np.ndarray | None) -> None:
        counts = np.asarray(counts)
        if self.electrode_counts is None or len(self.electrode_counts) != len(counts):
            self.electrode_counts = np.zeros(len(counts), np.int64)
        self.electrode_counts += counts
        self.session_counts.setdefault(int(session), []).append(float(counts.sum()))
        self.trials_done += 1
        if sources is not None:
            self.sources.append(np.asarray(sources, np.uint8))
            self.counts.append(counts)
            self.trial_sessions.append(int(session))

    def add_spikes(self, sample: np.ndarray, channel: np.ndarray) -> None:
        self.spikes.extend(zip(sample.tolist(), channel.tolist()))
        if len(sample):
            self.rig_time_s = max(self.rig_time_s, float(sample[-1]) / self.sample_rate_hz)

    def add_model(self, row: dict[str, Any]) -> None:
        if row.get("model") != "free_energy":
            return
        session = int(row["session"])
        if row.get("phase") == "prediction":
            self.predictions[session] = row
        elif row.get("phase") == "end":
            # the fit at the end of the training sessions carries their free energy (no x of theirs in the row)
            for i, value in enumerate((row.get("fitted") or {}).get("L_training", [])[:-1]):
                if self.free_energy.get(i + 1, {}).get("status") != "active":
                    self.free_energy[i + 1] = {"session": i + 1, "status": "active", "L": value,
                                               "predicted": False, "x_mean": [float("nan")] * 2}
            self.free_energy[session] = row

    def add_event(self, kind: str, e: dict[str, Any]) -> None:
        if kind == "overrun":
            self.overruns += 1
        elif kind == "fault":
            self.faults.append(f"{e.get('error')}: {e.get('message', '')}"[:200])
        elif kind == "pause":
            self.state = "paused"
            self.notes.append(f"paused by {e.get('by')} at sample {e.get('sample')}")
        elif kind == "pause_end":
            self.state = "running"
            self.notes.append(f"resumed by {e.get('by')}, plan moved {e.get('shift_samples')} samples")
        elif kind == "mark":
            self.notes.append(f"mark by {e.get('by')}: {e.get('text')}")
        elif kind == "abort":
            self.state = "interrupted"
            self.notes.append(f"aborted by {e.get('by')} after {e.get('trials_done')} trials")
        elif kind == "run_end":
            self.state = "complete"

    # ---- derived figures ----------------------------------------------------------------------------------
    def evoked_by_session(self) -> tuple[list[int], list[float]]:
        """Mean evoked spikes per electrode per trial, per session."""
        n = max(self.n_electrodes, 1)
        sessions = sorted(self.session_counts)
        return sessions, [float(np.mean(self.session_counts[s])) / n for s in sessions]

    def update_separation(self, force: bool = False) -> None:
        """The paper's ensemble separation per session (rigctl.model.ensembles, on every trial so far)."""
        now = time.monotonic()
        if not self.sources or len(self.sources) == self._separation_n or (now < self._separation_due_s
                                                                          and not force):
            return
        self._separation_due_s, self._separation_n = now + SEPARATION_EVERY_S, len(self.sources)
        from rigctl.model.ensembles import separation_by_session
        try:
            res = separation_by_session(np.array(self.sources), np.array(self.counts),
                                        np.array(self.trial_sessions), allow_empty=True)
        except (ModelInputError, ValueError, ZeroDivisionError):
            return  # too few sessions or states yet
        self.separation = {int(k): float(v) for k, v in zip(res.session_labels, res.separation)}

    def grid_positions(self) -> np.ndarray:
        n = self.n_electrodes or (len(self.electrode_counts) if self.electrode_counts is not None else 0)
        if self.positions_um is not None and len(self.positions_um) == n:
            return self.positions_um
        side = int(np.ceil(np.sqrt(max(n, 1))))
        idx = np.arange(n)
        return np.stack([idx % side, idx // side], axis=1).astype(float)

    def progress_text(self) -> str:
        pct = 100.0 * self.trials_done / self.trials_total if self.trials_total else 0.0
        eta = "-" if self.eta_s is None or self.state != "running" else _hms(self.eta_s)
        session = max(self.session_counts) if self.session_counts else 0
        return (f"{self.protocol}: {self.state}; trials {self.trials_done}/{self.trials_total} ({pct:.0f} %), "
                f"session {session}/{self.sessions_total}; ETA {eta}; overruns {self.overruns}; "
                f"faults {len(self.faults)}")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunDirFeed:
    """Reads what a run directory gained since the last poll (trials, events, model rows, recent spikes)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        meta = load_run_meta(self.run_dir)
        self.info = RunInfo(self.run_dir, meta)
        self.dtype = self.info.trial_dtype
        self.has_sources = "sources" in (self.dtype.names or ())
        self.offsets: dict[str, int] = {}
        self.total = _n_trials(self.run_dir, meta)
        self._wall0 = time.monotonic()
        self._done0: int | None = None

    def start(self, state: LiveState) -> None:
        meta = self.info.meta
        state.protocol = meta.get("protocol", "")
        state.sample_rate_hz = float(meta.get("sample_rate_hz", 25000.0))
        state.n_electrodes = int(meta["shapes"]["n_electrodes"])
        state.sessions_total = int(meta.get("sessions", 0))
        state.trials_total = self.total
        layout = (meta.get("rig_description") or {}).get("layout")
        if layout and "positions_um" in layout:
            state.positions_um = np.asarray(layout["positions_um"], float)

    def _new_bytes(self, name: str, record: int = 1) -> bytes:
        path = self.run_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return b""
        start = self.offsets.get(name, 0)
        if size < start:  # truncated by a resume: read again from the start
            start = 0
        end = size - (size - start) % record
        if end <= start:
            return b""
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        self.offsets[name] = end
        return data

    def poll(self, state: LiveState) -> None:
        if self.offsets.get("trials.bin", 0) > (self.run_dir / "trials.bin").stat().st_size:
            fresh = LiveState()  # a resume cut the files back: start over
            state.__dict__.update(fresh.__dict__)
            self.offsets = {}
            self.start(state)
        trials = np.frombuffer(self._new_bytes("trials.bin", self.dtype.itemsize), self.dtype)
        for t in trials:
            state.add_trial(int(t["session"]), t["counts"], t["sources"] if self.has_sources else None)
        for line in self._new_bytes("events.jsonl").decode("utf-8", "replace").splitlines():
            e = _json_line(line)
            if e is not None:
                state.add_event(e.get("event", ""), e)
        for line in self._new_bytes("model_sessions.jsonl").decode("utf-8", "replace").splitlines():
            row = _json_line(line)
            if row is not None:
                state.add_model(row)
        self._tail_spikes(state)
        meta = load_run_meta(self.run_dir)
        status = meta.get("status", "running")
        if status != "running" or state.state not in ("paused",):
            state.state = status
        if self._done0 is None:
            self._done0 = state.trials_done
        wall = time.monotonic() - self._wall0
        rate = (state.trials_done - self._done0) / wall if wall > 1.0 else 0.0
        state.eta_s = (state.trials_total - state.trials_done) / rate if rate > 0 else None
        state.update_separation()

    def _tail_spikes(self, state: LiveState) -> None:
        """The spikes of the last RASTER_S seconds: read backwards from the end of spikes.bin."""
        path = self.run_dir / "spikes.bin"
        size = path.stat().st_size if path.exists() else 0
        n = size // SPIKE_DTYPE.itemsize
        if n == 0 or self.offsets.get("spikes.bin") == n:
            return
        self.offsets["spikes.bin"] = n
        count = min(n, MAX_RASTER_SPIKES)
        rec = np.fromfile(path, SPIKE_DTYPE, count=count, offset=(n - count) * SPIKE_DTYPE.itemsize)
        last = rec["sample"][-1]
        keep = rec[rec["sample"] >= last - RASTER_S * state.sample_rate_hz]
        state.spikes.clear()
        state.add_spikes(keep["sample"], keep["channel"])


class StreamFeed:
    """Drains a stream subscription into the state (what a late subscriber missed stays missed: the
    progress comes back with the next `status` message)."""

    def __init__(self, subscription):
        self.sub = subscription

    def start(self, state: LiveState) -> None:
        pass

    def poll(self, state: LiveState, max_messages: int = 5000) -> None:
        for _ in range(max_messages):
            msg = self.sub.recv(0)
            if msg is None:
                break
            h = msg.header
            if msg.topic in ("status", "run_start"):
                state.protocol = h.get("protocol", state.protocol)
                if state.state in ("waiting", "running", "paused"):
                    state.state = h.get("state", state.state)
                state.trials_total = h.get("trials_total", state.trials_total)
                state.sessions_total = h.get("sessions_total", state.sessions_total)
                state.sample_rate_hz = h.get("sample_rate_hz", state.sample_rate_hz)
                state.n_electrodes = h.get("n_electrodes", state.n_electrodes)
                state.eta_s = h.get("eta_s")
                if h.get("layout"):
                    state.positions_um = np.asarray(h["layout"], float)
                if msg.topic == "status":
                    state.trials_done = max(state.trials_done, int(h.get("trials_done", 0)))
            elif msg.topic == "trial":
                state.add_trial(h["session"], np.asarray(h["counts"]), h.get("fields", {}).get("sources"))
            elif msg.topic == "spikes":
                sample, channel = msg.spike_arrays()
                state.add_spikes(sample, channel)
                cut = state.rig_time_s * state.sample_rate_hz - RASTER_S * state.sample_rate_hz
                while state.spikes and state.spikes[0][0] < cut:
                    state.spikes.popleft()
            elif msg.topic == "model":
                state.add_model(h)
            else:
                state.add_event(msg.topic, h)
        state.update_separation()


def _json_line(line: str) -> dict | None:
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _n_trials(run_dir: Path, meta: dict) -> int:
    """The run's trial count, from its protocol as run."""
    from rigctl.protocol import load_protocol
    try:
        config = load_protocol(run_dir / "protocol.yaml")
        return int(config.make_protocol(int(meta["seed"]), float(meta.get("sample_rate_hz", 25000.0))).n_trials)
    except (RigctlError, KeyError, OSError):
        return 0
