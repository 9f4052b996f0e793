"""Test doubles: a tiny deterministic 'culture' so loop/store/resume tests run in milliseconds.

It is not the simulated culture (sim/culture.py); it only honours the same interface: each neuron sits
on one electrode and fires Poisson spikes; a pulse on an electrode makes its neurons (and, weaker, those
on electrodes up to 2 sites away) fire a burst 10-30 ms later. Randomness is a function of (seed, absolute
sample block), so any split of time into advance() calls gives the same spikes.
"""

from __future__ import annotations

import numpy as np

from rigctl.types import SpikeEvents

BLOCK = 250  # samples per random block


class FakeCulture:
    def __init__(self, layout, sample_rate_hz: float, seed: int, rate_hz: float = 5.0):
        self.layout = layout
        self.fs = sample_rate_hz
        self.seed = seed
        self.rate_hz = rate_hz
        self.n = layout.n_electrodes
        self.neuron_positions_um = layout.positions_um.copy()
        self._now = 0
        self._pulses: list[tuple[int, tuple[int, ...]]] = []
        self.gain = np.ones(self.n)  # a "learning" stand-in: each pulse raises its electrodes' gain slightly

    @property
    def now_sample(self) -> int:
        return self._now

    def stimulate(self, sample, electrodes, pulse) -> None:
        assert sample >= self._now
        self._pulses.append((int(sample), tuple(int(e) for e in electrodes)))

    def _block_spikes(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, b])
        lam = np.full(self.n, self.rate_hz * BLOCK / self.fs)
        start = b * BLOCK
        d = self.layout.positions_um
        for sample, electrodes in self._pulses:
            lo, hi = sample + int(0.010 * self.fs), sample + int(0.030 * self.fs)
            overlap = max(0, min(hi, start + BLOCK) - max(lo, start))
            if overlap:
                dist = np.sqrt(((d[:, None, :] - d[list(electrodes)][None]) ** 2).sum(-1)).min(axis=1)
                drive = np.where(dist <= 2.1 * 200, 3.0 / (1 + dist / 200.0), 0.0) * self.gain
                lam = lam + drive * overlap / (hi - lo)
        counts = rng.poisson(lam)
        neuron = np.repeat(np.arange(self.n), counts).astype(np.int32)
        sample = start + rng.integers(0, BLOCK, len(neuron))
        order = np.argsort(sample, kind="stable")
        return sample[order].astype(np.int64), neuron[order]

    def advance(self, until: int):
        out_s, out_n = [], []
        b = self._now // BLOCK
        while b * BLOCK < until:
            s, n = self._block_spikes(b)
            keep = (s >= self._now) & (s < until)
            out_s.append(s[keep])
            out_n.append(n[keep])
            b += 1
        for sample, electrodes in self._pulses:
            if self._now <= sample < until:
                self.gain[list(electrodes)] *= 1.001
        self._now = until
        self._pulses = [p for p in self._pulses if p[0] + int(0.030 * self.fs) >= until]
        s, n = np.concatenate(out_s), np.concatenate(out_n)
        order = np.argsort(s, kind="stable")
        return s[order], n[order]

    def fast_forward(self, until: int) -> None:
        self._now = until
        self._pulses = []

    def get_state(self) -> dict:
        return {"now": self._now, "pulses": list(self._pulses), "gain": self.gain.copy()}

    def set_state(self, state: dict) -> None:
        self._now, self._pulses, self.gain = state["now"], list(state["pulses"]), state["gain"].copy()


class FakeProjection:
    """Each neuron is seen by its own electrode at -60 uV (well above a 5 SD threshold)."""

    def __init__(self, n: int):
        self.n = n

    def electrode_events(self, spike_sample, spike_neuron) -> SpikeEvents:
        return SpikeEvents(spike_sample.astype(np.int64), spike_neuron.astype(np.int32),
                           np.full(len(spike_sample), -60.0, np.float32))

    def detectable(self, events: SpikeEvents, threshold_sd: float = 5.0) -> SpikeEvents:
        return events

    def detectable_events(self, spike_sample, spike_neuron, threshold_sd: float = 5.0) -> SpikeEvents:
        return self.electrode_events(spike_sample, spike_neuron)


def fake_sim_rig(seed: int = 0, mode: str = "events", chunk_ms: float | None = None):
    from rigctl.layout import ElectrodeLayout
    from rigctl.sim.rig import SimRig

    layout = ElectrodeLayout.grid(8, 8, 200.0)
    culture = FakeCulture(layout, 25000.0, seed)
    return SimRig(sample_rate_hz=25000.0, seed=seed, mode=mode, chunk_ms=chunk_ms, layout=layout,
                  culture=culture, projection=FakeProjection(layout.n_electrodes))


def fake_rig_factory(spec: str, *, seed: int, drug: str = "none", realtime: bool = False,
                     chunk_ms: float | None = None):
    """Stands in for rigctl.rigs.open_rig: `sim`/`sim-events` over the fake culture."""
    from rigctl.rigs import Rig
    from rigctl.safety import SafetyLimits

    rig = fake_sim_rig(seed, "voltage" if spec == "sim" else "events", chunk_ms)
    rig.realtime = realtime
    desc = {"kind": spec, "mode": rig.mode, "sample_rate_hz": rig.sample_rate_hz, "seed": seed, "fake": True}
    return Rig(rig, rig, SafetyLimits(n_electrodes=rig.n_channels), desc, state=rig, closers=[rig.stop])


def fake_hardware_rig_factory(spec: str, **kw):
    """Like fake_rig_factory, but the rig cannot be checkpointed (as real hardware)."""
    rig = fake_rig_factory(spec, **kw)
    rig.state = None
    return rig
