"""Pause, resume, mark and abort applied by the loop (rigctl.steering), deterministically: a scripted steering
queue issues each request at a given loop iteration, as the control thread would between two chunks."""

import numpy as np
import pytest

from fakes import fake_rig_factory
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.steering import RunAborted, Steering
from rigctl.store import load_run_meta, read_jsonl, read_spikes, read_stims, read_trials


class ScriptedSteering(Steering):
    """A real Steering whose requests are queued when the loop reaches given iterations."""

    def __init__(self, script: dict[int, list[tuple[str, str]]]):
        super().__init__()
        self.script = script
        self.iteration = 0

    def take(self):
        for kind, text in self.script.get(self.iteration, []):
            self.request(kind, "tester", text)
        self.iteration += 1
        return super().take()


class ScriptedControl:
    """Stands where rigctl.control.ControlServer stands in a session (no network: the script is the client)."""

    public_key = "x" * 40

    def __init__(self, script):
        self.steering = ScriptedSteering(script)

    def make_steering(self):
        return self.steering

    def start(self, steering, log_path):
        return "inproc://scripted"

    def stop(self):
        pass


def _run(protocol, out, control=None, chunk_ms=50.0):
    """The rig's own chunks with or without a control channel (the fake culture depends on chunking; an
    open-loop run without --chunk-ms or control would read 1-s chunks)."""
    opts = RunOptions(rig="sim-events", seed=3, progress=False, chunk_ms=chunk_ms)
    return start_run(str(protocol), opts, out, rig_factory=fake_rig_factory, control=control)


def _files(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("trials.bin", "stims.bin", "spikes.bin")}


@pytest.mark.parametrize("abort_at", [40, 200])
def test_abort_then_resume_equals_an_uninterrupted_run(small_protocol, tmp_path, abort_at):
    ref = _run(small_protocol, tmp_path / "ref")
    out = tmp_path / "aborted"
    with pytest.raises(RunAborted, match="resume"):
        _run(small_protocol, out, ScriptedControl({abort_at: [("abort", "")]}))
    meta = load_run_meta(out)
    assert meta["status"] == "interrupted" and meta["control_endpoint"] is None
    assert 0 < len(read_trials(out)) < 60
    assert [e["event"] for e in read_jsonl(out / "events.jsonl")][-1] == "abort"
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert load_run_meta(out)["status"] == "complete"
    assert _files(out) == _files(ref)  # byte for byte: trials, stimuli, kept spikes


def _pause_intervals(events):
    pauses = [e for e in events if e["event"] == "pause"]
    ends = [e for e in events if e["event"] == "pause_end"]
    assert len(pauses) == len(ends)
    return [(p["from_sample"], e["sample"]) for p, e in zip(pauses, ends)]


@pytest.mark.parametrize("chunk_ms", [None, 300.0])
def test_a_paused_run_keeps_every_trial_and_stimulates_nothing_inside_the_pause(small_protocol, tmp_path, chunk_ms):
    ref = _run(small_protocol, tmp_path / "ref", chunk_ms=chunk_ms)
    script = {30: [("pause", "")], 31: [("mark", "drug added")], 200: [("resume", "")],
              260: [("pause", "")], 261: [("pause", "")], 330: [("resume", "")]}
    if chunk_ms:
        script = {3: [("pause", "")], 4: [("mark", "drug added")], 9: [("resume", "")],
                  11: [("pause", "")], 12: [("pause", "")], 14: [("resume", "")]}
    out = _run(small_protocol, tmp_path / "paused", ScriptedControl(script), chunk_ms=chunk_ms)
    trials, ref_trials = read_trials(out), read_trials(ref)
    # every trial, in order, with the planned sources and stimuli; only the samples moved
    assert len(trials) == len(ref_trials) == 60
    for name in ("session", "trial", "sources", "stimuli"):
        assert np.array_equal(trials[name], ref_trials[name]), name
    shift = trials["sample"] - ref_trials["sample"]
    assert (np.diff(shift) >= 0).all() and shift[-1] > 0
    events = read_jsonl(out / "events.jsonl")
    intervals = _pause_intervals(events)
    assert len(intervals) == 2
    stims = read_stims(out)["sample"]
    for a, b in intervals:
        assert a < b
        assert not ((stims >= a) & (stims < b)).any()
        assert not ((trials["sample"] >= a) & (trials["sample"] < b)).any()
    # the total shift is what the resume events say, and every stimulus belongs to a stored trial
    ends = [e for e in events if e["event"] == "pause_end"]
    assert shift[-1] == ends[-1]["total_shift_samples"]
    assert set(stims.tolist()) <= set(trials["sample"].tolist())
    marks = [e for e in events if e["event"] == "mark"]
    assert [m["text"] for m in marks] == ["drug added"] and marks[0]["by"] == "tester"
    # recording went on during the pauses (spikes are kept around trials only; the clock moved through them)
    assert len(read_spikes(out)) > 0
    assert load_run_meta(out)["status"] == "complete"


def test_pause_abort_and_resume_replays_the_shifted_plan(small_protocol, tmp_path):
    """A run paused and resumed, then aborted, continues after `--resume` with the same shifted plan as the
    same pause without the abort."""
    script = {30: [("pause", "")], 120: [("resume", "")]}
    whole = _run(small_protocol, tmp_path / "whole", ScriptedControl(dict(script)))
    out = tmp_path / "cut"
    with pytest.raises(RunAborted):
        _run(small_protocol, out, ScriptedControl({**script, 300: [("abort", "")]}))
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert _files(out) == _files(whole)


def test_hardware_resume_rebuilds_the_shifted_plan_from_the_events(small_protocol, tmp_path):
    """On a rig without checkpoints (hardware) the plan shift comes back from the `pause_end` events."""
    from fakes import fake_hardware_rig_factory
    from rigctl.protocol import BssSchedule, load_protocol

    out = tmp_path / "hw"
    opts = RunOptions(rig="sim-events", seed=3, progress=False)
    with pytest.raises(RunAborted):
        start_run(str(small_protocol), opts, out, rig_factory=fake_hardware_rig_factory,
                  control=ScriptedControl({30: [("pause", "")], 120: [("resume", "")], 250: [("abort", "")]}))
    resume_run(out, RunOptions(progress=False), rig_factory=fake_hardware_rig_factory)
    trials = read_trials(out)
    assert list(trials["trial"]) == list(range(1, 21)) * 3
    end = next(e for e in read_jsonl(out / "events.jsonl") if e["event"] == "pause_end")
    first, shift = end["first_shifted_trial"] - 1, end["total_shift_samples"]
    sched = BssSchedule(load_protocol(out / "protocol.yaml"), 3, 25000.0)
    planned = np.array([sched.trial_sample(i) for i in range(60)])
    assert np.array_equal(trials["sample"], planned + np.where(np.arange(60) >= first, shift, 0))


def test_a_resumed_plan_is_safety_checked_as_the_pauses_moved_it(small_protocol):
    """The rate memory of a resumed run holds the pulses as delivered (shifted); the rest of the plan must be
    checked shifted too, or an unshifted trial can seem to fall on a delivered pulse."""
    from rigctl.errors import SafetyViolation
    from rigctl.protocol import load_protocol
    from rigctl.rigs import Rig
    from rigctl.safety import GuardedStimulator, SafetyLimits
    from rigctl.session import _check_plan
    from rigctl.steering import PlanShift

    plan = load_protocol(str(small_protocol)).make_protocol(5, 25000.0)
    t9, t10 = plan.trial(9, 0), plan.trial(10, 0)
    assert set(t9.command.electrodes) & set(t10.command.electrodes)
    isi = t10.sample - t9.sample
    shift = PlanShift([(9, isi)])  # trial 9 was delivered where trial 10 was planned
    limits = SafetyLimits(n_electrodes=64)
    rig = Rig(None, None, limits, {"kind": "test"})
    guard = GuardedStimulator(None, limits, 25000.0)
    guard.rates.last_sample = {e: t9.sample + isi for e in t9.command.electrodes}
    _check_plan(plan, guard, rig, first_trial=10, shift=shift)
    with pytest.raises(SafetyViolation, match="faster than"):
        _check_plan(plan, guard, rig, first_trial=10)
