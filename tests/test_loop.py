"""The loop end to end on a fake culture: store contents, determinism, export, and resume after SIGKILL."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory
from rigctl.export import csv_header, load_run_trials, write_trials_csv
from rigctl.protocol import BssSchedule, load_protocol
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.store import load_run_meta, read_jsonl, read_spikes, read_stims, read_trials

TESTS = Path(__file__).parent


def run(protocol, out, seed=1, rig="sim-events", **kw):
    opts = RunOptions(rig=rig, seed=seed, progress=False, **kw)
    return start_run(str(protocol), opts, out, rig_factory=fake_rig_factory)


def test_store_holds_what_it_claims(small_protocol, tmp_path):
    out = run(small_protocol, tmp_path / "r")
    meta = load_run_meta(out)
    assert meta["status"] == "complete" and meta["seed"] == 1 and meta["protocol"] == "small_bss"
    p = load_protocol(out / "protocol.yaml")
    assert p.sessions == 3 and p.trials_per_session == 20
    trials = read_trials(out)
    assert len(trials) == 60
    assert list(trials["session"]) == [k for k in (1, 2, 3) for _ in range(20)]
    assert list(trials["trial"]) == list(range(1, 21)) * 3
    sched = BssSchedule(p, 1, 25000.0)
    stims = read_stims(out)
    for i, t in enumerate(trials):
        planned = sched.trial(i)
        assert t["sample"] == planned.sample
        assert np.array_equal(t["sources"], planned.sources) and np.array_equal(t["stimuli"], planned.stimuli)
        # every stimulated electrode of the trial is in the stimulus log at the trial's sample
        logged = set(stims["electrode"][stims["sample"] == planned.sample].tolist())
        assert logged == set(planned.command.electrodes if planned.command else ())
    # counts equal the stored spikes inside each response window (spikes are kept around trials)
    spikes = read_spikes(out)
    w0, w1 = sched.ms_to_samples(10), sched.ms_to_samples(30)
    for t in trials[:15]:
        m = (spikes["sample"] >= t["sample"] + w0) & (spikes["sample"] < t["sample"] + w1)
        assert np.array_equal(np.bincount(spikes["channel"][m], minlength=64), t["counts"])
    # stimulated electrodes respond more than in trials where nothing was stimulated
    on = trials["stimuli"].sum(axis=1) > 0
    assert trials["counts"][on].sum(axis=1).mean() > 3 * trials["counts"][~on].sum(axis=1).mean()
    events = [e["event"] for e in read_jsonl(out / "events.jsonl")]
    assert events.count("session_end") == 3 and events[-1] == "run_end"
    assert (out / "checkpoint.npz").exists()


def test_stored_data_do_not_depend_on_chunk_size(small_protocol, tmp_path):
    """Chunks longer than the look-ahead still get their pulses in time, and the rest skip and the run's end
    wait until the last trial's spike window [-20, 60] ms is on disk (it outlasts the response window)."""
    runs = [run(small_protocol, tmp_path / f"c{c}", chunk_ms=c) for c in (10.0, 50.0, 300.0)]
    for reader in (read_trials, read_spikes, read_stims):
        ref = reader(runs[0]).tobytes()
        assert all(reader(r).tobytes() == ref for r in runs[1:]), reader.__name__
    trials, spikes = read_trials(runs[1]), read_spikes(runs[1])
    sched = BssSchedule(load_protocol(runs[1] / "protocol.yaml"), 1, 25000.0)
    for t in trials[trials["trial"] == 20]:  # the last trial of each session
        tail = (spikes["sample"] >= t["sample"] + sched.ms_to_samples(50)) & (
            spikes["sample"] < t["sample"] + sched.ms_to_samples(60))
        assert tail.any(), f"session {t['session']}: nothing stored 50-60 ms after its last trial"


def _runner(small_protocol, tmp_path, *, realtime=False, reactions=(), config=None):
    from rigctl.loop import LoopConfig, ProtocolRunner
    from rigctl.safety import GuardedStimulator
    from rigctl.store import SessionStore
    protocol = load_protocol(small_protocol).with_overrides(sessions=1, trials_per_session=3)
    rig = fake_rig_factory("sim-events", seed=0, realtime=realtime)
    meta = {"protocol": protocol.name, "seed": 0, "rig": "fake",
            "shapes": {"n_sources": 2, "n_stimuli": 32, "n_electrodes": 64}}
    store = SessionStore.create(tmp_path / "r", meta, {})
    config = config or LoopConfig(realtime=realtime, progress=False)
    return ProtocolRunner(protocol.make_protocol(0, 25000.0), rig.amplifier,
                          GuardedStimulator(rig.stimulator, rig.limits, 25000.0), store, [], None, config,
                          rig_state=rig.state, reactions=list(reactions))


def test_only_an_unpaced_open_loop_run_reads_batched_chunks(small_protocol, tmp_path):
    """Open loop with nothing reacting per chunk on a rig that can batch: 1-s chunks; a closed-loop rule, a
    rig paced to the wall clock or `batch_s` 0 keep the rig's own chunks (their latency is the point)."""
    from rigctl.loop import LoopConfig
    assert _runner(small_protocol, tmp_path / "a")._batch_length() == 25000
    assert _runner(small_protocol, tmp_path / "b", realtime=True)._batch_length() == 0
    assert _runner(small_protocol, tmp_path / "c", reactions=[lambda spikes, now: []])._batch_length() == 0
    unbatched = LoopConfig(progress=False, batch_s=0.0)
    assert _runner(small_protocol, tmp_path / "d", config=unbatched)._batch_length() == 0
    runner = _runner(small_protocol, tmp_path / "e")
    stats = runner.run()
    assert stats.chunks < 10 and runner.n_done == 3  # 3 trials at 1 s: a few 1-s chunks, not 50-ms ones


def test_same_seed_same_trials_other_seed_other_schedule(small_protocol, tmp_path):
    a = read_trials(run(small_protocol, tmp_path / "a", seed=4))
    b = read_trials(run(small_protocol, tmp_path / "b", seed=4))
    c = read_trials(run(small_protocol, tmp_path / "c", seed=5))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a["stimuli"], c["stimuli"])


def test_refuses_to_overwrite_a_run(small_protocol, tmp_path):
    from rigctl.errors import StoreError
    run(small_protocol, tmp_path / "r")
    with pytest.raises(StoreError, match="not empty"):
        run(small_protocol, tmp_path / "r")


def test_export_csv_header_and_rows(small_protocol, tmp_path):
    out = run(small_protocol, tmp_path / "r")
    buf = io.StringIO()
    assert write_trials_csv(out, buf) == 60
    lines = buf.getvalue().splitlines()
    assert lines[0] == csv_header(32, 64)
    assert lines[0].startswith("session,trial,sample,s1,s2,o1,") and lines[0].endswith(",r64")
    assert ",o32,r1," in lines[0]
    t = load_run_trials(out)
    row = [int(x) for x in lines[5].split(",")]
    assert row[:3] == [1, 5, int(t["sample"][4])]
    assert row[3:5] == t["s"][4].tolist() and row[5:37] == t["o"][4].tolist() and row[37:] == t["r"][4].tolist()


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from fakes import fake_rig_factory
from rigctl.session import RunOptions, start_run
start_run({protocol!r}, RunOptions(rig="sim-events", seed=2, progress=False, chunk_ms=2.0), {out!r},
          rig_factory=fake_rig_factory)
"""


@pytest.mark.parametrize("kill_after_trials", [1, 9, 23, 41])
def test_resume_after_sigkill_gives_the_uninterrupted_trials(small_protocol, tmp_path, kill_after_trials):
    reference = run(small_protocol, tmp_path / "ref", seed=2, chunk_ms=2.0)
    out = tmp_path / "killed"
    code = KILL_SCRIPT.format(tests=str(TESTS), protocol=str(small_protocol), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    trial_bytes = read_trials(reference).dtype.itemsize
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / "trials.bin"
        if path.exists() and path.stat().st_size >= kill_after_trials * trial_bytes:
            break
        time.sleep(0.002)  # polling the file size, not papering over a race
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_run_meta(out)["status"] == "running"
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert load_run_meta(out)["status"] == "complete"
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(reference).tobytes(), reader.__name__


def test_resume_refuses_a_complete_run(small_protocol, tmp_path):
    from rigctl.errors import StoreError
    from rigctl.report import write_report
    out = run(small_protocol, tmp_path / "r")
    write_report(out)
    with pytest.raises(StoreError, match="already complete"):
        resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)


HW_KILL_SCRIPT = KILL_SCRIPT.replace("fake_rig_factory", "fake_hardware_rig_factory")


def test_resume_on_hardware_continues_at_the_first_missing_trial(small_protocol, tmp_path):
    from fakes import fake_hardware_rig_factory
    out = tmp_path / "hw"
    code = HW_KILL_SCRIPT.format(tests=str(TESTS), protocol=str(small_protocol), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        path = out / "trials.bin"
        if path.exists() and path.stat().st_size > 0 and len(read_trials(out)) >= 27:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_trials(out)
    assert 27 <= len(before) < 60
    resume_run(out, RunOptions(progress=False), rig_factory=fake_hardware_rig_factory)
    after = read_trials(out)
    assert len(after) == 60 and after[:len(before)].tobytes() == before.tobytes()
    assert list(after["session"]) == [k for k in (1, 2, 3) for _ in range(20)]
    assert list(after["trial"]) == list(range(1, 21)) * 3
    sched = BssSchedule(load_protocol(out / "protocol.yaml"), 2, 25000.0)
    assert [int(s) for s in after["sample"]] == [sched.trial_sample(i) for i in range(60)]
    # the models were replayed: one end-of-session row per session, none duplicated
    ends = [r for r in read_jsonl(out / "model_sessions.jsonl") if r["phase"] == "end" and r["model"] == "selectivity"]
    assert sorted(r["session"] for r in ends) == [1, 2, 3]


class Collector:
    def __init__(self):
        self.messages = []

    def publish(self, topic, payload):
        self.messages.append((topic, payload))


def _realtime_runner(small_protocol, tmp_path, reactions):
    from rigctl.loop import LoopConfig, ProtocolRunner
    from rigctl.safety import GuardedStimulator
    from rigctl.store import SessionStore
    protocol = load_protocol(small_protocol).with_overrides(sessions=1, trials_per_session=3)
    rig = fake_rig_factory("sim-events", seed=0, realtime=True, chunk_ms=20.0)
    meta = {"protocol": protocol.name, "seed": 0, "rig": "fake",
            "shapes": {"n_sources": 2, "n_stimuli": 32, "n_electrodes": 64}}
    store = SessionStore.create(tmp_path / "rt", meta, {})
    publisher = Collector()
    runner = ProtocolRunner(protocol.make_protocol(0, 25000.0), rig.amplifier,
                       GuardedStimulator(rig.stimulator, rig.limits, 25000.0), store, [], None,
                       LoopConfig(realtime=True, progress=False), publisher=publisher, rig_state=rig.state,
                       reactions=reactions)
    return runner, store, publisher


def test_falling_behind_is_counted_stored_and_published(small_protocol, tmp_path):
    def slow_rule(spikes, now):  # a closed-loop rule that costs more than a 20-ms chunk of rig time
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.030:
            pass
        return []
    runner, store, publisher = _realtime_runner(small_protocol, tmp_path, [slow_rule])
    stats = runner.run()
    store.close()
    assert stats.overruns > 0 and stats.max_lag_s > 0.05
    stored = [e for e in read_jsonl(tmp_path / "rt" / "events.jsonl") if e["event"] == "overrun"]
    assert len(stored) == stats.overruns
    assert sum(1 for topic, _ in publisher.messages if topic == "overrun") == stats.overruns
