"""Closed-loop latency: from a chunk's arrival to a stimulation command handed to the stimulator driver.

The measurement runs the very loop `rigctl run` uses (ProtocolRunner: store, signal path, trial windows, safety
guard) with one extra closed-loop rule, "stimulate when a spike is detected", and timestamps two points:
when `Amplifier.read()` returns a chunk, and when the guarded stimulator hands the rule's command to the
driver. Loopback procedure for real hardware: docs/latency.md.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.types import BiphasicPulse, SpikeEvents, StimCommand


class TimedAmplifier(Amplifier):
    """Wraps an amplifier; remembers when the last chunk arrived (perf_counter_ns)."""

    def __init__(self, inner: Amplifier):
        self.inner = inner
        self.arrival_ns = 0

    sample_rate_hz = property(lambda self: self.inner.sample_rate_hz)
    n_channels = property(lambda self: self.inner.n_channels)
    layout = property(lambda self: self.inner.layout)
    uV_per_bit = property(lambda self: self.inner.uV_per_bit)
    can_skip = property(lambda self: self.inner.can_skip)

    def skip_to(self, sample: int) -> None:
        self.inner.skip_to(sample)

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def read(self):
        chunk = self.inner.read()
        self.arrival_ns = time.perf_counter_ns()
        return chunk


class TimedStimulator(Stimulator):
    """Wraps the driver; records the latency of every command the closed-loop rule issued."""

    def __init__(self, inner: Stimulator, amplifier: TimedAmplifier):
        self.inner = inner
        self.amplifier = amplifier
        self.watch: set[int] = set()
        self.latencies_ns: list[int] = []

    def schedule(self, command: StimCommand) -> None:
        handed = time.perf_counter_ns()
        self.inner.schedule(command)
        if id(command) in self.watch:
            self.watch.discard(id(command))
            self.latencies_ns.append(handed - self.amplifier.arrival_ns)

    def on_chunk(self, end_sample: int) -> None:
        self.inner.on_chunk(end_sample)

    def abort(self) -> None:
        self.inner.abort()

    def safe_state(self) -> None:
        self.inner.safe_state()


class SpikeTriggeredRule:
    """Closed-loop rule: on any detected spike, pulse the next electrode of a rotation, at most once per
    `min_interval_s` per electrode (so the rig's rate limit is respected), `delay_ms` after the chunk end."""

    def __init__(self, electrodes: list[int], sample_rate_hz: float, pulse: BiphasicPulse,
                 stimulator: TimedStimulator, delay_ms: float = 1.0, min_interval_s: float = 0.05):
        self.electrodes = electrodes
        self.pulse = pulse
        self.stimulator = stimulator
        self.delay = max(1, int(round(delay_ms * 1e-3 * sample_rate_hz)))
        self.min_interval = int(round(min_interval_s * sample_rate_hz)) + 1
        self.last = {e: -10**12 for e in electrodes}
        self.next = 0

    def __call__(self, spikes: SpikeEvents, now_sample: int) -> list[StimCommand]:
        if len(spikes) == 0:
            return []
        e = self.electrodes[self.next % len(self.electrodes)]
        at = now_sample + self.delay
        if at - self.last[e] < self.min_interval:
            return []
        self.next += 1
        self.last[e] = at
        command = StimCommand(at, (e,), self.pulse)
        self.stimulator.watch.add(id(command))
        return [command]


@dataclass
class LatencyResult:
    latencies_us: np.ndarray
    chunk_ms: float
    channels: int
    rate_hz: float
    rig: str
    wall_s: float

    def figures(self) -> dict:
        lat = self.latencies_us
        if len(lat) == 0:
            return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None}
        return {"n": int(len(lat)), "p50_us": round(float(np.median(lat)), 1),
                "p99_us": round(float(np.percentile(lat, 99)), 1), "max_us": round(float(lat.max()), 1),
                "mean_us": round(float(lat.mean()), 1), "rig": self.rig, "channels": self.channels,
                "rate_hz": self.rate_hz, "chunk_ms": self.chunk_ms}

    def histogram_text(self, bins: int = 12) -> str:
        """Equal-width bins from the minimum to the 99.9th percentile, plus one overflow bin."""
        lat = self.latencies_us
        if len(lat) == 0:
            return "(no closed-loop commands were issued)"
        hi = float(np.percentile(lat, 99.9))
        edges = np.linspace(float(lat.min()), max(hi, float(lat.min()) + 1e-3), bins + 1)
        counts, _ = np.histogram(np.minimum(lat, hi), bins=edges)
        over = int((lat > hi).sum())
        counts[-1] -= over
        rows = [(f"{lo:8.1f}-{up:8.1f} us", int(c)) for c, lo, up in zip(counts, edges[:-1], edges[1:])]
        rows.append((f"   > {hi:8.1f} us", over))
        top = max(c for _, c in rows) or 1
        return "\n".join(f"{label} {c:7d} {'#' * int(np.ceil(40 * c / top))}" for label, c in rows)

    def plot(self, path: Path) -> Path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        lat = self.latencies_us
        ax.hist(lat, bins=min(100, max(10, len(lat) // 20)), color="steelblue")
        f = self.figures()
        for key, colour in (("p50_us", "k"), ("p99_us", "r")):
            if f.get(key) is not None:
                ax.axvline(f[key], color=colour, ls="--", label=f"{key[:-3]} {f[key]} us")
        ax.set(xlabel="chunk arrival -> command handed to stimulator (us)", ylabel="commands", yscale="log",
               title=f"closed-loop latency: {self.rig}, {self.channels} ch x {self.rate_hz:g} Hz, "
                     f"{self.chunk_ms:g} ms chunks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)


def synthetic_recording(channels: int, rate_hz: float, seconds: float, seed: int, spike_rate_hz: float = 10.0):
    """int16 [n, channels]: the simulated rig's noise and spike waveforms at a given channel count."""
    from rigctl.sim.render import VoltageRenderer
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    renderer = VoltageRenderer(channels, rate_hz, seed)
    k = rng.poisson(spike_rate_hz * seconds * channels)
    samples = np.sort(rng.integers(50, n - 50, k))
    chans = rng.integers(0, channels, k)
    amps = -rng.uniform(40, 120, k).astype(np.float32)
    return renderer.render(0, n, samples, chans, amps, [])


def measure_latency(rig: str, channels: int, rate_hz: float, chunk_ms: float, seconds: float, seed: int = 0,
                    realtime: bool = False, publisher=None, steering=None) -> LatencyResult:
    """Run the loop for `seconds` of rig time on `rig` and collect closed-loop latencies. `publisher` (a
    rigctl.stream.Publisher) and `steering` (a control server's queue) attach the live parts
    (bench/bench_live.py compares)."""
    from rigctl.drivers.playback import PlaybackAmplifier
    from rigctl.loop import LoopConfig, ProtocolRunner
    from rigctl.protocol import load_protocol
    from rigctl.rigs import open_rig
    from rigctl.safety import GuardedStimulator, SafetyLimits
    from rigctl.signal import SignalConfig, SignalPath
    from rigctl.store import SessionStore

    trials = max(1, int(seconds) - 1)
    protocol = load_protocol("isomura2023_bss").with_overrides(sessions=1, trials_per_session=trials, seed=seed,
                                                                  raw="none", spikes="trials")
    chunk_samples = max(1, int(round(chunk_ms * 1e-3 * rate_hz)))
    if rig == "playback" or (rig == "sim" and (channels != 64 or rate_hz != 25000.0)):
        data = synthetic_recording(channels, rate_hz, min(seconds, 20.0), seed)
        amp_inner = PlaybackAmplifier(data, rate_hz, chunk_samples, loop=True, realtime=realtime)

        class _Sink(Stimulator):
            def schedule(self, command):
                pass

            def abort(self):
                pass

            def safe_state(self):
                pass
        stim_inner: Stimulator = _Sink()
        rig_label = f"playback({channels}ch)"
        limits = SafetyLimits(n_electrodes=channels)
        protocol = protocol.with_overrides(group_a=tuple(range(0, 32, 2)), group_b=tuple(range(1, 32, 2)))
    else:
        opened = open_rig(rig, seed=seed, realtime=realtime, chunk_ms=chunk_ms, sample_rate_hz=rate_hz)
        amp_inner, stim_inner, limits = opened.amplifier, opened.stimulator, opened.limits
        rig_label = rig
    amp = TimedAmplifier(amp_inner)
    stim = TimedStimulator(stim_inner, amp)
    guarded = GuardedStimulator(stim, limits, amp.sample_rate_hz)
    plan = protocol.make_protocol(seed, amp.sample_rate_hz)
    electrodes = [e for e in range(amp.n_channels) if e not in set(protocol.stim_electrodes)][:16]
    pulse = protocol.pulse
    rule = SpikeTriggeredRule(electrodes, amp.sample_rate_hz, pulse, stim)
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"protocol": protocol.name, "seed": seed, "rig": rig_label,
                "shapes": {"n_electrodes": amp.n_channels},
                "trial_fields": [f.to_json() for f in plan.trial_fields]}
        store = SessionStore.create(Path(tmp) / "run", meta, {})
        def voltage_signal_path():
            return SignalPath(amp.n_channels, amp.sample_rate_hz, amp.uV_per_bit, SignalConfig())
        make_signal = None if getattr(amp_inner, "mode", "voltage") == "events" else voltage_signal_path
        runner = ProtocolRunner(plan, amp, guarded, store, [], make_signal,
                                LoopConfig(realtime=realtime, progress=False), reactions=[rule],
                                publisher=publisher, steering=steering)
        t0 = time.monotonic()
        runner.run()
        wall = time.monotonic() - t0
        store.close()
    lat = np.array(stim.latencies_ns, dtype=np.float64) / 1000.0
    return LatencyResult(lat, chunk_ms, amp.n_channels, amp.sample_rate_hz, rig_label, wall)
