"""The simulated rig: chunking-independent voltage, one network for both modes, exact checkpoints,
and a voltage path that finds the spikes and none of the artifacts."""

import numpy as np
import pytest

from fakes import fake_sim_rig
from rigctl.protocol import BssSchedule, load_protocol
from rigctl.signal import SignalConfig, SignalPath
from rigctl.sim.rig import SimRig
from rigctl.types import BiphasicPulse, StimCommand

FS = 25000.0
PULSE = BiphasicPulse.symmetric(1000.0, 200.0, unit="mV")


def drive(rig, until, commands=()):
    """Read chunks until `until`, scheduling `commands` 0.2 s ahead; returns the concatenated chunks."""
    pending = sorted(commands, key=lambda c: c.sample)
    out = []
    rig.start()
    while rig.now_sample < until:
        while pending and pending[0].sample < rig.now_sample + int(0.2 * FS):
            rig.schedule(pending.pop(0))
        out.append(rig.read())
    return out


def stack(chunks):
    return np.concatenate([c.samples for c in chunks])


@pytest.mark.parametrize("chunk_ms", [0.04, 3.0, 50.0])
def test_voltage_is_the_same_whatever_the_chunk_size(chunk_ms):
    cmds = [StimCommand(int(0.3 * FS), (9, 11), PULSE), StimCommand(int(0.7 * FS), (36,), PULSE)]
    ref = stack(drive(SimRig(seed=7, mode="voltage", chunk_ms=10.0), int(FS), cmds))
    got = stack(drive(SimRig(seed=7, mode="voltage", chunk_ms=chunk_ms), int(FS), cmds))
    n = min(len(ref), len(got))
    assert n >= FS and np.array_equal(ref[:n], got[:n])


def test_both_modes_run_one_network():
    cmds = [StimCommand(int(s * FS), (0, 2, 9), PULSE) for s in (0.2, 0.6, 1.0)]
    v = SimRig(seed=3, mode="voltage")
    e = SimRig(seed=3, mode="events")
    drive(v, int(1.2 * FS), cmds)
    drive(e, int(1.2 * FS), cmds)
    sv, se = v.culture.get_state(), e.culture.get_state()
    assert sv.keys() == se.keys()
    for key in sv:
        a, b = sv[key], se[key]
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), key
        else:
            assert a == b, key


def test_checkpoint_restores_the_exact_future():
    cmds = [StimCommand(int(s * FS), (9,), PULSE) for s in (0.25, 0.5, 0.75)]
    a = SimRig(seed=5, mode="voltage")
    drive(a, int(0.4 * FS), cmds[:2])
    state = a.get_state()
    rest_a = stack(drive(a, int(0.9 * FS), cmds[2:]))
    b = SimRig(seed=5, mode="voltage")
    b.set_state(state)
    rest_b = stack(drive(b, int(0.9 * FS), cmds[2:]))
    assert np.array_equal(rest_a, rest_b)


def test_a_pulse_in_the_past_is_refused():
    from rigctl.errors import DeviceError
    rig = fake_sim_rig(0, "events")
    drive(rig, int(0.1 * FS))
    with pytest.raises(DeviceError, match="in the past"):
        rig.schedule(StimCommand(10, (0,), PULSE))


def test_voltage_path_counts_match_events_and_ignore_artifacts():
    """Through the real signal path, spikes in the response windows of the fake culture's rig are found
    (the fake culture's electrode events are -60 uV = 10 x noise: all detectable), and the blanked
    artifact of every pulse yields no spike in the first ms."""
    protocol = load_protocol("isomura2023_bss")
    sched = BssSchedule(protocol, 1, FS)
    cmds = [t.command for t in (sched.trial(i) for i in range(4)) if t.command]
    rig = fake_sim_rig(1, "voltage", chunk_ms=5.0)
    events_rig = fake_sim_rig(1, "events", chunk_ms=5.0)
    path = SignalPath(64, FS, rig.uV_per_bit, SignalConfig())
    found = []
    pending = list(cmds)
    rig.start()
    events_rig.start()
    truth = []
    while rig.now_sample < int(4.5 * FS):
        while pending and pending[0].sample < rig.now_sample + int(0.2 * FS):
            c = pending.pop(0)
            rig.schedule(c)
            events_rig.schedule(c)
            path.expect_pulse(c.sample, c.electrodes, c.pulse.duration_us)
        found.append(path.process(rig.read()))
        truth.append(events_rig.read().spikes)
    det = np.concatenate([f.sample for f in found])
    det_ch = np.concatenate([f.channel for f in found])
    true = np.concatenate([t.sample for t in truth])
    true_ch = np.concatenate([t.channel for t in truth])
    for c in cmds:
        near = (det >= c.sample) & (det < c.sample + int(0.001 * FS))
        assert not near.any(), "a spike was detected inside the artifact"
        w = (det >= c.sample + 250) & (det < c.sample + 750)
        wt = (true >= c.sample + 250) & (true < c.sample + 750)
        counts = np.bincount(det_ch[w], minlength=64)
        counts_true = np.bincount(true_ch[wt], minlength=64)
        # overlapping spikes on one electrode within the refractory period merge; allow that, no more
        assert counts.sum() >= 0.85 * counts_true.sum()
        assert counts.sum() <= counts_true.sum()


def _noise_reference(renderer, first, n):
    """The renderer's noise as its docstring defines it, sample by sample (float32 operations)."""
    t = first + np.arange(n)[:, None]
    b1 = renderer._bank1[(t + renderer._off1[None, :]) % len(renderer._bank1)]
    b2 = renderer._bank2[(t + renderer._off2[None, :]) % len(renderer._bank2)]
    return (b1 + b2) * np.float32(renderer.noise_rms_uV / np.sqrt(2.0))


@pytest.mark.parametrize("first, n", [
    (0, 250),                 # inside the first noise block
    (2048 - 100, 300),        # across a block boundary (blocks of 2,048 samples at 64 channels)
    (3 * 2048, 2048),         # one whole block
    (1_048_573 - 1000, 5000), # longer than a block (rendered directly), across the wrap of the first bank
    (2 * 2048 - 10, 1023),    # just under half a block: from the cache, across a block boundary
    (5 * 2048 - 10, 1024),    # half a block: rendered directly
    (786_431 - 7, 30),        # across the wrap of the second bank, from the block cache
])
def test_noise_is_the_bank_sum_of_its_absolute_sample(first, n):
    """The block cache and the channel-by-channel runs give the bank sums of the absolute sample index,
    bit for bit, wherever a chunk starts and however long it is (a wrong wrap or offset changes bytes)."""
    from rigctl.sim.render import VoltageRenderer
    r = VoltageRenderer(64, FS, seed=3)
    r.render(first + 40_000, 10, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), [])
    got = r.render(first, n, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), [])
    expected = np.clip(np.rint(_noise_reference(r, first, n) * np.float32(1.0 / r.uV_per_bit)), -32768, 32767)
    assert np.array_equal(got, expected.astype(np.int16))
    out = np.empty((n, 64), np.float32)
    r._noise(out, first)
    assert np.array_equal(out, _noise_reference(r, first, n))


def test_open_rig_reads_50_ms_chunks_unless_paced_or_told():
    """`--rig sim` reads 50-ms chunks (as sim-events) unless --realtime (10 ms) or --chunk-ms is given."""
    from rigctl.rigs import open_rig
    seen = []

    def backend(**kw):
        seen.append((kw["mode"], kw["realtime"], kw["chunk_ms"]))
        return fake_sim_rig(0, kw["mode"], kw["chunk_ms"])

    for spec, realtime, chunk_ms in (("sim", False, None), ("sim", True, None), ("sim", False, 10.0),
                                     ("sim-events", False, None)):
        open_rig(spec, seed=0, realtime=realtime, chunk_ms=chunk_ms, backend_factory=backend).close()
    assert seen == [("voltage", False, 50.0), ("voltage", True, None), ("voltage", False, 10.0),
                    ("events", False, None)]
    assert SimRig(mode="voltage").chunk_samples == 250 and SimRig(mode="events").chunk_samples == 1250
