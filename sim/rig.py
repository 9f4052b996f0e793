"""The simulated rig: one culture on a virtual MEA, seen as an Amplifier and driven as a Stimulator.

Two modes over one network: `voltage` renders int16 traces (noise, artifacts, spike waveforms) that go
through the whole signal path; `events` emits the electrode spike events an ideal detector would find,
for speed. In both modes the network is advanced to the same absolute samples, so for a seed it evolves
identically and the two differ only by detection error.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.errors import DeviceError
from rigctl.layout import ElectrodeLayout
from rigctl.types import Chunk, SpikeEvents, StimCommand
from rigctl.sim.render import VoltageRenderer

ARTIFACT_DRIVE_uV = 20000.0  # extracellular drive at a stimulated electrode; saturates the amplifier
ARTIFACT_SPREAD_UM = 40.0
# Events mode emits the spikes the voltage path's detector would find (calibration in sim/projection.py;
# agreement of the two modes measured by bench/bench_sim_rig.py).
from rigctl.sim.projection import DETECTION_THRESHOLD_SD as EVENTS_THRESHOLD_SD  # noqa: E402  # artifact falls off as 1 / (1 + (d / spread)^2) from the nearest stimulated site


class SimRig(Amplifier, Stimulator):
    """A culture on an 8 x 8 MEA. `mode` is "voltage" (`--rig sim`) or "events" (`--rig sim-events`)."""

    def __init__(self, *, sample_rate_hz: float = 25000.0, seed: int = 0, mode: str = "voltage",
                 drug: str = "none", chunk_ms: float | None = None, realtime: bool = False,
                 noise_rms_uV: float = 6.0, layout: ElectrodeLayout | None = None, culture_config=None,
                 culture=None, projection=None):
        """`culture`/`projection` may be injected (tests); by default the learning culture of sim/culture.py."""
        if mode not in ("voltage", "events"):
            raise ValueError(f"mode must be 'voltage' or 'events', got {mode!r}")
        self.mode = mode
        self.seed = seed
        self.drug = drug
        self._rate = float(sample_rate_hz)
        self._layout = layout or ElectrodeLayout.grid(8, 8, 200.0)
        if culture is None:
            from rigctl.sim.culture import Culture
            culture = Culture(self._layout, self._rate, seed, drug=drug, config=culture_config)
        self.culture = culture
        if projection is None:
            from rigctl.sim.projection import ElectrodeProjection
            projection = ElectrodeProjection(self._layout, culture.neuron_positions_um, seed,
                                             noise_rms_uV=noise_rms_uV)
        self.projection = projection
        self.renderer = VoltageRenderer(self._layout.n_electrodes, self._rate, seed, noise_rms_uV)
        default_ms = 10.0 if mode == "voltage" else 50.0
        self.chunk_samples = max(1, int(round((chunk_ms or default_ms) * 1e-3 * self._rate)))
        self.realtime = realtime
        pre, post = self.renderer.spike_reach
        self._reach_pre, self._reach_post = pre, post
        self._now = 0  # next sample read() returns
        self._events = SpikeEvents.empty()  # electrode events not yet fully rendered / emitted
        self._artifacts: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._started = False
        self._wall0: float | None = None  # wall-clock origin of real-time pacing (set at the first read)
        self._sample0 = 0

    # ---- Amplifier ---------------------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self._rate

    @property
    def n_channels(self) -> int:
        return self._layout.n_electrodes

    @property
    def layout(self) -> ElectrodeLayout:
        return self._layout

    @property
    def uV_per_bit(self) -> float:
        return self.renderer.uV_per_bit

    @property
    def now_sample(self) -> int:
        return self._now

    def start(self) -> None:
        self._started = True
        self._wall0 = None  # the wall clock is taken at the first read, after any JIT compilation

    def stop(self) -> None:
        self._started = False

    def _advance_network(self, until: int) -> None:
        """Advance the culture to `until` + the waveform reach, collecting electrode events."""
        target = until + self._reach_pre
        if target <= self.culture.now_sample:
            return
        spike_sample, spike_neuron = self.culture.advance(target)
        if len(spike_sample):
            if self.mode == "events":
                new = self.projection.detectable_events(spike_sample, spike_neuron, threshold_sd=EVENTS_THRESHOLD_SD)
            else:
                new = self.projection.electrode_events(spike_sample, spike_neuron)
            self._events = SpikeEvents.concat([self._events, new])

    def read(self) -> Chunk:
        return self.read_samples(self.chunk_samples)

    @property
    def can_batch(self) -> bool:
        return not self.realtime  # paced to the wall clock, a chunk is the latency a device would have

    def read_samples(self, n_samples: int) -> Chunk:
        """The next `n_samples`; any split of time gives the same spikes (the culture is chunk-free)."""
        if not self._started:
            raise DeviceError("simulated rig: read() before start()")
        first, n = self._now, int(n_samples)
        end = first + n
        if self.realtime:
            if self._wall0 is None:
                self._advance_network(end)  # compile and warm up before the clock starts
                self._wall0, self._sample0 = time.monotonic(), first
            due = self._wall0 + (end - self._sample0) / self._rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing to the wall clock is the point of real-time mode
        self._advance_network(end)
        ev = self._events
        if self.mode == "events":
            inside = (ev.sample >= first) & (ev.sample < end)
            chunk_spikes = ev.select(inside)
            self._events = ev.select(ev.sample >= end)
            chunk = Chunk(first, np.empty((n, 0), np.int16), self.uV_per_bit, self._rate, spikes=chunk_spikes)
        else:
            near = (ev.sample >= first - self._reach_post) & (ev.sample < end + self._reach_pre)
            sel = ev.select(near)
            samples = self.renderer.render(first, n, sel.sample, sel.channel, sel.amplitude_uV, self._artifacts)
            self._events = ev.select(ev.sample >= end - self._reach_post)
            self._artifacts = [a for a in self._artifacts if a[0] + len(a[1]) > end]
            chunk = Chunk(first, samples, self.uV_per_bit, self._rate)
        self._now = end
        return chunk

    @property
    def can_skip(self) -> bool:
        return True

    def skip_to(self, sample: int) -> None:
        """Jump over a rest: the culture is fast-forwarded (no spikes kept, no voltage rendered)."""
        if sample <= self._now:
            return
        if self._artifacts and max(a[0] + len(a[1]) for a in self._artifacts) > self._now:
            raise DeviceError("simulated rig: cannot skip while a pulse is still in progress")
        target = sample + self._reach_pre
        if target > self.culture.now_sample:
            self.culture.fast_forward(target)
        self._events = self._events.select(self._events.sample >= sample)
        self._artifacts = []
        self._now = sample
        self._wall0 = None

    # ---- Stimulator --------------------------------------------------------------------------------
    def schedule(self, command: StimCommand) -> None:
        if command.sample < self.culture.now_sample:
            raise DeviceError(f"simulated rig: pulse at sample {command.sample} is in the past "
                              f"(network at {self.culture.now_sample})")
        self.culture.stimulate(command.sample, command.electrodes, command.pulse)
        if self.mode == "voltage":
            wave = self.renderer.artifact(command.pulse.duration_us, self.renderer.saturate_uV)
            pos = self._layout.positions_um
            stim = pos[list(command.electrodes)]
            d = np.sqrt(((pos[:, None, :] - stim[None, :, :]) ** 2).sum(-1)).min(axis=1)
            gain = np.minimum(1.0, ARTIFACT_DRIVE_uV / self.renderer.saturate_uV
                              / (1.0 + (d / ARTIFACT_SPREAD_UM) ** 2)).astype(np.float32)
            self._artifacts.append((command.sample, wave, gain))

    def abort(self) -> None:
        """Pulses already handed to the culture cannot be recalled; nothing else is queued here."""

    def safe_state(self) -> None:
        self.abort()

    # ---- checkpoint ----------------------------------------------------------------------------------
    @property
    def can_checkpoint(self) -> bool:
        return True

    def get_state(self) -> dict[str, Any]:
        ev = self._events
        return {"now": self._now, "culture": self.culture.get_state(),
                "events": (ev.sample.copy(), ev.channel.copy(), ev.amplitude_uV.copy()),
                "artifacts": [(a[0], a[1].copy(), a[2].copy()) for a in self._artifacts]}

    def set_state(self, state: dict[str, Any]) -> None:
        self._now = int(state["now"])
        self.culture.set_state(state["culture"])
        self._events = SpikeEvents(*state["events"])
        self._artifacts = list(state["artifacts"])
        self._wall0 = None
