"""Signal path on several threads: the same spikes and state as on one, whatever the chunking and the layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from roundtrip import through_checkpoint

import numpy as np
import pytest

from rigctl.signal import SignalConfig, SignalPath
from rigctl.signal.path import channel_blocks
from rigctl.sim.synthetic import GroundTruthConfig, generate
from rigctl.types import Chunk

STATE_ARRAYS = ("z", "hist", "istate", "chi", "chf", "chb", "sd", "pulses")


@pytest.fixture(scope="module")
def truth():
    """40 channels (blocks 0-15 and 16-39 on two threads), spikes, bursts, and pulses whose artifacts saturate
    the stimulated electrode (the saturation blank is one of the cross-channel flags)."""
    return generate(GroundTruthConfig(n_channels=40, duration_s=2.0, snr_values=(6.0, 12.0), pulse_rate_hz=10.0,
                                      seed=7))


def run(truth, threads: int, chunk: int, switch_at: int | None = None, switch_to: int = 1) -> tuple[np.ndarray, dict]:
    """(spikes as [sample, channel, amplitude bits] rows, final state); at `switch_at` the state moves through a
    checkpoint into a path with `switch_to` threads."""
    cfg = truth.config

    def make(t: int) -> SignalPath:
        return SignalPath(cfg.n_channels, cfg.sample_rate_hz, cfg.uV_per_bit, SignalConfig(), threads=t,
                          parallel_min_channels=1, parallel_min_work=0)
    path = make(threads)
    assert path.threads == min(threads, len(channel_blocks(cfg.n_channels, threads)) - 1)
    rows, k = [], 0
    for a in range(0, len(truth.samples), chunk):
        b = min(len(truth.samples), a + chunk)
        while k < len(truth.pulse_sample) and truth.pulse_sample[k] < b:
            path.expect_pulse(int(truth.pulse_sample[k]), truth.pulse_electrodes[k], cfg.pulse_duration_us)
            k += 1
        if switch_at is not None and a >= switch_at:
            state = through_checkpoint(path.get_state())
            path = make(switch_to)
            path.set_state(state)
            switch_at = None
        s = path.process(Chunk(a, truth.samples[a:b], cfg.uV_per_bit, cfg.sample_rate_hz))
        rows.append(np.stack([s.sample, s.channel.astype(np.int64), s.amplitude_uV.view(np.int32).astype(np.int64)], 1))
    return np.concatenate(rows), path.get_state()


def assert_same(a: tuple[np.ndarray, dict], b: tuple[np.ndarray, dict]) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    for name in STATE_ARRAYS:
        np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 250, 50000])
def test_two_threads_give_one_threads_spikes_and_state(truth, chunk):
    ref = run(truth, 1, 50000)
    spikes = ref[0]
    assert len(spikes) > 100 and {0, 39} <= set(spikes[:, 1].tolist())  # spikes on both blocks' channels
    assert_same(run(truth, 2, chunk), ref)


def test_state_moves_between_thread_counts(truth):
    ref = run(truth, 1, 100)
    assert_same(run(truth, 2, 100, switch_at=21000, switch_to=1), ref)
    assert_same(run(truth, 1, 100, switch_at=21000, switch_to=2), ref)


def test_channel_blocks_are_aligned_and_cover_the_channels():
    np.testing.assert_array_equal(channel_blocks(6144, 2), [0, 3072, 6144])
    np.testing.assert_array_equal(channel_blocks(40, 2, 16), [0, 16, 40])
    np.testing.assert_array_equal(channel_blocks(10, 2, 16), [0, 10])  # too few channels for two blocks
    edges = channel_blocks(1000, 3, 16)
    assert edges[0] == 0 and edges[-1] == 1000 and np.all(np.diff(edges) > 0) and np.all(edges[:-1] % 16 == 0)


def test_threads_below_one_refused():
    with pytest.raises(ValueError):
        SignalPath(4, 25000.0, 0.195, threads=0)


_CHILD = """
import json, numba, numpy as np
from rigctl.signal import SignalPath
from rigctl.types import Chunk
raw = (np.random.default_rng(3).standard_normal((5000, 48)) * 40).astype(np.int16)
rng = np.random.default_rng(4)
for t0, c in zip(rng.integers(2100, 4900, 300), rng.integers(0, 48, 300)):  # spikes on every channel
    raw[t0:t0 + 4, c] -= np.array([200, 600, 400, 100], np.int16)
raw[2500:2510] = 32767  # a saturated stretch inside a pulse's blank
out = {}
for t in (1, 2):
    p = SignalPath(48, 20000.0, 0.195, threads=t, parallel_min_channels=1, parallel_min_work=0)
    p.expect_pulse(2500, [0], 400.0)
    s = [p.process(Chunk(a, raw[a:a + 37], 0.195, 20000.0)) for a in range(0, 5000, 37)]
    out[t] = [[int(x) for x in e.sample] + [int(x) for x in e.channel] + [float(x) for x in e.amplitude_uV] for e in s]
auto = SignalPath(4096, 20000.0, 0.195)
try:
    layer = numba.threading_layer()
except ValueError:  # no parallel kernel ran (one thread)
    layer = None
print(json.dumps({"layer": layer, "same": out[1] == out[2], "n": sum(map(len, out[1])),
                  "auto_threads": auto.threads}))
"""


@pytest.mark.parametrize("layer, num_threads", [("workqueue", "2"), ("default", "1")])
def test_threading_layer_and_thread_count_from_the_environment(layer, num_threads):
    """The workqueue layer (what numba has without TBB or OpenMP, as in CI) gives the same output; the
    default thread count follows NUMBA_NUM_THREADS."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer, "NUMBA_NUM_THREADS": num_threads}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["n"] > 100
    if layer == "workqueue":
        assert result["layer"] == "workqueue"
    assert result["auto_threads"] == int(num_threads)  # 4,096 channels: above the threshold, numba's whole pool
