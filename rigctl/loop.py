"""The real-time loop: driven by chunk arrival, one clock (the amplifier's sample index).

Per chunk: schedule the protocol's commands that fall within the look-ahead (safety-checked, handed to the
stimulator, announced to the artifact blanker), read the chunk, keep raw data per the protocol, detect
spikes (or take the rig's own events), count them into trial windows, hand finished trials to the models
and the store, checkpoint. Between sessions a simulated rig may skip the rest (nothing is recorded there).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from rigctl.drivers.base import Amplifier
from rigctl.errors import RigctlError
from rigctl.online import TrialModel
from rigctl.protocol import BssProtocol, BssSchedule, PlannedTrial
from rigctl.safety import GuardedStimulator, Watchdog
from rigctl.store import SessionStore
from rigctl.trials import OpenTrial, TrialWindows
from rigctl.types import Chunk


@dataclass
class LoopConfig:
    lookahead_s: float = 0.2  # commands are handed to the stimulator this far ahead (raised to 2 chunks)
    realtime: bool = False  # wall-clock run: measure lag, count overruns
    overrun_budget_s: float = 0.05  # lag beyond which a realtime chunk counts as an overrun
    watchdog_s: float = 1.0  # realtime: no chunk processed for this long -> stimulator to safe state
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


class Progress:
    """A tqdm bar on a terminal; one line per session otherwise (CI logs, pipes)."""

    def __init__(self, total: int, initial: int, enabled: bool, label: str):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="trial", desc=label, file=sys.stderr,
                            dynamic_ncols=True)

    def trial(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def session(self, session: int, sessions: int, mean_evoked: float, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(session=f"{session}/{sessions}", evoked=f"{mean_evoked:.2f}")
        elif self.enabled:
            print(f"session {session}/{sessions} done: {done}/{total} trials, "
                  f"mean evoked {mean_evoked:.2f} spikes/trial", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class BssRunner:
    """Runs a BSS protocol on one rig (amplifier + guarded stimulator), storing everything."""

    def __init__(self, protocol: BssProtocol, schedule: BssSchedule, amplifier: Amplifier,
                 stimulator: GuardedStimulator, store: SessionStore, models: list[TrialModel],
                 make_signal_path: Callable[[], Any] | None, config: LoopConfig = LoopConfig(),
                 publisher=None, rig_state=None, reactions: list | None = None):
        self.protocol = protocol
        self.schedule = schedule
        self.amp = amplifier
        self.stim = stimulator
        self.store = store
        self.models = models
        self.make_signal_path = make_signal_path
        self.config = config
        self.publisher = publisher
        self.rig_state = rig_state  # object with get_state/set_state (simulated rigs), or None
        # closed-loop rules: rule(spikes, now_sample) -> list[StimCommand], run on every chunk's spikes
        self.reactions = list(reactions or [])
        fs = amplifier.sample_rate_hz
        self.fs = fs
        w = protocol.response_window_ms
        self.windows = TrialWindows(amplifier.n_channels, (schedule.ms_to_samples(w[0]), schedule.ms_to_samples(w[1])))
        self.lookahead = int(round(config.lookahead_s * fs))
        # a pulse must be handed over before the chunk that contains it is read: the horizon spans at least
        # two chunks, of the rig's declared size or the largest seen (drivers need not declare one)
        self.chunk_hint = int(getattr(amplifier, "chunk_samples", 0) or 0)
        self.lead_in = int(round(protocol.first_trial_s * fs))
        self.signal = None
        self.next_to_schedule = 0
        self.n_done = 0
        self.clock = 0  # one past the last sample read
        self.spikes_until = 0  # one past the last sample whose spikes are final
        self.keep_ranges: dict[str, list[tuple[int, int]]] = {"raw": [], "spikes": []}
        self.stats = LoopStats()
        self._session_counts: list[np.ndarray] = []
        self._checkpoint_due = False  # a trial asked for a checkpoint; taken at the end of its chunk

    # ---- state for checkpoints ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "next_to_schedule": self.next_to_schedule, "n_done": self.n_done, "clock": self.clock,
            "spikes_until": self.spikes_until,
            "open": [(t.planned.index, t.counts.copy()) for t in self.windows.open],
            "keep_ranges": {k: list(v) for k, v in self.keep_ranges.items()},
            "rates": dict(self.stim.rates.last_sample),
            "signal": None if self.signal is None else self.signal.get_state(),
            "models": {m.name: m.get_state() for m in self.models},
            "rig": None if self.rig_state is None else self.rig_state.get_state(),
            "stats": asdict(self.stats),
            "session_counts": [c.copy() for c in self._session_counts],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.next_to_schedule = state["next_to_schedule"]
        self.n_done = state["n_done"]
        self.clock = state["clock"]
        self.spikes_until = state.get("spikes_until", self.clock)  # checkpoints before 2026-11-23 lack it
        self.windows.open = []
        for index, counts in state["open"]:
            self.windows.add(self.schedule.trial(index))
            self.windows.open[-1].counts[:] = counts
        self.keep_ranges = {k: list(v) for k, v in state["keep_ranges"].items()}
        self.stim.rates.last_sample = dict(state["rates"])
        if state["signal"] is not None and self.make_signal_path is not None:
            self.signal = self.make_signal_path()
            self.signal.set_state(state["signal"])
        for m in self.models:
            if m.name in state["models"]:
                m.set_state(state["models"][m.name])
        if self.rig_state is not None and state["rig"] is not None:
            self.rig_state.set_state(state["rig"])
        self.stats = LoopStats(**state["stats"])
        self._session_counts = [c.copy() for c in state["session_counts"]]

    def continue_from(self, trials: list) -> None:
        """Resume on a rig whose state cannot be restored (hardware: the culture cannot be rewound):
        replay the stored trials into the models, then start at the first trial not on disk."""
        p = self.protocol
        for record in trials:
            if record.trial == 1:
                self.models_begin(record.session)
            for m in self.models:
                m.update(record)
            if record.trial == p.trials_per_session:
                for m in self.models:
                    m.end_session(record.session)
        done = len(trials)
        if done % p.trials_per_session:
            self._session_counts = [r.counts for r in trials[done - done % p.trials_per_session:]]
        self.n_done = done
        self.next_to_schedule = done

    def models_begin(self, session: int) -> list[tuple[str, dict | None]]:
        """Tell every model a session begins; returns their predictions (name, payload)."""
        s, o = self.schedule.session_sequence(session)
        return [(m.name, m.begin_session(session, o)) for m in self.models]

    def checkpoint(self) -> None:
        if self.rig_state is None:
            self.store.flush()
            return
        self.store.write_checkpoint(self.get_state())

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self) -> LoopStats:
        total = self.schedule.n_trials
        progress = Progress(total, self.n_done, self.config.progress, self.protocol.name)
        wall0 = time.monotonic()
        self.amp.start()
        if self.signal is None and self.make_signal_path is not None:
            self.signal = self.make_signal_path()
        self._clock_origin = None  # set at the first chunk: start-up (JIT compilation, connects) is not lag
        watchdog = Watchdog(self.config.watchdog_s, self._on_stall).start() if self.config.realtime else None
        try:
            while self.n_done < total or self._keeping():
                self._skip_rest_if_possible()
                self._schedule_ahead()
                chunk = self.amp.read()
                self._process(chunk, progress)
                if self.next_to_schedule >= total and not self.windows.open and self.n_done < total:
                    # every trial was scheduled and none is open, yet some are not done: reading on would never end
                    raise RigctlError(f"{total - self.n_done} trial(s) of {total} were scheduled but never "
                                      "stored (an inconsistent checkpoint?); the run cannot complete")
                if watchdog is not None:
                    watchdog.kick()
        except BaseException as exc:
            self.stim.safe_state()
            self.store.append_event("fault", error=type(exc).__name__, message=str(exc),
                                    trials_done=self.n_done, sample=self.clock)
            self.store.flush()
            raise
        finally:
            if watchdog is not None:
                watchdog.stop()
            progress.close()
            self.amp.stop()
            self.stats.wall_s += time.monotonic() - wall0
            self.store.flush()
        self.stim.safe_state()
        return self.stats

    def _on_stall(self) -> None:
        """Watchdog thread: the loop stopped processing chunks; stop stimulating (the store is the loop's)."""
        self.stim.safe_state()
        self.stats.extra["watchdog_fired"] = True

    def _skip_rest_if_possible(self) -> None:
        """Between sessions, jump a simulated rig to the next session's lead-in (nothing is recorded)."""
        nxt = self.next_to_schedule
        p = self.protocol
        if (nxt == 0 or nxt >= self.schedule.n_trials or nxt % p.trials_per_session != 0
                or self.windows.open or not self.amp.can_skip or p.raw == "all" or p.spikes == "all"):
            return
        if self._keeping():
            return  # the last trial's raw or spike window is not all recorded yet
        target = self.schedule.trial_sample(nxt) - self.lead_in
        if target <= self.clock:
            return
        self.amp.skip_to(target)
        self.stats.skipped_samples += target - self.clock
        self.clock = self.spikes_until = target
        self._clock_origin = None
        if self.make_signal_path is not None:
            self.signal = self.make_signal_path()  # a new recording segment; it settles during the lead-in

    def _keeping(self) -> bool:
        """Whether a trial's raw or spike window (kept on disk) extends beyond what has been recorded."""
        return (any(end > self.clock for _, end in self.keep_ranges["raw"])
                or any(end > self.spikes_until for _, end in self.keep_ranges["spikes"]))

    def _schedule_ahead(self) -> None:
        horizon = self.clock + max(self.lookahead, 2 * self.chunk_hint)
        p = self.protocol
        while self.next_to_schedule < self.schedule.n_trials:
            if self.schedule.trial_sample(self.next_to_schedule) >= horizon:
                break
            planned = self.schedule.trial(self.next_to_schedule)
            if planned.trial == 1:
                self._begin_session(planned)
            if planned.command is not None:
                self._deliver(planned.command)
            self.windows.add(planned)
            for kind, window in (("raw", p.raw_window_ms), ("spikes", p.spike_window_ms)):
                self.keep_ranges[kind].append((planned.sample + self.schedule.ms_to_samples(window[0]),
                                               planned.sample + self.schedule.ms_to_samples(window[1])))
            self.next_to_schedule += 1

    def _deliver(self, command) -> None:
        """Safety-check and hand a command to the stimulator, log it, warn the artifact blanker.
        A SafetyViolation propagates: the run stops and the stimulator goes to its safe state."""
        self.stim.schedule(command)
        self.store.append_stim(command)
        if self.signal is not None:
            self.signal.expect_pulse(command.sample, command.electrodes, command.pulse.duration_us)

    def _begin_session(self, planned: PlannedTrial) -> None:
        self.store.append_event("session_start", session=planned.session, sample=planned.sample)
        for name, payload in self.models_begin(planned.session):
            if payload is not None:
                self.store.append_model_session(name, planned.session, "prediction", payload)
        if self.publisher is not None:
            self.publisher.publish("session_start", {"session": planned.session})

    def _kept(self, kind: str, first: int, end: int) -> list[tuple[int, int]]:
        """Intersections of [first, end) with the keep ranges of `kind`; prunes ranges already passed."""
        ranges = self.keep_ranges[kind]
        out = [(max(a, first), min(b, end)) for a, b in ranges if a < end and b > first]
        self.keep_ranges[kind] = [r for r in ranges if r[1] > end]
        return out

    def _process(self, chunk: Chunk, progress: Progress) -> None:
        p = self.protocol
        if chunk.first_sample != self.clock:
            raise RigctlError(f"amplifier skipped from sample {self.clock} to {chunk.first_sample}")
        # raw data first: it must reach disk before anything else may fail
        kept = self._kept("raw", chunk.first_sample, chunk.end_sample)  # prunes the passed ranges in any case
        if chunk.samples.shape[1]:  # an events rig has no raw data
            if p.raw == "all":
                self.store.append_raw(chunk.first_sample, chunk.samples)
            elif p.raw == "trials":
                for a, b in kept:
                    self.store.append_raw(a, chunk.samples[a - chunk.first_sample:b - chunk.first_sample])
        self.clock = chunk.end_sample
        self.chunk_hint = max(self.chunk_hint, chunk.n_samples)
        self.stim.on_chunk(chunk.end_sample)
        if chunk.spikes is not None:
            spikes, processed_until = chunk.spikes, chunk.end_sample
        else:
            spikes = self.signal.process(chunk)
            processed_until = self.signal.processed_until
        self.spikes_until = processed_until
        if len(spikes):
            if p.spikes == "all":
                self.store.append_spikes(spikes)
            else:
                for a, b in self._kept("spikes", int(spikes.sample[0]), int(spikes.sample[-1]) + 1):
                    lo, hi = np.searchsorted(spikes.sample, (a, b))
                    self.store.append_spikes(spikes.select(slice(lo, hi)))
            self.windows.count(spikes)
            for rule in self.reactions:
                for command in rule(spikes, chunk.end_sample):
                    self._deliver(command)
        self.keep_ranges["spikes"] = [r for r in self.keep_ranges["spikes"] if r[1] > processed_until]
        for t in self.windows.complete(processed_until):
            self._finish_trial(t, progress)
        self.stats.chunks += 1
        self.stats.samples += chunk.n_samples
        if self.config.realtime:
            self._check_lag(chunk)
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
        self.store.append_trial(record)
        for m in self.models:
            m.update(record)
        self._session_counts.append(record.counts)
        self.n_done += 1
        progress.trial()
        if self.publisher is not None:
            self.publisher.publish("trial", {"session": record.session, "trial": record.trial,
                                             "sample": record.sample, "counts": record.counts.tolist()})
        p = self.protocol
        session_end = record.trial == p.trials_per_session
        if session_end:
            self._end_session(record.session, progress)
        if session_end or self.n_done % p.checkpoint_every_trials == 0:
            self._checkpoint_due = True

    def _end_session(self, session: int, progress: Progress) -> None:
        counts = np.array(self._session_counts)
        mean_evoked = float(counts.sum(axis=1).mean()) if len(counts) else 0.0
        self._session_counts = []
        self.store.append_event("session_end", session=session, trials=len(counts),
                                mean_evoked_per_trial=mean_evoked, overruns=self.stats.overruns)
        for m in self.models:
            self.store.append_model_session(m.name, session, "end", m.end_session(session))
        if self.publisher is not None:
            self.publisher.publish("session_end", {"session": session, "mean_evoked_per_trial": mean_evoked})
        progress.session(session, self.protocol.sessions, mean_evoked, self.n_done, self.schedule.n_trials)
