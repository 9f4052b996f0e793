"""The control channel as a user drives it: a real `rigctl run --control` process on the simulated rig (wall-clock
paced), `rigctl control` commands over loopback with a real CURVE handshake (zmq.auth), the stream read with
rigctl.stream.subscribe, then `rigctl run --resume` to the end."""

import json

import numpy as np

from livehelp import TEN_SESSIONS, LiveRun, listening_tcp, make_keys
from runcli import rigctl
from rigctl.store import load_run_meta, read_jsonl, read_stims, read_trials
from rigctl.stream import subscribe


def _wait_topic(sub, topic, pred=lambda h: True, timeout_s=60.0):
    """The next stream message of `topic` whose header satisfies `pred` (each recv waits at most timeout_s)."""
    while True:
        msg = sub.recv(timeout_s)
        assert msg is not None, f"no stream message within {timeout_s} s while waiting for {topic}"
        if msg.topic == topic and pred(msg.header):
            return msg.header


def test_ten_session_run_steered_from_rigctl_control_then_resumed(tmp_path):
    keys = make_keys(tmp_path / "keys")
    proto = tmp_path / "ten.yaml"
    proto.write_text(TEN_SESSIONS)
    out = tmp_path / "run"
    k = ("--keys", str(keys))
    run = LiveRun("run", str(proto), "--rig", "sim-events", "--realtime", "--out", str(out), "--no-report",
                  "--no-progress", "--control", *k, "--stream", "tcp://127.0.0.1:*")
    try:
        stream_endpoint = run.wait_for("stream: ").split()[1]
        endpoint = run.wait_for("control: ").split()[1]
        assert load_run_meta(out)["control_endpoint"] == endpoint
        sub = subscribe(stream_endpoint)
        # nothing listens beyond loopback: the control endpoint and the stream, both on 127.0.0.1
        sockets = listening_tcp(run.proc.pid)
        assert sorted(p for _, p in sockets) == sorted(int(e.rsplit(":", 1)[1]) for e in (endpoint, stream_endpoint))
        assert {a for a, _ in sockets} == {"127.0.0.1"}

        status = json.loads(rigctl("control", str(out), "status", *k).stdout)
        assert status["state"] == "running" and status["trials_total"] == 100

        # a key that is not in the allow-list gets nothing: no status, no command; the run goes on
        for cmd in ("status", "abort"):
            refused = rigctl("control", str(out), cmd, *k, "--key", "intruder", "--timeout-s", "2", check=False)
            assert refused.returncode == 2 and "no answer" in refused.stderr and "Traceback" not in refused.stderr
        # so is one that presents the right name with another server key (the handshake fails)
        wrong_server = rigctl("control", endpoint, "status", *k, "--server-key", "other", "--timeout-s", "2",
                              check=False)
        assert wrong_server.returncode == 2 and "no answer" in wrong_server.stderr

        _wait_topic(sub, "trial", lambda h: h["index"] >= 15)
        assert "pause accepted" in rigctl("control", str(out), "pause", *k).stdout
        pause = _wait_topic(sub, "pause")
        # one controller at a time: another allowed key is told who holds control
        held = rigctl("control", str(out), "resume", *k, "--key", "other", check=False)
        assert held.returncode == 2 and "held by 'control'" in held.stderr
        assert json.loads(rigctl("control", str(out), "status", *k, "--key", "other").stdout)["state"] == "paused"
        rigctl("control", str(out), "mark", "drug", "added", *k)
        assert _wait_topic(sub, "mark")["text"] == "drug added"
        rigctl("control", str(out), "resume", *k)
        _wait_topic(sub, "pause_end")
        _wait_topic(sub, "trial", lambda h: h["index"] >= 40)
        rigctl("control", str(out), "abort", *k)
        code, err = run.finish()
        sub.close()
    finally:
        run.kill()
    assert code == 2 and "aborted from the control channel by control" in err and "Traceback" not in err
    meta = load_run_meta(out)
    assert meta["status"] == "interrupted" and meta["control_endpoint"] is None
    assert 40 <= len(read_trials(out)) < 100

    rigctl("run", "--resume", str(out), "--no-report", "--no-progress")
    assert load_run_meta(out)["status"] == "complete"
    trials = read_trials(out)
    assert list(trials["session"]) == [s for s in range(1, 11) for _ in range(10)]
    assert list(trials["trial"]) == list(range(1, 11)) * 10
    events = read_jsonl(out / "events.jsonl")
    kinds = [e["event"] for e in events]
    for kind in ("pause", "mark", "pause_end", "abort", "resume", "run_end"):
        assert kind in kinds, kind
    a = next(e for e in events if e["event"] == "pause")["from_sample"]
    b = next(e for e in events if e["event"] == "pause_end")["sample"]
    assert a == pause["from_sample"] and a < b
    stims = read_stims(out)["sample"]
    assert not ((stims >= a) & (stims < b)).any()
    assert np.all(np.diff(trials["sample"]) > 0)
    log = read_jsonl(out / "control.jsonl")
    commands = [(e["by"], e["command"], e["ok"]) for e in log if e["event"] == "command"]
    assert commands == [("control", "pause", True), ("other", "resume", False), ("control", "mark", True),
                        ("control", "resume", True), ("control", "abort", True)]
    assert sum(e["event"] == "refused_key" for e in log) >= 2
