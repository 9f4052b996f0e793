"""Voltage renderer of the simulated rig: noise + extracellular spikes + stimulus artifacts -> int16.

Every sample is a function of its absolute index only (noise from two coprime-length banks indexed by
sample, waveforms placed by absolute sample), so any split of time into chunks renders the same bytes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rigctl.sim.waveforms import artifact_waveform, spike_template

NOISE_BANK_1 = 1_048_573  # primes: the sum of two banks repeats only after ~1e12 samples
NOISE_BANK_2 = 786_431
INT16_MAX = 32767
NOISE_BLOCK_VALUES = 131_072  # noise is rendered ahead in blocks of about this many values (512 KiB, in L2)


@njit(cache=True, nogil=True)
def _render_noise(out, first_sample, bank1, bank2, off1, off2, scale):
    """out[i, ch] = (bank1[(t + off1[ch]) % l1] + bank2[(t + off2[ch]) % l2]) * scale, t = first_sample + i.

    Channel by channel, in runs that do not wrap either bank: each run reads two contiguous stretches of the
    banks (the 64 interleaved streams of a sample-major loop defeated the prefetcher: the cost was memory
    latency). The same float32 operations as a sample-major loop, so the same bits."""
    n, c = out.shape
    l1 = bank1.shape[0]
    l2 = bank2.shape[0]
    for ch in range(c):
        j1 = (first_sample + off1[ch]) % l1
        j2 = (first_sample + off2[ch]) % l2
        i = 0
        while i < n:
            m = min(n - i, l1 - j1, l2 - j2)
            for k in range(m):
                out[i + k, ch] = (bank1[j1 + k] + bank2[j2 + k]) * scale
            i += m
            j1 += m
            j2 += m
            if j1 == l1:
                j1 = 0
            if j2 == l2:
                j2 = 0


@njit(cache=True)
def _add_waveforms(out, first_sample, samples, channels, amplitudes, template, onset_offset):
    """Add amplitude * template with template[onset_offset] at each event's sample (clipped to the chunk)."""
    n = out.shape[0]
    m = template.shape[0]
    for k in range(samples.shape[0]):
        start = samples[k] - onset_offset - first_sample
        a = amplitudes[k]
        ch = channels[k]
        j0 = 0 if start >= 0 else -start
        j1 = m if start + m <= n else n - start
        for j in range(j0, j1):
            out[start + j, ch] += a * template[j]


@njit(cache=True)
def _quantise(out, inv_uV_per_bit, result):
    n, c = out.shape
    for i in range(n):
        for ch in range(c):
            v = out[i, ch] * inv_uV_per_bit
            if v > 32767.0:
                v = 32767.0
            elif v < -32768.0:
                v = -32768.0
            result[i, ch] = np.int16(np.rint(v))


class VoltageRenderer:
    """Renders chunks for `n_channels` electrodes at `sample_rate_hz` with a fixed noise level."""

    def __init__(self, n_channels: int, sample_rate_hz: float, seed: int, noise_rms_uV: float = 6.0,
                 uV_per_bit: float = 0.195):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D10]))
        self.n_channels = n_channels
        self.sample_rate_hz = sample_rate_hz
        self.uV_per_bit = uV_per_bit
        self.noise_rms_uV = noise_rms_uV
        self._bank1 = rng.standard_normal(NOISE_BANK_1).astype(np.float32)
        self._bank2 = rng.standard_normal(NOISE_BANK_2).astype(np.float32)
        self._off1 = rng.integers(0, NOISE_BANK_1, n_channels).astype(np.int64)
        self._off2 = rng.integers(0, NOISE_BANK_2, n_channels).astype(np.int64)
        self.template, self.trough_index = spike_template(sample_rate_hz)
        self.saturate_uV = INT16_MAX * uV_per_bit
        self._scale = np.float32(noise_rms_uV / np.sqrt(2.0))
        # a cache of the noise of one block of samples on the absolute grid (a function of the index only, so
        # not part of any state): long runs per channel through the banks, then chunks are copied out of it
        self._block_len = max(256, NOISE_BLOCK_VALUES // max(1, n_channels))
        self._block = np.empty((self._block_len, n_channels), np.float32)
        self._block_first = -1

    @property
    def spike_reach(self) -> tuple[int, int]:
        """Samples a spike's waveform extends before and after its trough."""
        return self.trough_index, len(self.template) - self.trough_index - 1

    def artifact(self, pulse_duration_us: float, peak_uV: float) -> np.ndarray:
        return artifact_waveform(self.sample_rate_hz, pulse_duration_us, peak_uV, self.saturate_uV)

    def _noise(self, out: np.ndarray, first_sample: int) -> None:
        """The noise of samples first_sample .. + len(out), through the block cache (long chunks directly)."""
        n, size = out.shape[0], self._block_len
        if 2 * n >= size:  # runs of half a block or more are long enough: straight into the chunk, no copy
            _render_noise(out, first_sample, self._bank1, self._bank2, self._off1, self._off2, self._scale)
            return
        i = 0
        while i < n:
            t = first_sample + i
            start = t - t % size
            if start != self._block_first:
                _render_noise(self._block, start, self._bank1, self._bank2, self._off1, self._off2, self._scale)
                self._block_first = start
            m = min(n - i, start + size - t)
            out[i:i + m] = self._block[t - start:t - start + m]
            i += m

    def render(self, first_sample: int, n_samples: int, spike_sample: np.ndarray, spike_channel: np.ndarray,
               spike_amplitude_uV: np.ndarray, artifacts: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
        """int16 [n_samples, n_channels]. `artifacts`: (onset sample, waveform, per-channel gain [n_channels])."""
        out = np.empty((n_samples, self.n_channels), np.float32)
        self._noise(out, first_sample)
        if len(spike_sample):
            # spikes are negative-going: amplitude is the (negative) trough, the template's trough is -1
            _add_waveforms(out, first_sample, spike_sample.astype(np.int64), spike_channel.astype(np.int64),
                           (-spike_amplitude_uV).astype(np.float32), self.template, self.trough_index)
        for onset, wave, gain in artifacts:
            start = onset - first_sample
            j0, j1 = max(0, -start), min(len(wave), n_samples - start)
            if j1 > j0:
                out[start + j0:start + j1, :] += wave[j0:j1, None] * gain[None, :]
        result = np.empty((n_samples, self.n_channels), np.int16)
        _quantise(out, np.float32(1.0 / self.uV_per_bit), result)
        return result
