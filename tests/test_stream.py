"""The stream (docs/stream.md): schema version 1 on every message, the topics of a run in order, the binary spike
topic at a bounded rate, rigctl.stream.subscribe, and CURVE for a stream that leaves the machine (a real handshake:
an allowed key receives, an unlisted one receives nothing)."""

import numpy as np
import pytest

from fakes import fake_rig_factory
from livehelp import make_keys
from rigctl import keys
from rigctl.session import RunOptions, start_run
from rigctl.store import read_trials
from rigctl.stream import SCHEMA_VERSION, Publisher, StreamError, subscribe


def _drain(sub, until_topic="run_end", timeout_s=30.0):
    msgs = []
    while True:
        m = sub.recv(timeout_s)
        assert m is not None, f"stream went quiet; got {[x.topic for x in msgs][-5:]}"
        msgs.append(m)
        if m.topic == until_topic:
            return msgs


def _connected(pub, sub):
    """PUB/SUB drops what is sent before the subscription arrives: publish a probe until the subscriber sees
    one (a real condition, bounded)."""
    for _ in range(200):
        pub.publish("probe", {})
        if sub.recv(0.05) is not None:
            return
    raise AssertionError("subscriber never connected")


def test_a_runs_stream_carries_every_trial_with_the_schema(small_protocol, tmp_path):
    pub = Publisher("tcp://127.0.0.1:*", spikes_per_s=50.0)
    sub = subscribe(pub.endpoint)
    try:
        _connected(pub, sub)
        out = start_run(str(small_protocol), RunOptions(seed=2, progress=False), tmp_path / "r", pub,
                        rig_factory=fake_rig_factory)
        msgs = _drain(sub)
    finally:
        sub.close()
        pub.close()
    assert all(m.header["v"] == SCHEMA_VERSION and m.header["topic"] == m.topic for m in msgs)
    seqs = [m.header["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    topics = [m.topic for m in msgs]
    assert topics[0] == "run_start" and topics[-1] == "run_end"
    start = msgs[0].header
    assert start["trials_total"] == 60 and start["n_electrodes"] == 64 and start["sample_rate_hz"] == 25000.0
    trials = [m.header for m in msgs if m.topic == "trial"]
    stored = read_trials(out)
    assert [t["index"] for t in trials] == list(range(60))
    assert [t["sample"] for t in trials] == stored["sample"].tolist()
    assert np.array_equal(np.array([t["counts"] for t in trials]), stored["counts"])
    assert np.array_equal(np.array([t["fields"]["sources"] for t in trials]), stored["sources"])
    assert topics.count("session_start") == topics.count("session_end") == 3
    assert {m.header["phase"] for m in msgs if m.topic == "model"} >= {"end"}
    spikes = [m for m in msgs if m.topic == "spikes"]
    assert spikes
    for m in spikes:
        sample, channel = m.spike_arrays()
        assert len(sample) == len(channel) == m.header["n"] and (np.diff(sample) >= 0).all()
        assert ((channel >= 0) & (channel < 64)).all()


def test_curve_stream_admits_only_the_allow_list(tmp_path):
    where = make_keys(tmp_path / "keys")
    server = keys.load_keypair("rig", where)
    pub = Publisher("tcp://127.0.0.1:*", curve=(server, keys.allowed_clients(where)))
    good = subscribe(pub.endpoint, server_key=server.public, client=keys.load_keypair("control", where))
    bad = subscribe(pub.endpoint, server_key=server.public, client=keys.load_keypair("intruder", where))
    plain = subscribe(pub.endpoint)
    try:
        _connected(pub, good)
        for i in range(20):
            pub.publish("trial", {"index": i})
        got = [good.recv(5.0) for _ in range(20)]
        assert all(m is not None for m in got)
        assert [m.header["index"] for m in got if m.topic == "trial"][-1] == 19
        # the refused subscribers never completed a handshake: nothing reached them
        assert bad.recv(0.5) is None and plain.recv(0.5) is None
    finally:
        for s in (good, bad, plain):
            s.close()
        pub.close()


def test_a_stream_needs_a_client_key_for_curve(tmp_path):
    with pytest.raises(StreamError, match="client's key pair"):
        subscribe("tcp://127.0.0.1:5999", server_key=b"x" * 40)


def test_raw_topic_carries_whole_chunks_as_recorded(small_protocol, tmp_path):
    from rigctl.store import RAW_INDEX_DTYPE, read_records

    pub = Publisher("tcp://127.0.0.1:*", raw_per_s=100.0)
    sub = subscribe(pub.endpoint, topics=("raw", "run_end", "probe"))
    try:
        _connected(pub, sub)
        out = start_run(str(small_protocol), RunOptions(rig="sim", seed=2, progress=False), tmp_path / "r", pub,
                        rig_factory=fake_rig_factory)
        msgs = [m for m in _drain(sub) if m.topic == "raw"]
    finally:
        sub.close()
        pub.close()
    assert msgs
    raw = np.fromfile(out / "raw.bin", "<i2").reshape(-1, 64)
    index = read_records(out / "raw_index.bin", RAW_INDEX_DTYPE)
    compared = 0
    for m in msgs:
        block = m.raw_samples()
        h = m.header
        assert block.shape == (h["n_samples"], h["n_channels"]) == (h["n_samples"], 64)
        for seg in index:  # where a published chunk lies inside a stored raw segment, the samples agree
            lo, hi = seg["first_sample"], seg["first_sample"] + seg["n_samples"]
            if lo <= h["first_sample"] and h["first_sample"] + h["n_samples"] <= hi:
                row = seg["offset"] // (2 * 64) + h["first_sample"] - lo
                assert np.array_equal(raw[row:row + h["n_samples"]], block)
                compared += 1
    assert compared > 0
