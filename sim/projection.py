"""Neuron spikes -> the extracellular spike events each electrode of the virtual MEA sees.

Amplitude model: a neuron's negative trough at distance d from an electrode is
    a(d) = -A_n / (1 + (d / d0)^2),
with A_n its trough amplitude at the electrode surface (lognormal across neurons) and d0 ~ the soma's
height above the planar electrode (a point-source-like fall-off that becomes dipole-like far away).
With the defaults (median A_n 150 uV, d0 20 um) a spike is detectable at 3 x 6 uV noise within ~100 um, so
an electrode sees ~4 neurons, as MEA recordings of cultures do (1-several units per electrode), and electrodes
200 um apart do not share them (issue 16: what an electrode records is its own neighbourhood).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rigctl.layout import ElectrodeLayout
from rigctl.types import SpikeEvents

# The voltage path's detector (rigctl.signal, defaults) finds half of the spikes whose trough is 3 x the
# broadband noise rms on the simulated rig's traces (93 % at 3.5 x, 97 % from 4 x); an ideal detector with
# that 50 % point is what the events rig emits, so both rig modes count alike.
DETECTION_THRESHOLD_SD = 3.0


class ElectrodeProjection:
    """Fixed neuron -> electrode amplitudes (sparse above `floor_uV`), drawn from `seed`."""

    def __init__(self, layout: ElectrodeLayout, neuron_positions_um: np.ndarray, seed: int,
                 noise_rms_uV: float = 6.0, amplitude_median_uV: float = 150.0, amplitude_cv: float = 0.4,
                 d0_um: float = 20.0, floor_uV: float = 2.0):
        self.noise_rms_uV = float(noise_rms_uV)
        self.floor_uV = float(floor_uV)
        rng = np.random.default_rng([int(seed), 0x9A0EC7])
        n = len(neuron_positions_um)
        s = math.sqrt(math.log(1.0 + amplitude_cv ** 2))
        self.neuron_amplitude_uV = amplitude_median_uV * rng.lognormal(0.0, s, n)
        d = np.sqrt(((neuron_positions_um[:, None, :] - layout.positions_um[None, :, :]) ** 2).sum(-1))
        amp = -self.neuron_amplitude_uV[:, None] / (1.0 + (d / d0_um) ** 2)  # [n_neurons, n_electrodes]
        self.amplitude_uV = amp
        self._floor_table = self._table(self.floor_uV)
        self._detect_tables: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _table(self, min_abs_uV: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse neuron -> (electrode, amplitude) pairs with |amplitude| >= min_abs_uV, CSR by neuron."""
        neuron, electrode = np.nonzero(-self.amplitude_uV >= min_abs_uV)  # sorted by neuron
        ptr = np.searchsorted(neuron, np.arange(self.amplitude_uV.shape[0] + 1))
        return ptr, electrode.astype(np.int32), self.amplitude_uV[neuron, electrode].astype(np.float32)

    @staticmethod
    def _expand(table, spike_sample: np.ndarray, spike_neuron: np.ndarray) -> SpikeEvents:
        if len(spike_sample) == 0:
            return SpikeEvents.empty()
        ptr, elec, amps = table
        # one compiled call: the events rig calls this for every chunk, mostly with a few spikes
        return SpikeEvents(*_expand_sorted(ptr, elec, amps, np.asarray(spike_sample, np.int64),
                                           np.asarray(spike_neuron, np.int64)))

    def electrode_events(self, spike_sample: np.ndarray, spike_neuron: np.ndarray) -> SpikeEvents:
        """Every (spike, electrode) pair above the floor, sorted by sample (then electrode)."""
        return self._expand(self._floor_table, spike_sample, spike_neuron)

    def detectable_events(self, spike_sample: np.ndarray, spike_neuron: np.ndarray,
                          threshold_sd: float = DETECTION_THRESHOLD_SD) -> SpikeEvents:
        """Same as detectable(electrode_events(...)) without building the sub-threshold pairs (events rig)."""
        thr = float(threshold_sd) * self.noise_rms_uV
        if thr not in self._detect_tables:
            self._detect_tables[thr] = self._table(max(thr, self.floor_uV))
        return self._expand(self._detect_tables[thr], spike_sample, spike_neuron)

    def detectable(self, events: SpikeEvents, threshold_sd: float = DETECTION_THRESHOLD_SD) -> SpikeEvents:
        """What an ideal threshold detector finds: |amplitude| >= threshold_sd x noise rms."""
        return events.select(np.abs(events.amplitude_uV) >= threshold_sd * self.noise_rms_uV)

    def detectable_neurons_per_electrode(self, threshold_sd: float = DETECTION_THRESHOLD_SD) -> np.ndarray:
        """How many neurons each electrode can detect (for documentation and tests)."""
        return (-self.amplitude_uV >= threshold_sd * self.noise_rms_uV).sum(axis=0)


@njit(cache=True)
def _expand_sorted(ptr, elec, amps, spike_sample, spike_neuron):
    """Each spike's (electrode, amplitude) pairs from the CSR table, ordered by (sample, electrode); ties
    keep their order (a stable sort, as np.lexsort)."""
    total = 0
    for i in range(len(spike_neuron)):
        total += ptr[spike_neuron[i] + 1] - ptr[spike_neuron[i]]
    sample = np.empty(total, np.int64)
    channel = np.empty(total, np.int32)
    amp = np.empty(total, np.float32)
    k = 0
    for i in range(len(spike_neuron)):
        for j in range(ptr[spike_neuron[i]], ptr[spike_neuron[i] + 1]):
            sample[k] = spike_sample[i]
            channel[k] = elec[j]
            amp[k] = amps[j]
            k += 1
    order = np.argsort(sample * (1 << 20) + channel, kind="mergesort")  # channels < 2^20; samples < 2^43
    return sample[order], channel[order], amp[order]

