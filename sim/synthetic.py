"""Ground-truth recordings for scoring the spike detector: known spike times, known SNR per channel.

A simulator of recordings (hence `rigctl.sim`), used to score the detector in the signal-path tests.
Uses the simulated rig's shapes (`rigctl.sim.waveforms`): negative-going spikes drawn with
`spike_template` (trough = amplitude), stimulus artifacts drawn with `artifact_waveform` on every
electrode, scaled by distance like the rig does and saturating at the int16 range. On top come white
Gaussian noise, slow drifts (a DC offset plus sub-10-Hz sinusoids), bursts and overlapping spikes.

SNR is defined as in issue 4: trough amplitude over the in-band noise SD, where "in-band" is the
reference spike band 300-6000 Hz (`INBAND_HZ`), measured on the noise-only component with a
zero-phase 4th-order Butterworth band-pass. That band does not depend on the detector under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import butter, sosfiltfilt

from rigctl.layout import ElectrodeLayout
from rigctl.sim.waveforms import artifact_waveform, spike_template
from rigctl.types import SpikeEvents

INBAND_HZ = (300.0, 6000.0)
INT16_MAX = 32767
ARTIFACT_DRIVE_uV = 20000.0  # same constants as rigctl.sim.rig: drive at the stimulated electrode
ARTIFACT_SPREAD_UM = 40.0


@dataclass(frozen=True)
class GroundTruthConfig:
    """What to generate. Channel c gets SNR `snr_values[c % len(snr_values)]`."""

    n_channels: int = 8
    sample_rate_hz: float = 25000.0
    duration_s: float = 10.0
    uV_per_bit: float = 0.195
    noise_rms_uV: float = 6.0  # broadband white noise SD
    snr_values: tuple[float, ...] = (6.0, 8.0, 12.0, 20.0)
    rate_hz: float = 8.0  # Poisson rate of isolated spikes per channel
    burst_rate_hz: float = 1.0  # bursts per channel per second, 3-6 spikes at 3-8 ms ISI
    overlap_rate_hz: float = 1.0  # pairs per channel per second at 1.2-2 ms ISI (waveforms overlap)
    coincident_fraction: float = 0.2  # of isolated spikes also fire on another channel within +-0.2 ms
    min_isi_ms: float = 1.2  # minimum ISI on one channel (longer than the detector's refractory)
    drift_uV: float = 150.0  # amplitude of slow (0.3-8 Hz) drifts per channel
    offset_uV: float = 300.0  # DC offsets up to +- this
    pulse_rate_hz: float = 2.0  # stimulus pulses per second (0: none)
    pulse_duration_us: float = 400.0
    evoked_per_pulse: int = 3  # spikes placed `evoked_delay_ms` after each pulse end on random channels
    evoked_delay_ms: tuple[float, float] = (2.0, 8.0)
    grid_pitch_um: float = 200.0
    seed: int = 0


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """A generated recording and what is in it."""

    config: GroundTruthConfig
    samples: np.ndarray  # int16 [n, n_channels]
    spikes: SpikeEvents  # true troughs: sample, channel, amplitude_uV (negative)
    snr: np.ndarray  # float [n_channels]
    inband_noise_uV: np.ndarray  # float [n_channels], measured on the noise component
    pulse_sample: np.ndarray  # int64 [p]
    pulse_electrodes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def pulse_end_sample(self) -> np.ndarray:
        dur = int(np.ceil(self.config.pulse_duration_us * 1e-6 * self.config.sample_rate_hz))
        return self.pulse_sample + dur


def inband_noise_sd(noise_uV: np.ndarray, sample_rate_hz: float) -> np.ndarray:
    """SD per channel of `noise_uV` [n, c] in the reference band `INBAND_HZ` (zero-phase)."""
    sos = butter(2, INBAND_HZ, btype="bandpass", fs=sample_rate_hz, output="sos")
    return sosfiltfilt(sos, noise_uV.astype(np.float64), axis=0).std(axis=0)


def _spike_times(rng: np.random.Generator, cfg: GroundTruthConfig, n: int, margin: int) -> list[np.ndarray]:
    fs = cfg.sample_rate_hz
    dur = n / fs
    per_channel: list[list[np.ndarray]] = [[] for _ in range(cfg.n_channels)]
    for c in range(cfg.n_channels):
        k = rng.poisson(cfg.rate_hz * dur)
        iso = rng.uniform(0, dur, k)
        per_channel[c].append(iso)
        # coincident copies on another channel (cross-channel overlap)
        copy = iso[rng.random(k) < cfg.coincident_fraction]
        for t in copy:
            other = (c + 1 + rng.integers(0, cfg.n_channels - 1)) % cfg.n_channels if cfg.n_channels > 1 else c
            per_channel[other].append(np.array([t + rng.uniform(-0.2e-3, 0.2e-3)]))
        for t0 in rng.uniform(0, dur, rng.poisson(cfg.burst_rate_hz * dur)):
            isi = rng.uniform(3e-3, 8e-3, rng.integers(2, 6))
            per_channel[c].append(t0 + np.concatenate([[0.0], np.cumsum(isi)]))
        for t0 in rng.uniform(0, dur, rng.poisson(cfg.overlap_rate_hz * dur)):
            per_channel[c].append(np.array([t0, t0 + rng.uniform(1.2e-3, 2.0e-3)]))
    out = []
    min_isi = int(np.ceil(cfg.min_isi_ms * 1e-3 * fs))
    for c in range(cfg.n_channels):
        s = np.sort(np.round(np.concatenate(per_channel[c]) * fs).astype(np.int64))
        s = s[(s >= margin) & (s < n - margin)]
        keep = []
        last = -(10 ** 12)
        for v in s:  # enforce the minimum ISI (greedy, earliest first)
            if v - last >= min_isi:
                keep.append(v)
                last = v
        out.append(np.array(keep, np.int64))
    return out


def _drift(rng: np.random.Generator, cfg: GroundTruthConfig, n: int) -> np.ndarray:
    t = np.arange(n) / cfg.sample_rate_hz
    out = np.empty((n, cfg.n_channels), np.float64)
    for c in range(cfg.n_channels):
        f = rng.uniform(0.3, 8.0, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        a = rng.uniform(0.2, 1.0, 3) * cfg.drift_uV / 2
        out[:, c] = rng.uniform(-cfg.offset_uV, cfg.offset_uV) + (a * np.sin(2 * np.pi * f * t[:, None] + ph)).sum(1)
    return out


def generate(cfg: GroundTruthConfig = GroundTruthConfig()) -> GroundTruth:
    """Render a recording with known spikes; deterministic for a given config (seeded)."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5197A1]))
    fs = cfg.sample_rate_hz
    n = int(round(cfg.duration_s * fs))
    c_n = cfg.n_channels
    noise = rng.standard_normal((n, c_n)) * cfg.noise_rms_uV
    inband = inband_noise_sd(noise, fs)
    snr = np.array([cfg.snr_values[c % len(cfg.snr_values)] for c in range(c_n)], np.float64)
    template, trough = spike_template(fs)
    margin = len(template) + 1

    # pulses: regular-ish train, each on one random electrode
    pulses = np.empty(0, np.int64)
    electrodes: list[tuple[int, ...]] = []
    if cfg.pulse_rate_hz > 0:
        period = int(fs / cfg.pulse_rate_hz)
        pulses = np.arange(period // 2, n - int(0.02 * fs), period, dtype=np.int64)
        pulses = pulses + rng.integers(0, max(1, period // 4), len(pulses))
        electrodes = [(int(rng.integers(0, c_n)),) for _ in pulses]
    dur = int(np.ceil(cfg.pulse_duration_us * 1e-6 * fs))

    times = _spike_times(rng, cfg, n, margin)
    # evoked spikes shortly after the pulse end, so "detected from 2 ms after a pulse" is exercised
    for p in pulses:
        for c in rng.choice(c_n, size=min(cfg.evoked_per_pulse, c_n), replace=False):
            t = p + dur + int(rng.uniform(*cfg.evoked_delay_ms) * 1e-3 * fs)
            times[c] = np.sort(np.append(times[c], t))
            isi_ok = np.diff(times[c]) >= int(np.ceil(cfg.min_isi_ms * 1e-3 * fs))
            times[c] = times[c][np.concatenate([[True], isi_ok])]

    signal = noise + _drift(rng, cfg, n)
    sample_list, chan_list, amp_list = [], [], []
    for c in range(c_n):
        amp = snr[c] * inband[c]
        for s in times[c]:
            signal[s - trough:s - trough + len(template), c] += amp * template
        sample_list.append(times[c])
        chan_list.append(np.full(len(times[c]), c, np.int32))
        amp_list.append(np.full(len(times[c]), -amp, np.float32))

    saturate = INT16_MAX * cfg.uV_per_bit
    if len(pulses):
        layout = ElectrodeLayout.grid(int(np.ceil(c_n / 8)), min(8, c_n), cfg.grid_pitch_um)
        pos = layout.positions_um[:c_n]
        wave = artifact_waveform(fs, cfg.pulse_duration_us, saturate, saturate).astype(np.float64)
        for p, el in zip(pulses, electrodes):
            d = np.sqrt(((pos - pos[list(el)][0]) ** 2).sum(-1))
            gain = np.minimum(1.0, ARTIFACT_DRIVE_uV / saturate / (1.0 + (d / ARTIFACT_SPREAD_UM) ** 2))
            m = min(len(wave), n - p)
            signal[p:p + m, :] += wave[:m, None] * gain[None, :]

    raw = np.clip(np.rint(signal / cfg.uV_per_bit), -32768, INT16_MAX).astype(np.int16)
    spikes = SpikeEvents(np.concatenate(sample_list), np.concatenate(chan_list), np.concatenate(amp_list))
    order = np.lexsort((spikes.channel, spikes.sample))
    return GroundTruth(cfg, raw, spikes.select(order), snr, inband, pulses, electrodes)


@dataclass(frozen=True)
class Score:
    """Detection score for one group of channels."""

    n_true: int
    n_detected: int
    hits: int

    @property
    def recall(self) -> float:
        return self.hits / self.n_true if self.n_true else 1.0

    @property
    def precision(self) -> float:
        return self.hits / self.n_detected if self.n_detected else 1.0


def score(detected: SpikeEvents, truth: GroundTruth, tolerance_ms: float = 0.8, start_s: float = 0.0,
          guard_after_pulse_ms: float = 2.0, guard_stimulated_ms: float | None = None) -> dict[float, Score]:
    """Recall and precision per SNR value, matching each true spike to at most one detection on the
    same channel within `tolerance_ms` (greedy by time).

    True spikes before `start_s` (the detector's settling time) or from a pulse's onset to
    `guard_after_pulse_ms` after its end are not expected; detections there are ignored when they
    match such a spike, and count as false positives otherwise (an artifact taken for a spike).
    On the pulse's own (saturated) electrodes the guard is `guard_stimulated_ms` when given.
    """
    fs = truth.config.sample_rate_hz
    tol = int(round(tolerance_ms * 1e-3 * fs))
    start = int(round(start_s * fs))
    guard = int(round(guard_after_pulse_ms * 1e-3 * fs))
    guard_stim = guard if guard_stimulated_ms is None else int(round(guard_stimulated_ms * 1e-3 * fs))
    ends = truth.pulse_end_sample

    def excluded(s: np.ndarray, channel: int) -> np.ndarray:
        out = s < start
        for a, b, el in zip(truth.pulse_sample, ends, truth.pulse_electrodes):
            out |= (s >= a) & (s < b + (guard_stim if channel in el else guard))
        return out

    results: dict[float, list[int]] = {}
    for c in range(truth.config.n_channels):
        t = truth.spikes.sample[truth.spikes.channel == c]
        d = np.sort(detected.sample[detected.channel == c])
        t_ex = excluded(t, c)
        used = np.zeros(len(d), bool)
        match = np.full(len(t), -1, np.int64)
        j0 = 0
        for i, s in enumerate(t):
            while j0 < len(d) and d[j0] < s - tol:
                j0 += 1
            best = -1
            j = j0
            while j < len(d) and d[j] <= s + tol:
                if not used[j] and (best < 0 or abs(d[j] - s) < abs(d[best] - s)):
                    best = j
                j += 1
            if best >= 0:
                used[best] = True
                match[i] = best
        hit_true = match >= 0
        # detections matched to an excluded true spike, and detections before `start`, are not scored
        matched_excluded = np.zeros(len(d), bool)
        matched_excluded[match[hit_true & t_ex]] = True
        d_scored = ~matched_excluded & (d >= start)
        n_true = int((~t_ex).sum())
        hits = int((hit_true & ~t_ex).sum())
        key = float(truth.snr[c])
        r = results.setdefault(key, [0, 0, 0])
        r[0] += n_true
        r[1] += int(d_scored.sum())
        r[2] += hits
    return {k: Score(*v) for k, v in sorted(results.items())}
