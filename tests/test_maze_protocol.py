"""The maze as a protocol: played by the canonical agent rig (`--rig canonical`) and by a culture on an MEA, stored,
exported and resumed exactly; bad files and wrong rigs refused in one line."""

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory
from rigctl.errors import ProtocolError
from rigctl.protocol import load_protocol
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.sim.canonical import CanonicalConfig
from rigctl.sim.maze_experiment import run_agent
from rigctl.store import load_run_meta, read_jsonl, read_stims, read_trials
from rigctl.tasks.closed_loop import PHASE_FEEDBACK, PHASE_STEP, MotorDecoder
from rigctl.tasks.maze import generate_maze, move_cell
from runcli import rigctl
from test_resume_hardening import _child

SMALL_AGENT = ("maze_rows=11", "maze_cols=21", "episodes=6", "max_steps=1500", "risk_chunk_steps=200")
SHORT_MEA = ("mea.trials=300",)


def agent_run(tmp_path: Path, name: str, seed: int = 3, extra: tuple[str, ...] = ()) -> Path:
    return start_run("cb22_maze", RunOptions(rig="canonical", seed=seed, progress=False,
                                             overrides=SMALL_AGENT + extra), tmp_path / name)


def test_the_agent_rig_plays_the_maze_as_the_validated_agent_and_stores_every_step(tmp_path):
    out = agent_run(tmp_path, "agent")
    reference = run_agent(3, replace(CanonicalConfig(), max_steps=1500), n_episodes=6, maze_shape=(11, 21))
    episodes = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "episode_end"]
    assert [e["steps"] for e in episodes] == reference.steps.tolist()
    assert [e["reached"] for e in episodes] == reference.reached.tolist()
    trials = read_trials(out)
    assert len(trials) == reference.steps.sum()
    maze = generate_maze(3, 11, 21)
    for episode in range(1, 7):
        mine = trials[trials["episode"] == episode]
        assert mine["step"].tolist() == list(range(1, len(mine) + 1))
        assert mine["action"][0] == -1 and (mine["row"][0], mine["col"][0]) == (5, 1)
        # the move decided at step t is made at step t + 1 (step 2 makes none: nothing was decided at step 1)
        for t in range(1, len(mine) - 1):
            assert move_cell(maze, mine["row"][t], mine["col"][t], mine["action"][t]) == (mine["row"][t + 1],
                                                                                         mine["col"][t + 1])
        assert bool(mine["reached"][-1]) == episodes[episode - 1]["reached"]
        assert np.isfinite(mine["gamma"]).sum() == -(-(len(mine) - 1) // 200)  # one Γ per 200-step chunk
    meta = load_run_meta(out)
    assert meta["status"] == "complete" and meta["rig_description"]["mode"] == "agent"


def test_decision_prior_is_a_protocol_field_that_changes_the_agent(tmp_path):
    low = agent_run(tmp_path, "low", extra=("decision_prior_right=0.05",))
    high = agent_run(tmp_path, "high", extra=("decision_prior_right=0.45",))
    share = {}
    for name, out in (("low", low), ("high", high)):
        moves = np.array([e["moves"] for e in read_jsonl(out / "events.jsonl") if e["event"] == "episode_end"])
        share[name] = moves[:, 3].sum() / moves.sum()
    assert share["low"] < 0.15 < 0.35 < share["high"]


AGENT_KILL = """
import os, sys
sys.path.insert(0, {tests!r})
from rigctl.rigs import open_rig
from rigctl.session import RunOptions, {entry}

def factory(spec, **kw):
    rig = open_rig(spec, **kw)
    make = rig.make_agent
    def dying_agent(seed, parameters):
        agent, count = make(seed, parameters), [0]
        play = agent.play
        def dying_play(environment):
            count[0] += 1
            if count[0] == {kill_episode}:
                os._exit(137)
            return play(environment)
        agent.play = dying_play
        return agent
    rig.make_agent = dying_agent
    return rig

{call}
"""


def test_an_agent_run_killed_twice_resumes_to_the_same_bytes(tmp_path):
    ref = agent_run(tmp_path, "ref")
    out = tmp_path / "killed"
    opts = f"RunOptions(rig='canonical', seed=3, progress=False, overrides={SMALL_AGENT!r})"
    for entry, call, episode in (("start_run", f"start_run('cb22_maze', {opts}, {str(out)!r}, rig_factory=factory)", 3),
                                 ("resume_run", f"resume_run({str(out)!r}, RunOptions(progress=False), "
                                                "rig_factory=factory)", 2)):
        code = AGENT_KILL.format(tests=str(Path(__file__).parent), entry=entry, call=call, kill_episode=episode)
        assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 137
    assert load_run_meta(out)["status"] == "running"
    resume_run(out, RunOptions(progress=False))
    assert read_trials(out).tobytes() == read_trials(ref).tobytes()
    ends = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "episode_end"]
    assert [e["episode"] for e in ends] == [1, 2, 3, 4, 5, 6]  # none lost, none twice


def mea_run(tmp_path: Path, name: str, seed: int = 0, drug: str | None = None, extra=(), factory=None) -> Path:
    options = RunOptions(rig="sim-events", seed=seed, drug=drug, progress=False, overrides=SHORT_MEA + tuple(extra))
    kwargs = {} if factory is None else {"rig_factory": factory}
    return start_run("cb22_maze_mea", options, tmp_path / name, **kwargs)


def test_on_an_mea_each_step_is_decoded_from_its_own_response_and_moves_the_agent(tmp_path):
    out = mea_run(tmp_path, "mea")
    protocol = load_protocol("cb22_maze_mea")
    trials = read_trials(out)
    assert len(trials) == 300
    decoder = MotorDecoder(protocol.mea.motor_groups, 0)
    maze = generate_maze(0, protocol.maze_rows, protocol.maze_cols)
    steps = np.flatnonzero(trials["phase"] == PHASE_STEP)
    assert len(steps) > 50 and (trials["phase"] == PHASE_FEEDBACK).sum() > 0
    for k, nxt in zip(steps[:-1], steps[1:]):
        t = trials[k]
        assert t["action"] == decoder.decide(t["counts"], int(k))
        if trials[nxt]["episode"] == t["episode"]:
            assert move_cell(maze, t["row"], t["col"], t["action"]) == (trials[nxt]["row"], trials[nxt]["col"])
            assert trials[nxt]["step"] == t["step"] + 1
    assert (trials["action"][trials["phase"] == PHASE_FEEDBACK] == -1).all()
    # stimulated electrodes of a step: the sensory groups of the moves open there
    stims = read_stims(out)
    first = trials[steps[0]]
    sent = sorted(stims["electrode"][stims["sample"] == first["sample"]].tolist())
    sensory = protocol.mea.sensory_groups
    expected = sorted(e for m in range(4) if move_cell(maze, first["row"], first["col"], m) != (first["row"], first["col"])
                      for e in sensory[m])
    assert sent == expected
    # every feedback trial follows a closed risk chunk or an episode's end
    chunk_ends = steps[np.isfinite(trials["gamma"][steps])]
    assert set(np.flatnonzero(np.diff(trials["phase"]) == 1).tolist()) <= set(chunk_ends.tolist())


def test_the_random_control_ignores_the_culture(tmp_path):
    control = mea_run(tmp_path, "random", extra=("mea.decoder=random",))
    apv = mea_run(tmp_path, "random-apv", drug="apv", extra=("mea.decoder=random",))
    culture = mea_run(tmp_path, "culture")
    a, b, c = read_trials(control), read_trials(apv), read_trials(culture)
    assert not np.array_equal(a["counts"], b["counts"])  # another culture condition ...
    assert np.array_equal(a["action"], b["action"])  # ... the same actions
    assert not np.array_equal(a["action"], c["action"])


def test_an_mea_maze_run_killed_resumes_to_the_same_bytes(tmp_path):
    opts = "RunOptions(seed=1, progress=False, chunk_ms=50.0, overrides=('mea.trials=200',))"
    ref = start_run("cb22_maze_mea", RunOptions(seed=1, progress=False, chunk_ms=50.0, overrides=("mea.trials=200",)),
                    tmp_path / "ref", rig_factory=fake_rig_factory)
    out = tmp_path / "killed"
    assert _child("start_run", f"start_run('cb22_maze_mea', {opts}, {str(out)!r}, rig_factory=factory)", 900) == 137
    assert 0 < len(read_trials(out)) < 200
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    for reader in (read_trials, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__


def test_export_episodes_gives_one_row_per_episode(tmp_path):
    out = agent_run(tmp_path, "agent")
    proc = rigctl("export", "episodes", str(out))
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    ends = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "episode_end"]
    assert [(int(r["episode"]), int(r["steps"]), r["reached"] == "1") for r in rows] == \
        [(e["episode"], e["steps"], e["reached"]) for e in ends]
    mea = mea_run(tmp_path, "mea")
    rows = list(csv.DictReader(io.StringIO(rigctl("export", "episodes", str(mea)).stdout)))
    trials = read_trials(mea)
    steps = trials[trials["phase"] == PHASE_STEP]
    assert sum(int(r["steps"]) for r in rows) == len(steps)
    assert all(r["complete"] == "1" for r in rows[:-1])
    summary = json.loads((mea / "summary.json").read_text()) if (mea / "summary.json").exists() else None
    assert summary is None  # start_run writes no report; the command does
    bss = tmp_path / "bss"
    rigctl("run", "isomura2023_bss", "--sessions", "1", "--set", "trials_per_session=4", "--out", str(bss),
           "--no-progress", "--no-report")
    bad = rigctl("export", "episodes", str(bss), check=False)
    assert bad.returncode != 0 and "has no episodes" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("setting, expected", [
    ("maze_rows=20", "field 'maze_rows' has value 20; allowed: 7, 11, 15, 19"),
    ("maze_rows=9", "field 'maze_rows' has value 9; allowed: 7, 11, 15, 19"),
    ("maze_cols=20", "field 'maze_cols' has value 20; allowed: an odd number"),
    ("decision_prior_right=0.5", "field 'decision_prior_right'"),
    ("mea.sensory_groups={up: [0], down: [1], left: [2]}", "exactly the groups up, down, left, right"),
    ("mea.motor_groups.up=[0, 99]", "shares electrodes [0] with sensory_groups"),
    ("mea.decoder=best", "field 'mea.decoder'"),
    ("mea.feedback.predictable_rate_hz=100", "at most 1 / min_interval_s"),
])
def test_bad_maze_fields_are_one_line_errors(setting, expected):
    with pytest.raises(ProtocolError) as info:
        load_protocol("cb22_maze_mea", [setting])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_wrong_rig_for_the_protocol_is_one_line(tmp_path):
    for args, expected in ((("cb22_maze", "--rig", "sim-events"), "run it with --rig canonical"),
                           (("isomura2023_bss", "--rig", "canonical"), "needs an MEA rig"),
                           (("cb22_maze", "--rig", "canonicl"), "allowed: sim, sim-events, canonical")):
        proc = rigctl("run", *args, "--out", str(tmp_path / "x"), "--no-progress", check=False)
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_the_report_draws_the_task(tmp_path):
    out = tmp_path / "agent"
    rigctl("run", "cb22_maze", "--rig", "canonical", "--seed", "3", *[a for s in SMALL_AGENT for a in ("--set", s)],
           "--out", str(out), "--no-progress")
    summary = json.loads((out / "summary.json").read_text())
    task = summary["task"]
    ends = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "episode_end"]
    assert task["steps"] == [e["steps"] for e in ends]
    assert task["success_first10"] == pytest.approx(np.mean([e["reached"] for e in ends]), abs=1e-4)
    assert (out / "maze.png").stat().st_size > 10_000


RIGS = Path(__file__).resolve().parents[1] / "rigs"


@pytest.mark.parametrize("protocol, rig, trials, allowed", [
    ("cb22_maze_mea_pulsepal", "pulsepal_sim.yaml", "mea.trials=200", {0, 2, 4, 6}),
    ("pong_rhs", "rhx_sim.yaml", "trials=150", set(range(64))),
])
def test_the_tasks_run_through_shipped_rig_files(tmp_path, protocol, rig, trials, allowed):
    out = tmp_path / protocol
    rigctl("run", protocol, "--rig", str(RIGS / rig), "--set", trials, "--out", str(out), "--no-progress")
    t = read_trials(out)
    assert len(t) == int(trials.split("=")[1]) and load_run_meta(out)["status"] == "complete"
    steps = t[t["phase"] == PHASE_STEP]
    assert (steps["action"] >= 0).all() and len(set(steps["action"].tolist())) > 1
    assert set(read_stims(out)["electrode"].tolist()) <= allowed


def test_a_task_faster_than_the_rig_allows_is_refused_before_the_run(tmp_path):
    proc = rigctl("run", "cb22_maze_mea_pulsepal", "--rig", str(RIGS / "pulsepal_sim.yaml"), "--set",
                  "mea.feedback.min_interval_s=0.02", "--set", "mea.feedback.predictable_rate_hz=20",
                  "--out", str(tmp_path / "x"), "--no-progress", check=False)
    assert proc.returncode != 0 and "field 'mea.feedback.min_interval_s'" in proc.stderr
    assert "allowed: at least 50 ms (max_rate_hz 20" in proc.stderr and not (tmp_path / "x").exists()


def test_an_agent_run_is_not_exported_to_nwb_but_its_trials_are(tmp_path):
    out = agent_run(tmp_path, "agent", extra=("episodes=1",))
    proc = rigctl("export", "nwb", str(out), check=False)
    assert proc.returncode == 2 and "has no electrodes or recordings" in proc.stderr and "Traceback" not in proc.stderr
    rows = rigctl("export", "trials", str(out)).stdout.splitlines()
    assert rows[0] == "session,trial,sample,phase,episode,step,action,row,col,gamma,reached"
    assert len(rows) - 1 == len(read_trials(out))
