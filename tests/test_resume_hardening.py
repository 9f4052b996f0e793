"""Resume and the store under kills at exact points: consistent checkpoints for any chunk size, an
atomic run directory, checkpoints that cannot run code, and a report phase that resume completes.

A kill is `os._exit` inside a child process at a chosen chunk: like SIGKILL it flushes nothing, and
unlike a timed signal it lands at the same point every run.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory
from rigctl.errors import StoreError
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.store import load_run_meta, read_jsonl, read_spikes, read_stims, read_trials

TESTS = Path(__file__).parent

FAKE_RIG = "from fakes import fake_rig_factory as base_factory"
REAL_RIG = "from rigctl.rigs import open_rig as base_factory"

KILL_AT_CHUNK = """
import os, sys
sys.path.insert(0, {tests!r})
{base}
from rigctl.session import RunOptions, {entry}

def factory(spec, **kw):
    rig = base_factory(spec, **kw)
    amp, read, count = rig.amplifier, rig.amplifier.read, [0]
    def dying_read():
        count[0] += 1
        if count[0] == {kill_chunk}:
            os._exit(137)  # as SIGKILL: no flush, no handler
        return read()
    amp.read = dying_read
    return rig

{call}
"""


def _child(entry: str, call: str, kill_chunk: int, base: str = FAKE_RIG) -> int:
    code = KILL_AT_CHUNK.format(tests=str(TESTS), base=base, entry=entry, call=call, kill_chunk=kill_chunk)
    return subprocess.run([sys.executable, "-c", code], timeout=300).returncode


def start_killed(protocol: Path, out: Path, chunk_ms: float, kill_chunk: int) -> int:
    call = (f"start_run({str(protocol)!r}, RunOptions(seed=2, progress=False, chunk_ms={chunk_ms}), "
            f"{str(out)!r}, rig_factory=factory)")
    return _child("start_run", call, kill_chunk)


def resume_killed(out: Path, kill_chunk: int) -> int:
    call = f"resume_run({str(out)!r}, RunOptions(progress=False), rig_factory=factory)"
    return _child("resume_run", call, kill_chunk)


def reference(protocol: Path, out: Path, chunk_ms: float) -> Path:
    return start_run(str(protocol), RunOptions(seed=2, progress=False, chunk_ms=chunk_ms), out,
                     rig_factory=fake_rig_factory)


def assert_same_run(out: Path, ref: Path) -> None:
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__
    trials = read_trials(out)
    assert len(trials) == 60 and len({(int(s), int(t)) for s, t in zip(trials["session"], trials["trial"])}) == 60


# chunk sizes from 1 ms to 5 s (the small protocol's trials are 0.2 s apart, so 0.5-5 s chunks hold several
# trials each and a checkpoint falls between trials that finish in one chunk)
@pytest.mark.parametrize("chunk_ms, kill_chunks", [
    (1.0, (4000, 3000)), (50.0, (90, 60)), (500.0, (8, 6)), (2500.0, (3, 2)), (5000.0, (2, 2)),
])
def test_a_kill_at_any_chunk_size_loses_and_duplicates_no_trial(small_protocol, tmp_path, chunk_ms, kill_chunks):
    ref = reference(small_protocol, tmp_path / "ref", chunk_ms)
    out = tmp_path / "killed"
    assert start_killed(small_protocol, out, chunk_ms, kill_chunks[0]) == 137
    for kill_chunk in kill_chunks[1:]:  # the resume itself is killed too
        assert resume_killed(out, kill_chunk) == 137
    assert load_run_meta(out)["status"] == "running"
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert load_run_meta(out)["status"] == "complete"
    assert_same_run(out, ref)


def test_a_run_killed_before_its_first_trial_resumes_as_a_fresh_start(small_protocol, tmp_path):
    ref = reference(small_protocol, tmp_path / "ref", 50.0)
    out = tmp_path / "early"
    assert start_killed(small_protocol, out, 50.0, 1) == 137
    assert len(read_trials(out)) == 0
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert_same_run(out, ref)


def test_the_run_directory_appears_whole_or_not_at_all(small_protocol, tmp_path, monkeypatch):
    import rigctl.store as store

    out = tmp_path / "r"

    def killed_rename(src, dst):  # the process dies after every file is written, before the rename
        raise OSError(5, "killed")

    monkeypatch.setattr(store.os, "rename", killed_rename)
    with pytest.raises(StoreError, match="cannot create the run directory"):
        reference(small_protocol, out, 50.0)
    assert not out.exists() and list(tmp_path.iterdir()) == [small_protocol]
    monkeypatch.undo()
    reference(small_protocol, out, 50.0)  # the same --out is free to use
    assert {"run.json", "protocol.yaml", "trials.bin", "events.jsonl"} <= {p.name for p in out.iterdir()}


def test_a_directory_without_its_protocol_is_named_as_incomplete(small_protocol, tmp_path):
    out = reference(small_protocol, tmp_path / "r", 50.0)
    (out / "protocol.yaml").unlink()
    meta = load_run_meta(out)
    meta["status"] = "running"
    (out / "run.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="not a complete run directory"):
        resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)


def test_run_end_is_on_disk_before_the_status_says_complete(small_protocol, tmp_path, monkeypatch):
    from rigctl.store import SessionStore

    seen = []
    original = SessionStore.update_meta

    def update_meta(self, **fields):
        if fields.get("status") == "complete":  # read what a reader would find after a kill right here
            seen.append([e["event"] for e in read_jsonl(self.path / "events.jsonl")])
        original(self, **fields)

    monkeypatch.setattr(SessionStore, "update_meta", update_meta)
    reference(small_protocol, tmp_path / "r", 50.0)
    assert seen and seen[0][-1] == "run_end"


MARKER_CODE = "__import__('pathlib').Path({marker!r}).write_text('ran')"


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (MARKER_CODE.format(marker=self.marker),))


def _interrupted_run(protocol: Path, out: Path) -> Path:
    assert start_killed(protocol, out, 50.0, 150) == 137
    return out


def test_a_pickle_checkpoint_is_never_loaded(small_protocol, tmp_path):
    out = _interrupted_run(small_protocol, tmp_path / "r")
    marker = tmp_path / "marker"
    (out / "checkpoint.npz").unlink()
    (out / "checkpoint.pkl").write_bytes(pickle.dumps(Evil(str(marker))))
    with pytest.raises(StoreError, match="old pickle format"):
        resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert not marker.exists()


def test_a_crafted_checkpoint_cannot_run_code_or_name_a_class(small_protocol, tmp_path):
    out = _interrupted_run(small_protocol, tmp_path / "r")
    marker = tmp_path / "marker"
    with open(out / "checkpoint.npz", "wb") as f:  # an object array: numpy would unpickle it
        np.save(f, np.array([Evil(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(StoreError, match="corrupt checkpoint"):
        resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    tree = {"format_version": 2, "payload": {"__o": "subprocess.Popen", "attrs": {"__d": []}}}
    np.savez(out / "checkpoint.npz", __tree__=np.frombuffer(json.dumps(tree).encode(), np.uint8))
    with pytest.raises(StoreError, match="not checkpointable"):
        resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert not marker.exists()


def test_checkpoints_round_trip_every_kind_of_state(tmp_path):
    from rigctl.checkpoint import read_checkpoint_file, write_checkpoint_file

    state = {"ints": {3: 7, -1: 2**70}, "tuple": (1, (2.5, "x")), "nan": float("nan"), "none": None,
             "array": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.int64(5), "flag": True,
             ("a", 1): [np.uint8(3), []]}
    back = read_checkpoint_file(write_checkpoint_file(tmp_path, state).parent)
    assert back["ints"] == {3: 7, -1: 2**70} and back["tuple"] == (1, (2.5, "x")) and np.isnan(back["nan"])
    assert back["array"].dtype == np.float32 and np.array_equal(back["array"], state["array"])
    assert type(back["scalar"]) is np.int64 and back[("a", 1)][0].dtype == np.uint8 and back["flag"] is True
    with pytest.raises(StoreError, match="not plain data"):
        write_checkpoint_file(tmp_path, {"x": object()})


def test_small_arrays_are_inline_and_large_ones_archive_members_both_exact(tmp_path):
    from rigctl.checkpoint import INLINE_BYTES, read_checkpoint_file, write_checkpoint_file

    rng = np.random.default_rng(0)
    small = [rng.normal(size=(3, 4)), rng.integers(-9, 9, 7).astype(np.int16), np.asfortranarray(np.eye(3)),
             np.array([True, False]), np.complex64(1 + 2j), np.zeros((0, 5), np.uint8)]
    large = rng.normal(size=INLINE_BYTES // 8 + 1)
    path = write_checkpoint_file(tmp_path, {"small": small, "large": large})
    with np.load(path, allow_pickle=False) as archive:
        assert len(archive.files) == 2  # the tree and the one large array: thousands of small ones cost nothing
    back = read_checkpoint_file(tmp_path)
    for a, b in zip(small + [large], back["small"] + [back["large"]]):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b) and np.shape(a) == np.shape(b)
    assert type(back["small"][4]) is np.complex64 and back["small"][0].flags.writeable


def test_histories_are_stored_whole_and_come_back_exact(tmp_path):
    from rigctl.checkpoint import read_checkpoint_file, write_checkpoint_file

    rng = np.random.default_rng(1)
    state = {"x": [rng.normal(size=(int(n), 2)) for n in rng.integers(0, 300, 12)],  # per-session arrays
             "few": [np.arange(3), np.arange(4)], "mixed": [np.arange(3.0)] * 7 + [np.arange(3)],
             "floats": rng.normal(size=40).tolist() + [1e-300, -0.0], "ints": list(range(-5, 30)) + [2**70],
             "both": [1, 2.5] * 10, "nan": [float("nan")] * 20}
    path = write_checkpoint_file(tmp_path, state)
    with np.load(path, allow_pickle=False) as archive:
        assert len(archive.files) == 2  # the tree and the twelve arrays of "x" as one flat member
    back = read_checkpoint_file(tmp_path)
    assert len(back["x"]) == 12 and all(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
                                        for a, b in zip(state["x"], back["x"]))
    assert all(b.flags.writeable and b.base is None for b in back["x"])
    for key in ("few", "mixed"):
        assert [a.dtype for a in back[key]] == [a.dtype for a in state[key]]
    assert back["floats"] == state["floats"] and all(type(v) is float for v in back["floats"])
    assert back["ints"] == state["ints"] and back["both"] == state["both"]
    assert [type(v) for v in back["both"]] == [int, float] * 10 and all(v != v for v in back["nan"])


def test_a_crafted_inline_array_cannot_ask_for_objects(tmp_path):
    from rigctl.checkpoint import read_checkpoint_file

    for node in ({"__b": "AAAAAAAAAAA=", "dtype": "|O", "shape": [1]},
                 {"__b": "AAAAAAAAAAA=", "dtype": [["a", "<i4"]], "shape": [2]},
                 {"__b": "not base64!", "dtype": "<f8", "shape": [1]},
                 {"__b": "AAAAAAAAAAA=", "dtype": "<f8", "shape": [3]}):
        tree = {"format_version": 3, "payload": node}
        np.savez(tmp_path / "checkpoint.npz", __tree__=np.frombuffer(json.dumps(tree).encode(), np.uint8))
        with pytest.raises(StoreError, match="corrupt checkpoint"):
            read_checkpoint_file(tmp_path)


def test_resume_writes_the_report_a_kill_during_reporting_left_missing(small_protocol, tmp_path):
    from runcli import rigctl

    out = tmp_path / "r"
    rigctl("run", str(small_protocol), "--rig", "sim-events", "--out", str(out), "--no-progress", "--no-report")
    assert load_run_meta(out)["status"] == "complete" and not (out / "summary.json").exists()
    proc = rigctl("run", "--resume", str(out), "--no-progress")
    assert json.loads((out / "summary.json").read_text())["trials"] == 60
    again = rigctl("run", "--resume", str(out), "--no-progress", check=False)
    assert again.returncode == 2 and "already complete and reported" in again.stderr
    assert "Traceback" not in proc.stderr + again.stderr


def test_a_hardware_resume_remembers_the_pulses_before_the_crash(small_protocol, tmp_path, monkeypatch):
    """The culture cannot be rewound, so the rate limit must span the crash: it starts from stims.bin."""
    from fakes import fake_hardware_rig_factory
    from rigctl.session import last_pulse_per_electrode

    out = tmp_path / "hw"
    call = (f"start_run({str(small_protocol)!r}, RunOptions(seed=2, progress=False, chunk_ms=50.0), {str(out)!r}, "
            "rig_factory=factory)")
    assert _child("start_run", call, 120, base="from fakes import fake_hardware_rig_factory as base_factory") == 137
    stims, trials = read_stims(out), read_trials(out)
    redo = int(trials["sample"][-1]) + 1  # stims from the first unstored trial on are sent again
    last = last_pulse_per_electrode(out, before_sample=redo)
    kept = stims[stims["sample"] < redo]
    assert last and last == {int(e): int(kept["sample"][kept["electrode"] == e].max()) for e in set(kept["electrode"])}
    seen = []
    from rigctl.safety import GuardedStimulator

    original = GuardedStimulator.check_plan

    def spy(self, commands):  # what the guard remembers when the rest of the plan is checked
        seen.append(dict(self.rates.last_sample))
        return original(self, commands)

    monkeypatch.setattr(GuardedStimulator, "check_plan", spy)
    resume_run(out, RunOptions(progress=False), rig_factory=fake_hardware_rig_factory)
    assert seen and seen[0] == last


HOLD_LOCK = """
import sys
from rigctl.store import RunLock
lock = RunLock.acquire({out!r})
print("locked", flush=True)
sys.stdin.read()  # hold it until the test kills this process
"""


def test_two_writers_never_share_a_run_and_a_killed_holder_frees_it(small_protocol, tmp_path):
    ref = reference(small_protocol, tmp_path / "ref", 50.0)
    out = tmp_path / "r"
    assert start_killed(small_protocol, out, 50.0, 12) == 137
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(out=str(out))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {name: (out / name).read_bytes() for name in ("trials.bin", "spikes.bin", "stims.bin")}
        with pytest.raises(StoreError, match=f"in use by another rigctl process \\(pid {holder.pid}\\)"):
            resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
        assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    assert_same_run(out, ref)



def test_a_checkpoint_of_another_culture_model_is_refused_in_one_line_and_cuts_nothing(small_protocol, tmp_path):
    """A run checkpointed by a rigctl whose simulated culture had other parameters (here: before
    `local_inh_share` existed) cannot continue the same network: resume says which fields differ, as a
    StoreError, and leaves every file as it was; the untouched checkpoint resumes to the end."""
    from rigctl.checkpoint import read_checkpoint_file, write_checkpoint_file

    out = tmp_path / "r"
    call = (f"start_run({str(small_protocol)!r}, RunOptions(rig='sim-events', seed=2, progress=False, chunk_ms=50.0), "
            f"{str(out)!r}, rig_factory=factory)")
    assert _child("start_run", call, 60, base=REAL_RIG) == 137
    original = read_checkpoint_file(out)
    older = read_checkpoint_file(out)
    del older["state"]["rig"]["culture"]["config"]["local_inh_share"]
    write_checkpoint_file(out, older)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".bin"}
    with pytest.raises(StoreError, match=r"culture model changed .*local_inh_share absent -> 0\.67"):
        resume_run(out, RunOptions(progress=False))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".bin"} == before
    write_checkpoint_file(out, original)
    resume_run(out, RunOptions(progress=False))
    assert load_run_meta(out)["status"] == "complete" and len(read_trials(out)) == 60
