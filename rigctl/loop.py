"""The real-time loop: driven by chunk arrival, one clock (the amplifier's sample index), any protocol.

One iteration, in this order (the stages are small objects in rigctl/stages.py and rigctl/trials.py):

1. rest skip: between sessions a simulated rig may jump to the next session's lead-in (nothing is recorded);
2. plan: ask the protocol for its next trials while they fall within the look-ahead; each command is
   safety-checked, handed to the stimulator, logged and announced to the artifact blanker; the trial's
   response window opens and its raw and spike ranges are marked for keeping;
3. read one chunk;
4. keep raw data (before anything else may fail);
5. spikes: the rig's own events or the signal path (`SpikeSource`), kept per the protocol, counted into
   the open trial windows, offered to the closed-loop reaction rules;
6. trials whose window is complete go to the sinks: the store, the protocol (`on_response`: a closed-loop
   protocol decides its next stimulus here), the online models, the stream; session ends likewise;
7. checkpoint, at the end of the chunk only, so that it holds a consistent cut.

Steering (rigctl.steering, fed by the control channel) is applied at the top of each iteration, between two
chunks: a pause stops planning at the next trial boundary (trials already handed over finish; recording goes
on), a resume moves the rest of the plan later by the pause's length, an abort puts the stimulator in its safe
state, checkpoints and raises `RunAborted`; a mark is stored as an event. See docs/control.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from rigctl.drivers.base import Amplifier
from rigctl.engine import PlannedTrial, Protocol
from rigctl.errors import RigctlError
from rigctl.online import TrialModel
from rigctl.safety import GuardedStimulator, Watchdog
from rigctl.stages import KeepRanges, Progress, SpikeSource
from rigctl.steering import PlanShift, RunAborted, Steering, SteerRequest
from rigctl.store import SessionStore
from rigctl.trials import OpenTrial, TrialWindows
from rigctl.types import Chunk, StimCommand, TrialRecord


@dataclass
class LoopConfig:
    lookahead_s: float = 0.2  # commands are handed to the stimulator this far ahead (raised to 2 chunks)
    realtime: bool = False  # wall-clock run: measure lag, count overruns
    overrun_budget_s: float = 0.05  # lag beyond which a realtime chunk counts as an overrun
    watchdog_s: float = 1.0  # realtime: no chunk processed for this long -> stimulator to safe state
    batch_s: float = 1.0  # open loop on a rig that can batch: read this much per chunk (0: the rig's chunks)
    progress: bool = True


@dataclass
class LoopStats:
    chunks: int = 0
    samples: int = 0
    overruns: int = 0
    max_lag_s: float = 0.0
    skipped_samples: int = 0
    rejected_commands: int = 0
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


class ProtocolRunner:
    """Runs one protocol on one rig (amplifier + guarded stimulator), storing everything."""

    def __init__(self, protocol: Protocol, amplifier: Amplifier, stimulator: GuardedStimulator,
                 store: SessionStore, models: list[TrialModel], make_signal_path: Callable[[], Any] | None,
                 config: LoopConfig = LoopConfig(), publisher=None, rig_state=None, reactions: list | None = None,
                 steering: Steering | None = None):
        self.protocol = protocol
        self.cfg = protocol.config
        self.amp = amplifier
        self.stim = stimulator
        self.store = store
        self.models = models
        self.config = config
        self.publisher = publisher
        self.rig_state = rig_state  # object with get_state/set_state (simulated rigs), or None
        # closed-loop rules: rule(spikes, now_sample) -> list[StimCommand], run on every chunk's spikes
        self.reactions = list(reactions or [])
        self.fs = amplifier.sample_rate_hz
        w = self.cfg.response_window_ms
        self.windows = TrialWindows(amplifier.n_channels, (protocol.ms_to_samples(w[0]), protocol.ms_to_samples(w[1])))
        self.lookahead = int(round(config.lookahead_s * self.fs))
        # a pulse must be handed over before the chunk that contains it is read: the horizon spans at least
        # two chunks, of the rig's declared size or the largest seen (drivers need not declare one)
        self.chunk_hint = int(getattr(amplifier, "chunk_samples", 0) or 0)
        self.lead_in = int(round(self.cfg.first_trial_s * self.fs))
        self.source = SpikeSource(make_signal_path)
        self.keep = {"raw": KeepRanges(), "spikes": KeepRanges()}
        self.next_to_schedule = 0
        self.n_done = 0
        self.clock = 0  # one past the last sample read
        self.spikes_until = 0  # one past the last sample whose spikes are final
        self.stats = LoopStats()
        self._peeked: PlannedTrial | None = None  # the next trial, as the protocol answered for it
        self._session_counts: list[np.ndarray] = []
        self._checkpoint_due = False  # a trial asked for a checkpoint; taken at the end of its chunk
        self._batch_samples = 0  # samples per read when batching (set by `start`); 0: the rig's chunks
        self.steering = steering
        self._publish_spikes = getattr(publisher, "spikes", None)  # the stream's bounded binary spike topic
        self._publish_raw = getattr(publisher, "raw", None)  # and its raw topic (None when off)
        self.shift = PlanShift()  # pauses move the rest of the plan later
        self.paused_since: int | None = None  # clock when the current pause took effect
        self._handed_until = 0  # one past the last sample of a handed-over pulse or scheduled response window
        self._status_wall0 = time.monotonic()
        self._status_done0 = 0
        self._next_status_wall = 0.0
        if steering is not None:
            steering.status_source = self.status

    # ---- state for checkpoints ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "next_to_schedule": self.next_to_schedule, "n_done": self.n_done, "clock": self.clock,
            "spikes_until": self.spikes_until,
            "protocol": self.protocol.get_state(),
            "open": [(t.planned.index, t.counts.copy()) for t in self.windows.open],
            "keep_ranges": {k: list(v.ranges) for k, v in self.keep.items()},
            "rates": dict(self.stim.rates.last_sample),
            "signal": self.source.get_state(),
            "models": {m.name: m.get_state() for m in self.models},
            "rig": None if self.rig_state is None else self.rig_state.get_state(),
            "stats": asdict(self.stats),
            "session_counts": [c.copy() for c in self._session_counts],
            "plan_shift": [list(s) for s in self.shift.segments],
            "paused_since": self.paused_since,
            "handed_until": self._handed_until,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        # first: the open trials below are planned again through the shift (no key: made before pauses existed)
        self.shift = PlanShift(state.get("plan_shift"))
        self.paused_since = state.get("paused_since")
        self._handed_until = int(state.get("handed_until", 0))
        self.next_to_schedule = state["next_to_schedule"]
        self.n_done = state["n_done"]
        self.clock = state["clock"]
        self.spikes_until = state["spikes_until"]
        self.protocol.set_state(state.get("protocol", {}))  # first: the open trials are asked of it again
        self.windows.open = []
        for index, counts in state["open"]:
            self.windows.add(self._decided(index))
            self.windows.open[-1].counts[:] = counts
        for kind, ranges in state["keep_ranges"].items():
            self.keep[kind].ranges = [tuple(r) for r in ranges]
        self.stim.rates.last_sample = dict(state["rates"])
        self.source.set_state(state["signal"])
        for m in self.models:
            if m.name in state["models"]:
                m.set_state(state["models"][m.name])
        if self.rig_state is not None and state["rig"] is not None:
            self.rig_state.set_state(state["rig"])
        self.stats = LoopStats(**state["stats"])
        self._session_counts = [c.copy() for c in state["session_counts"]]

    def continue_from(self, trials: list[TrialRecord]) -> None:
        """Resume on a rig whose state cannot be restored (hardware: the culture cannot be rewound): replay
        the stored trials through the protocol and the models, then start at the first trial not on disk."""
        for index, record in enumerate(trials):
            planned = self._decided(index, record.sample)
            if record.trial == 1:
                self._session_counts = []
                self.models_begin(record.session)
            for m in self.models:
                m.update(record)
            self.protocol.on_response(record)
            self._session_counts.append(record.counts)
            if planned.last_in_session:
                self._session_counts = []
                for m in self.models:
                    m.end_session(record.session)
        self.n_done = self.next_to_schedule = len(trials)

    def _plan(self, index: int, now_sample: int) -> PlannedTrial | None:
        """The protocol's trial `index`, moved later by the pauses before it (the protocol sees its own clock)."""
        return self.shift.apply(self.protocol.trial(index, now_sample - self.shift.offset(index)))

    def _decided(self, index: int, now_sample: int = 0) -> PlannedTrial:
        planned = self._plan(index, now_sample)
        if planned is None:
            raise RigctlError(f"protocol {self.cfg.name} cannot say what its trial {index + 1} was (it must "
                              "answer for every trial whose predecessors' responses it has heard)")
        return planned

    def models_begin(self, session: int) -> list[tuple[str, dict | None]]:
        """Tell every model a session begins; returns their predictions (name, payload)."""
        stimuli = self.protocol.session_context(session).get("stimuli")
        return [(m.name, m.begin_session(session, stimuli)) for m in self.models]

    def checkpoint(self) -> None:
        if self.rig_state is None:
            self.store.flush()
            return
        self.store.write_checkpoint(self.get_state())

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        """The whole run: `start`, `iterate` while `running()`, `stop`; the stimulator ends in its safe state."""
        self.start()
        try:
            while self.running():
                self.iterate()
        finally:
            self.stop()
        self.stim.safe_state()
        return self.stats

    def start(self) -> None:
        """Start acquisition (and the realtime watchdog). Callers that drive the loop chunk by chunk (an
        environment waiting for one trial's record) call `iterate` themselves, then `stop` exactly once."""
        self._progress = Progress(self.protocol.n_trials, self.n_done, self.config.progress, self.cfg.name)
        self._wall0 = time.monotonic()
        self.amp.start()
        self.source.start()
        self._clock_origin = None  # set at the first chunk: start-up (JIT compilation, connects) is not lag
        self._watchdog = Watchdog(self.config.watchdog_s, self._on_stall).start() if self.config.realtime else None
        self._batch_samples = self._batch_length()
        self.chunk_hint = max(self.chunk_hint, self._batch_samples)  # pulses are handed over two chunks ahead

    def _batch_length(self) -> int:
        """Samples per read: 0 (the rig's own chunks) unless the whole plan is known before the run (open loop,
        no closed-loop rule), the rig delivers any length at once (simulated, not paced to the wall clock) and
        its chunks carry their own spikes (no signal path: its detections in 1-s chunks differ from those in
        50-ms ones), and no control channel or stream watches it. Then nothing reacts inside a chunk, every data file is the same for any chunking, and
        longer chunks save the per-chunk cost that dominates a simulated run; a stop still lands within one
        chunk, which takes milliseconds of wall time."""
        if (self.config.batch_s <= 0 or self.config.realtime or self.reactions or not self.protocol.open_loop
                or not self.amp.can_batch or self.source.make_signal_path is not None
                or self.steering is not None or self.publisher is not None):  # pauses and live views: per chunk
            return 0
        return max(1, int(round(self.config.batch_s * self.fs)))

    def running(self) -> bool:
        """Whether `run` reads another chunk: trials not done, kept windows not all recorded, or recording left."""
        return self.n_done < self.protocol.n_trials or self._keeping() or self.clock < self._record_until()

    def iterate(self) -> None:
        """One chunk: steer, skip a rest, schedule ahead, read, process. A fault puts the stimulator in its
        safe state and is stored as an event before it propagates (an abort did both already)."""
        total = self.protocol.n_trials
        try:
            if self.steering is not None:
                self._steer()
            self._skip_rest_if_possible()
            self._schedule_ahead()
            chunk = self.amp.read_samples(self._batch_samples) if self._batch_samples else self.amp.read()
            self._process(chunk, self._progress)
            if total == 0:
                self._progress.recorded(self.clock / self.fs, self.protocol.record_until / self.fs)
            if self.next_to_schedule >= total and not self.windows.open and self.n_done < total:
                # every trial was scheduled and none is open, yet some are not done: reading on would never end
                raise RigctlError(f"{total - self.n_done} trial(s) of {total} were scheduled but never "
                                  "stored (an inconsistent checkpoint?); the run cannot complete")
            if self._watchdog is not None:
                self._watchdog.kick()
        except RunAborted:
            raise  # _abort put the stimulator in its safe state and checkpointed
        except BaseException as exc:
            self.stim.safe_state()
            if self.publisher is not None:
                self.publisher.publish("fault", {"error": type(exc).__name__, "message": str(exc)[:500],
                                                 "trials_done": self.n_done, "sample": self.clock})
            self.store.append_event("fault", error=type(exc).__name__, message=str(exc),
                                    trials_done=self.n_done, sample=self.clock)
            self.store.flush()
            raise

    def stop(self) -> None:
        """Stop the watchdog and acquisition, count the wall time, flush the store (after `start`, once)."""
        if self._watchdog is not None:
            self._watchdog.stop()
        self._progress.close()
        self.amp.stop()
        self.stats.wall_s += time.monotonic() - self._wall0
        self.store.flush()

    def _on_stall(self) -> None:
        """Watchdog thread: the loop stopped processing chunks; stop stimulating (the store is the loop's)."""
        self.stim.safe_state()
        self.stats.extra["watchdog_fired"] = True

    def _peek(self) -> PlannedTrial | None:
        """The next trial to schedule, or None while the protocol has not decided it."""
        index = self.next_to_schedule
        if index >= self.protocol.n_trials:
            return None
        if self._peeked is None or self._peeked.index != index:
            self._peeked = self._plan(index, self.clock)
        return self._peeked

    def _skip_rest_if_possible(self) -> None:
        """Before a session's first trial, jump a simulated rig to its lead-in (nothing is recorded there)."""
        if (self.next_to_schedule == 0 or self.paused_since is not None or self.windows.open
                or not self.amp.can_skip or self.cfg.raw == "all" or self.cfg.spikes == "all"):
            return
        planned = self._peek()
        if planned is None or planned.trial != 1 or self._keeping():
            return  # mid-session, undecided, or the last trial's raw or spike window is not all recorded yet
        target = planned.sample - self.lead_in
        if target <= self.clock:
            return
        self.amp.skip_to(target)
        self.stats.skipped_samples += target - self.clock
        self.clock = self.spikes_until = target
        self._clock_origin = None
        self.source.new_segment()

    def _keeping(self) -> bool:
        """Whether a trial's raw or spike window (kept on disk) extends beyond what has been recorded."""
        return self.keep["raw"].pending(self.clock) or self.keep["spikes"].pending(self.spikes_until)

    def _schedule_ahead(self) -> None:
        if self.paused_since is not None:
            return  # paused: nothing more is handed to the stimulator
        horizon = self.clock + max(self.lookahead, 2 * self.chunk_hint)
        cfg = self.cfg
        while True:
            planned = self._peek()
            if planned is None or planned.sample >= horizon:
                break
            if planned.trial == 1:
                self._begin_session(planned)
            if planned.command is not None:
                self._deliver(planned.command)
            self.windows.add(planned)
            for kind, window in (("raw", cfg.raw_window_ms), ("spikes", cfg.spike_window_ms)):
                self.keep[kind].add(planned.sample + self.protocol.ms_to_samples(window[0]),
                                    planned.sample + self.protocol.ms_to_samples(window[1]))
            self._handed_until = max(self._handed_until, planned.sample + self.windows.window_samples[1])
            self.next_to_schedule += 1

    def _deliver(self, command: StimCommand) -> None:
        """Safety-check and hand a command to the stimulator, log it, warn the artifact blanker.
        A SafetyViolation propagates: the run stops and the stimulator goes to its safe state."""
        self.stim.schedule(command)
        self._handed_until = max(self._handed_until, command.sample + 1)
        self.store.append_stim(command)
        self.source.expect_pulse(command)

    def _begin_session(self, planned: PlannedTrial) -> None:
        self.store.append_event("session_start", session=planned.session, sample=planned.sample)
        for name, payload in self.models_begin(planned.session):
            if payload is not None:
                self.store.append_model_session(name, planned.session, "prediction", payload)
                if self.publisher is not None:
                    self.publisher.publish("model", {"model": name, "session": planned.session,
                                                     "phase": "prediction", **payload})
        if self.publisher is not None:
            self.publisher.publish("session_start", {"session": planned.session})

    def _process(self, chunk: Chunk, progress: Progress) -> None:
        cfg = self.cfg
        if chunk.first_sample != self.clock:
            raise RigctlError(f"amplifier skipped from sample {self.clock} to {chunk.first_sample}")
        # raw data first: it must reach disk before anything else may fail
        kept = self.keep["raw"].take(chunk.first_sample, chunk.end_sample)  # prunes the passed ranges in any case
        if chunk.samples.shape[1]:  # an events rig has no raw data
            if cfg.raw == "all":
                self.store.append_raw(chunk.first_sample, chunk.samples)
            elif cfg.raw == "trials":
                for a, b in kept:
                    self.store.append_raw(a, chunk.samples[a - chunk.first_sample:b - chunk.first_sample])
        if self._publish_raw is not None and chunk.samples.shape[1]:
            self._publish_raw(chunk.first_sample, chunk.samples)
        self.clock = chunk.end_sample
        self.chunk_hint = max(self.chunk_hint, chunk.n_samples)
        self.stim.on_chunk(chunk.end_sample)
        spikes, processed_until = self.source.spikes(chunk)
        self.spikes_until = processed_until
        if len(spikes):
            if cfg.spikes == "all":
                self.store.append_spikes(spikes)
            else:
                for a, b in self.keep["spikes"].take(int(spikes.sample[0]), int(spikes.sample[-1]) + 1):
                    lo, hi = np.searchsorted(spikes.sample, (a, b))
                    self.store.append_spikes(spikes.select(slice(lo, hi)))
            self.windows.count(spikes)
            if self.paused_since is None:  # a pause holds the closed-loop rules too
                for rule in self.reactions:
                    for command in rule(spikes, chunk.end_sample):
                        self._deliver(command)
            if self._publish_spikes is not None:
                self._publish_spikes(spikes)
        self.keep["spikes"].prune(processed_until)
        for t in self.windows.complete(processed_until):
            self._finish_trial(t, progress)
        self.stats.chunks += 1
        self.stats.samples += chunk.n_samples
        if self.config.realtime:
            self._check_lag(chunk)
        if self.publisher is not None and time.monotonic() >= self._next_status_wall:
            self._next_status_wall = time.monotonic() + 0.5
            self.publisher.publish("status", self.status())
        if self._checkpoint_due:
            # only here, with every trial this chunk finished stored: a checkpoint taken between two trials
            # that finished in one chunk would hold a cut in which the second has left the open set unstored
            self._checkpoint_due = False
            self.checkpoint()
        self.store.flush()

    def _check_lag(self, chunk: Chunk) -> None:
        if self._clock_origin is None:
            self._clock_origin = (time.monotonic(), chunk.end_sample)
            return
        wall0, sample0 = self._clock_origin
        lag = (time.monotonic() - wall0) - (chunk.end_sample - sample0) / self.fs
        self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
        if lag > self.config.overrun_budget_s:
            self.stats.overruns += 1
            self.store.append_event("overrun", sample=chunk.end_sample, lag_s=round(lag, 6))
            if self.publisher is not None:
                self.publisher.publish("overrun", {"sample": chunk.end_sample, "lag_s": lag})

    def _finish_trial(self, t: OpenTrial, progress: Progress) -> None:
        record = t.record()
        self.protocol.on_response(record)  # first: a closed-loop protocol may fill the fields it decides here
        self.store.append_trial(record)
        for m in self.models:
            m.update(record)
        self._session_counts.append(record.counts)
        self.n_done += 1
        progress.trial()
        if self.publisher is not None:
            self.publisher.publish("trial", {"index": self.n_done - 1, "session": record.session,
                                             "trial": record.trial, "sample": record.sample,
                                             "counts": record.counts.tolist(),
                                             "fields": {k: _plain(v) for k, v in record.fields.items()}})
        session_end = t.planned.last_in_session
        if session_end:
            self._end_session(record.session, progress)
        if session_end or self.n_done % self.cfg.checkpoint_every_trials == 0:
            self._checkpoint_due = True

    def _end_session(self, session: int, progress: Progress) -> None:
        counts = np.array(self._session_counts)
        mean_evoked = float(counts.sum(axis=1).mean()) if len(counts) else 0.0
        self._session_counts = []
        self.store.append_event("session_end", session=session, trials=len(counts),
                                mean_evoked_per_trial=mean_evoked, overruns=self.stats.overruns)
        for m in self.models:
            payload = m.end_session(session)
            self.store.append_model_session(m.name, session, "end", payload)
            if self.publisher is not None:
                self.publisher.publish("model", {"model": m.name, "session": session, "phase": "end", **payload})
        if self.publisher is not None:
            self.publisher.publish("session_end", {"session": session, "mean_evoked_per_trial": mean_evoked})
        progress.session(session, self.cfg.sessions, mean_evoked, self.n_done, self.protocol.n_trials)

    # ---- steering (rigctl.steering; docs/control.md) ------------------------------------------------------
    def _record_until(self) -> int:
        return self.protocol.record_until + self.shift.total_samples if self.protocol.record_until else 0

    def status(self) -> dict[str, Any]:
        """A snapshot for `rigctl control ... status` and the stream (read from other threads: plain values)."""
        total = self.protocol.n_trials
        done = self.n_done
        wall = time.monotonic() - self._status_wall0
        rate = (done - self._status_done0) / wall if wall > 0 else 0.0
        eta = (total - done) / rate if rate > 0 and done < total else None
        return {"state": "paused" if self.paused_since is not None else "running",
                "protocol": self.cfg.name, "trials_done": done, "trials_total": total,
                "sessions_total": self.cfg.sessions, "sample": self.clock,
                "rig_time_s": round(self.clock / self.fs, 3), "sample_rate_hz": self.fs,
                "n_electrodes": self.amp.n_channels, "eta_s": None if eta is None else round(eta, 1),
                "overruns": self.stats.overruns, "shift_samples": self.shift.total_samples}

    def _steer(self) -> None:
        for req in self.steering.take():
            if req.kind == "mark":
                self._event("mark", text=req.text, by=req.by, sample=self.clock, trials_done=self.n_done)
            elif req.kind == "pause" and self.paused_since is None:
                self.paused_since = self.clock
                # the trial boundary: no pulse and no response window of a handed-over trial at or after it
                self._event("pause", by=req.by, sample=self.clock, from_sample=max(self.clock, self._handed_until),
                            next_trial=self.next_to_schedule + 1, trials_done=self.n_done)
                self._checkpoint_due = True
            elif req.kind == "resume" and self.paused_since is not None:
                self._resume_plan(req.by)
            elif req.kind == "abort":
                self._abort(req)

    def _resume_plan(self, by: str) -> None:
        """Move the rest of the plan later by the pause's length (more if its next trial would fall before
        the clock, which only a chunk longer than the look-ahead can cause)."""
        delta = self.clock - self.paused_since
        nxt = self.next_to_schedule
        if nxt < self.protocol.n_trials:
            planned = self.protocol.trial(nxt, self.clock - self.shift.offset(nxt) - delta)
            if planned is not None:
                delta = max(delta, self.clock - (planned.sample + self.shift.offset(nxt)))
        self.shift.add(nxt, delta)
        self._event("pause_end", by=by, sample=self.clock, paused_from=self.paused_since, shift_samples=delta,
                    total_shift_samples=self.shift.total_samples, first_shifted_trial=nxt + 1)
        self.paused_since = None
        self._peeked = None
        self._checkpoint_due = True

    def _abort(self, req: SteerRequest) -> None:
        """Safe state first; then the abort event and a checkpoint (the state at this chunk boundary), so
        `rigctl run --resume` continues here."""
        self.stim.safe_state()
        self._event("abort", by=req.by, sample=self.clock, trials_done=self.n_done)
        self._checkpoint_due = False
        self.checkpoint()
        raise RunAborted(f"aborted from the control channel by {req.by} after {self.n_done} of "
                         f"{self.protocol.n_trials} trials; stimulator in safe state; continue with "
                         f"`rigctl run --resume {self.store.path}`")

    def _event(self, kind: str, **fields: Any) -> None:
        self.store.append_event(kind, **fields)
        if self.publisher is not None:
            self.publisher.publish(kind, fields)


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value
