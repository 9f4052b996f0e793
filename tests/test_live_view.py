"""The dashboard's data (rigctl.live_view): the same figures whether read from a run directory as it grows or
from the run's stream, including the pause and the mark of a steered run."""

import numpy as np

from fakes import fake_rig_factory
from rigctl.live_view import LiveState, RunDirFeed, StreamFeed
from rigctl.session import RunOptions, start_run
from rigctl.stream import Publisher, subscribe
from test_steering import ScriptedControl
from test_stream import _connected, _drain


def test_run_dir_and_stream_give_the_same_figures(small_protocol, tmp_path):
    pub = Publisher("tcp://127.0.0.1:*", spikes_per_s=20.0)
    sub = subscribe(pub.endpoint)
    try:
        _connected(pub, sub)
        control = ScriptedControl({20: [("pause", "")], 21: [("mark", "look")], 60: [("resume", "")]})
        out = start_run(str(small_protocol), RunOptions(seed=4, progress=False), tmp_path / "r", pub,
                        rig_factory=fake_rig_factory, control=control)
        msgs = _drain(sub)
    finally:
        sub.close()
        pub.close()

    class Replay:  # the drained messages, served as a subscription would
        def __init__(self, msgs):
            self.msgs = [m for m in msgs if m.topic != "probe"]

        def recv(self, timeout_s=None):
            return self.msgs.pop(0) if self.msgs else None

    from_stream, from_dir = LiveState(), LiveState()
    StreamFeed(Replay(msgs)).poll(from_stream)
    feed = RunDirFeed(out)
    feed.start(from_dir)
    feed.poll(from_dir)
    for state in (from_stream, from_dir):
        state.update_separation(force=True)
    assert from_dir.trials_done == from_stream.trials_done == from_dir.trials_total == 60
    assert np.array_equal(from_dir.electrode_counts, from_stream.electrode_counts)
    assert from_dir.evoked_by_session() == from_stream.evoked_by_session()
    assert from_dir.separation.keys() == from_stream.separation.keys() == {1, 2, 3}
    assert np.allclose(list(from_dir.separation.values()), list(from_stream.separation.values()))
    assert list(from_dir.notes) == list(from_stream.notes)
    assert any("paused by tester" in n for n in from_dir.notes) and any("look" in n for n in from_dir.notes)
    assert from_dir.state == from_stream.state == "complete"
    assert "trials 60/60 (100 %)" in from_dir.progress_text()
