"""Signal path: ground-truth accuracy, chunk-size invariance, blanking, filter in chunks, state round trip."""

from __future__ import annotations

from roundtrip import through_checkpoint

import numpy as np
import pytest
from scipy.signal import sosfilt

from rigctl.signal import SignalConfig, SignalPath
from rigctl.sim.synthetic import GroundTruthConfig, generate, score
from rigctl.types import Chunk, SpikeEvents

FS = 25000.0


def run(truth, chunk: int, config: SignalConfig = SignalConfig(), roundtrip_at: int | None = None,
        pulses: bool = True) -> tuple[SpikeEvents, SignalPath]:
    cfg = truth.config
    path = SignalPath(cfg.n_channels, cfg.sample_rate_hz, cfg.uV_per_bit, config)
    out, k = [], 0
    for a in range(0, len(truth.samples), chunk):
        b = min(len(truth.samples), a + chunk)
        while pulses and k < len(truth.pulse_sample) and truth.pulse_sample[k] < b:
            path.expect_pulse(int(truth.pulse_sample[k]), truth.pulse_electrodes[k], cfg.pulse_duration_us)
            k += 1
        if roundtrip_at is not None and a >= roundtrip_at:
            state = through_checkpoint(path.get_state())
            path = SignalPath(cfg.n_channels, cfg.sample_rate_hz, cfg.uV_per_bit, config)
            path.set_state(state)
            roundtrip_at = None
        spikes = path.process(Chunk(a, truth.samples[a:b], cfg.uV_per_bit, cfg.sample_rate_hz))
        if len(spikes):
            assert np.all(np.diff(spikes.sample) >= 0)
            assert spikes.sample.max() < path.processed_until
            assert not out or not len(out[-1]) or spikes.sample.min() >= out[-1].sample.max()
        out.append(spikes)
    return SpikeEvents.concat(out), path


@pytest.fixture(scope="module")
def sweep():
    """SNR sweep with bursts, overlaps, drifts and pulses (2 per second)."""
    return generate(GroundTruthConfig(n_channels=8, duration_s=12.0, snr_values=(6.0, 8.0, 12.0, 25.0), seed=11))


@pytest.fixture(scope="module")
def short():
    return generate(GroundTruthConfig(n_channels=4, duration_s=1.2, snr_values=(6.0, 10.0), pulse_rate_hz=5.0,
                                      seed=5))


def test_ground_truth_recall_and_precision(sweep):
    spikes, path = run(sweep, 250)
    result = score(spikes, sweep, tolerance_ms=0.8, start_s=path.settle_samples / FS)
    for snr, s in result.items():
        assert s.n_true > 150
        need = 0.98 if snr >= 8 else 0.95
        assert s.recall >= need, (snr, s)
        assert s.precision >= need, (snr, s)


def test_ground_truth_at_another_rate_and_noise_level():
    truth = generate(GroundTruthConfig(n_channels=4, duration_s=10.0, sample_rate_hz=20000.0, noise_rms_uV=10.0,
                                       snr_values=(6.0, 8.0), seed=12))
    spikes, path = run(truth, 20)
    result = score(spikes, truth, start_s=path.settle_samples / 20000.0)
    assert result[6.0].recall >= 0.95 and result[6.0].precision >= 0.95
    assert result[8.0].recall >= 0.98 and result[8.0].precision >= 0.98


def test_amplitude_estimates_the_trough(sweep):
    spikes, _ = run(sweep, 1000)
    c = int(np.flatnonzero(sweep.snr == 25.0)[0])
    true_uV = 25.0 * sweep.inband_noise_uV[c]
    est = -spikes.amplitude_uV[spikes.channel == c]
    assert abs(np.median(est) - true_uV) < 0.1 * true_uV


def test_plain_threshold_would_not_pass(sweep):
    """The data are hard enough: a causal band-pass + 5-SD threshold misses many SNR-6 spikes."""
    from scipy.signal import butter
    x = sweep.samples.astype(np.float64) * sweep.config.uV_per_bit
    xf = -sosfilt(butter(2, (300, 6000), "bandpass", fs=FS, output="sos"), x, axis=0)
    c = 0  # SNR 6
    sd = np.median(np.abs(xf[:, c])) / 0.6745
    t = sweep.spikes.sample[sweep.spikes.channel == c]
    found = np.mean([xf[s - 3:s + 4, c].max() > 5 * sd for s in t])
    assert found < 0.8


@pytest.mark.parametrize("chunk", [1, 7, 25, 1000, 25000])
def test_same_spikes_whatever_the_chunk_size(short, chunk):
    ref, ref_path = run(short, 30000)
    spikes, path = run(short, chunk)
    assert len(ref) > 20
    np.testing.assert_array_equal(spikes.sample, ref.sample)
    np.testing.assert_array_equal(spikes.channel, ref.channel)
    np.testing.assert_array_equal(spikes.amplitude_uV, ref.amplitude_uV)
    np.testing.assert_array_equal(path.noise_uV, ref_path.noise_uV)
    assert path.processed_until == ref_path.processed_until == len(short.samples) - path.lookahead_samples


def test_state_round_trip_resumes_exactly(short):
    ref, _ = run(short, 25)
    for at in (5000, 14000):  # once between blocks, once right after a pulse
        spikes, _ = run(short, 25, roundtrip_at=at)
        np.testing.assert_array_equal(spikes.sample, ref.sample)
        np.testing.assert_array_equal(spikes.amplitude_uV, ref.amplitude_uV)


def test_filter_in_chunks_equals_filter_in_one_block():
    """The band-pass kernel run over chunks equals scipy's sosfilt over the whole block (after the
    settled start), so no chunk boundary leaves a trace."""
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((3000, 3)) * 200 + 1000).astype(np.int16)
    outs = []
    for chunk in (1, 13, 3000):
        path = SignalPath(3, FS, 0.195)
        rows = []
        for a in range(0, len(raw), chunk):
            path.process(Chunk(a, raw[a:a + chunk], 0.195, FS))
            h = path._taps - 1
            rows.append(path._work[h:h + min(chunk, len(raw) - a)].copy())
        outs.append(np.concatenate(rows))
    x = raw.astype(np.float64) * 0.195
    from scipy.signal import sosfilt_zi
    sos = path._sos.astype(np.float64)
    ref = sosfilt(sos, x, axis=0, zi=sosfilt_zi(sos)[:, :, None] * x[0][None, None, :])[0]
    for out in outs:
        np.testing.assert_array_equal(out, outs[0])
        np.testing.assert_allclose(out, ref, atol=1e-3 * np.abs(ref).max())


def test_no_artifact_is_counted_and_spikes_2ms_after_a_pulse_are_found():
    """Many pulses, no spikes except evoked ones 2-4 ms after each pulse end: every detection near a
    pulse must be one of them; they are found from 2 ms on (3 ms on the saturated stimulated electrode)."""
    truth = generate(GroundTruthConfig(n_channels=8, duration_s=6.0, snr_values=(8.0, 12.0), rate_hz=0.0,
                                       burst_rate_hz=0.0, overlap_rate_hz=0.0, pulse_rate_hz=20.0,
                                       evoked_per_pulse=3, evoked_delay_ms=(2.0, 4.0), seed=2))
    spikes, path = run(truth, 100)
    result = score(spikes, truth, start_s=path.settle_samples / FS, guard_after_pulse_ms=2.0,
                   guard_stimulated_ms=3.0)
    total = sum(s.n_true for s in result.values())
    assert total > 250
    for s in result.values():
        assert s.recall >= 0.98 and s.precision >= 0.98
    # detections within 10 ms of a pulse's end are true spikes: at most one noise crossing is allowed
    # in these 120 pulses x 8 channels (the artifact residual alone would give one per pulse or more)
    ends = truth.pulse_end_sample
    k = np.maximum(np.searchsorted(ends, spikes.sample) - 1, 0)
    near = (spikes.sample - ends[k] < 10e-3 * FS) & (spikes.sample >= truth.pulse_sample[k])
    unmatched = [np.min(np.abs(truth.spikes.sample[truth.spikes.channel == c] - s)) > 20
                 for s, c in zip(spikes.sample[near], spikes.channel[near])]
    assert near.sum() > 250 and sum(unmatched) <= 1
    # the spikes right at 2.0-2.5 ms after a pulse end are found too (on the saturated stimulated
    # electrode, which stays blank 1.5 ms longer: from 3.0 ms)
    ends = truth.pulse_end_sample
    t = truth.spikes
    k = np.maximum(np.searchsorted(ends, t.sample) - 1, 0)
    stimulated = np.array([c in truth.pulse_electrodes[i] for c, i in zip(t.channel, k)])
    after_ms = (t.sample - ends[k]) / FS * 1e3
    start_ms = np.where(stimulated, 3.0, 2.0)
    early = (after_ms >= start_ms) & (after_ms < start_ms + 0.5) & (t.sample > path.settle_samples)
    assert early.sum() > 10 and (early & stimulated).sum() > 3
    found = [np.any(np.abs(spikes.sample[spikes.channel == c] - s) <= 20) for s, c in zip(t.sample[early], t.channel[early])]
    assert np.mean(found) >= 0.95


def test_without_blanking_the_artifacts_would_be_counted():
    truth = generate(GroundTruthConfig(n_channels=4, duration_s=2.0, snr_values=(10.0,), rate_hz=0.0,
                                       burst_rate_hz=0.0, overlap_rate_hz=0.0, pulse_rate_hz=20.0,
                                       evoked_per_pulse=0, seed=3))
    spikes, path = run(truth, 100, pulses=False)
    assert len(spikes) > 20


def test_state_rejects_other_configuration(short):
    _, path = run(short, 1000)
    other = SignalPath(4, FS, 0.195, SignalConfig(threshold_sd=4.0))
    with pytest.raises(ValueError):
        other.set_state(path.get_state())


def test_chunks_must_be_contiguous():
    path = SignalPath(2, FS, 0.195)
    path.process(Chunk(0, np.zeros((10, 2), np.int16), 0.195, FS))
    with pytest.raises(ValueError):
        path.process(Chunk(11, np.zeros((10, 2), np.int16), 0.195, FS))
