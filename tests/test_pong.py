"""Pong (`kind: pong`, rigctl/tasks/pong.py): the game's rules, the place and rate codes, ties broken by seed,
feedback within the safety limits, a short run on the simulated culture storing the task's fields, an exact resume
after a kill, and one-line errors for bad values."""


import numpy as np
import pytest

from rigctl.errors import ProtocolError
from rigctl.protocol import load_protocol
from rigctl.safety import GuardedStimulator, SafetyLimits
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.store import load_run_meta, read_spikes, read_stims, read_trials
from rigctl.tasks.closed_loop import NO_ACTION, PHASE_FEEDBACK, PHASE_STEP, MotorDecoder
from rigctl.tasks.pong import (DOWN, OUTCOME_HIT, OUTCOME_MISS, OUTCOME_NONE, UP, Court, PongGame, place_index,
                               pong_episode_rows, pong_summary, rate_hz, rate_tick)
from test_resume_hardening import REAL_RIG, _child

FS = 25000.0
COURT = Court(width=1.0, height=1.0, paddle_height=0.3, paddle_step=0.1, ball_speed=0.04)
FAST = ("trials=300", "ball_speed_per_s=1.0", "checkpoint_every_trials=40")  # a rally in about a second


def game(**state) -> PongGame:
    g = PongGame(COURT, seed=0, ball_x=0.5, ball_y=0.5, vx=-0.04, vy=0.0, paddle_y=0.5, rally=1)
    for k, v in state.items():
        setattr(g, k, v)
    return g


# ---- the game ----------------------------------------------------------------------------------------------
def test_the_ball_bounces_off_the_walls_and_the_paddle_stays_in_the_court():
    g = game(ball_y=0.98, vy=0.04)
    assert g.tick(UP) == OUTCOME_NONE and g.ball_y == pytest.approx(0.98) and g.vy < 0  # top wall
    g = game(ball_y=0.01, vy=-0.03)
    assert g.tick(UP) == OUTCOME_NONE and g.ball_y == pytest.approx(0.02) and g.vy > 0  # bottom wall
    g = game(ball_x=0.98, vx=0.04)
    assert g.tick(UP) == OUTCOME_NONE and g.ball_x == pytest.approx(0.98) and g.vx < 0  # far wall
    g = game(paddle_y=0.8)
    g.tick(UP)
    assert g.paddle_y == pytest.approx(0.85)  # clamped: the paddle's top edge on the top wall
    g.tick(DOWN)
    assert g.paddle_y == pytest.approx(0.75)


def test_a_ball_within_the_paddle_is_hit_back_and_one_beside_it_is_missed():
    g = game(ball_x=0.02, ball_y=0.6, paddle_y=0.4)
    assert g.tick(UP) == OUTCOME_HIT  # the paddle moves first (to 0.5): 0.6 is within 0.5 +- 0.15
    assert g.vx > 0 and g.ball_x == pytest.approx(0.02)
    g = game(ball_x=0.02, ball_y=0.6, paddle_y=0.4)
    assert g.tick(DOWN) == OUTCOME_MISS  # paddle at 0.3: 0.6 is beyond its edge at 0.45
    g.serve()
    assert g.rally == 2 and g.ball_x == COURT.width and g.vx < 0 and 0 <= g.ball_y <= COURT.height
    again = game(ball_x=0.02, ball_y=0.6, paddle_y=0.4)
    again.tick(DOWN)
    again.serve()
    assert again.to_dict() == g.to_dict()  # a serve is a function of seed and rally
    assert PongGame.from_dict(COURT, g.to_dict()) == g


# ---- encoding and decoding ---------------------------------------------------------------------------------
def test_place_code_and_rate_code():
    assert [place_index(y, 1.0, 8) for y in (0.0, 0.124, 0.125, 0.5, 0.99, 1.0)] == [0, 0, 1, 4, 7, 7]
    assert rate_hz(0.0, 1.0, 10.0, 2.5) == 10.0 and rate_hz(1.0, 1.0, 10.0, 2.5) == 2.5
    assert rate_hz(0.5, 1.0, 10.0, 2.5) == pytest.approx(6.25)

    def fired(rate: float, ticks: int = 40) -> list[bool]:
        phase, out = 1.0, []
        for _ in range(ticks):
            fire, phase = rate_tick(phase, rate, 0.1)
            out.append(fire)
        return out

    assert all(fired(10.0))  # every tick at the paddle
    far = np.flatnonzero(fired(2.5))
    assert far[0] == 0 and set(np.diff(far[1:]).tolist()) == {4}  # a serve's tick, then every 4th tick
    assert sum(fired(6.25, 400)) == pytest.approx(250, abs=1)


def test_the_step_stimulates_the_place_coded_electrode_more_often_near_the_paddle():
    proto = load_protocol("pong").make_protocol(0, FS)
    sensory = proto.config.sensory_electrodes
    near, far = [], []
    for i, planned in enumerate(drive(proto, 600, lambda p: np.zeros(64, np.int32))):
        f = planned.fields
        if f["phase"] != PHASE_STEP:
            continue
        if planned.command is not None:
            assert planned.command.electrodes == (sensory[place_index(f["ball_y"], 1.0, len(sensory))],)
        (near if f["ball_x"] < 0.25 else far if f["ball_x"] > 0.75 else []).append(planned.command is not None)
    assert np.mean(near) > 0.85 and np.mean(far) < 0.45


def test_ties_are_broken_by_seed_and_a_majority_is_not():
    groups = ((0, 1), (6, 7))
    zeros = np.zeros(64, np.int32)
    by_seed = {s: [MotorDecoder(groups, s).decide(zeros, i) for i in range(64)] for s in (0, 1)}
    assert by_seed[0] == [MotorDecoder(groups, 0).decide(zeros, i) for i in range(64)]  # reproducible
    assert by_seed[0] != by_seed[1] and set(by_seed[0]) == {0, 1}
    counts = zeros.copy()
    counts[7] = 3
    counts[0] = 2
    assert {MotorDecoder(groups, s).decide(counts, i) for s in range(5) for i in range(5)} == {1}
    randomly = [MotorDecoder(groups, 0, "random").decide(counts, i) for i in range(64)]
    assert set(randomly) == {0, 1}  # the control ignores the culture


# ---- the protocol without a rig ----------------------------------------------------------------------------
def drive(proto, n: int, counts_of):
    """Plan and answer `n` trials as the loop would (each response heard 30 ms after its pulse)."""
    now, out = 0, []
    for i in range(n):
        planned = proto.trial(i, now)
        assert planned is not None, f"trial {i} undecided after its predecessors' responses"
        record = planned.record(counts_of(planned))
        proto.on_response(record)
        out.append(planned.__class__(**{**planned.__dict__, "fields": record.fields}))
        now = planned.sample + int(0.031 * FS)
    return out


def tracker(up, down):
    """A perfect player: spikes on the motor group that moves the paddle towards the ball."""
    def counts(planned):
        c = np.zeros(64, np.int32)
        c[up[0] if planned.fields["ball_y"] > planned.fields["paddle_y"] else down[0]] = 3
        return c
    return counts


def test_feedback_follows_hits_and_misses_and_everything_passes_the_default_safety_limits():
    cfg = load_protocol("pong")
    for counts_of in (tracker(cfg.motor_up, cfg.motor_down), lambda p: np.zeros(64, np.int32)):
        proto = cfg.make_protocol(3, FS)
        trials = drive(proto, 2000, counts_of)
        guard = GuardedStimulator(object(), SafetyLimits(), FS)
        commands = [t.command for t in trials if t.command is not None]
        assert guard.check_plan(commands) == len(commands)  # amplitude, charge, electrodes and the 50 Hz rate
        for c in proto.candidate_commands():
            guard.check_plan([c])
        outcome = np.array([t.fields["outcome"] for t in trials])
        phase = np.array([t.fields["phase"] for t in trials])
        sensory = set(cfg.sensory_electrodes)
        for i in np.flatnonzero(outcome == OUTCOME_HIT):  # predictable: all sensory at once, 40 Hz for 0.1 s
            fb = trials[i + 1:i + 5]
            assert all(t.fields["phase"] == PHASE_FEEDBACK and set(t.command.electrodes) == sensory for t in fb)
            assert np.diff([t.sample for t in fb]).tolist() == [625] * 3
            assert trials[i + 5].fields["phase"] == PHASE_STEP
        for i in np.flatnonzero(outcome == OUTCOME_MISS):  # unpredictable: single random electrodes over 4 s
            j = i + 1 + int(np.argmax(phase[i + 1:] == PHASE_STEP)) if i + 1 < len(trials) else i + 1
            fb = trials[i + 1:j]
            assert all(len(t.command.electrodes) == 1 for t in fb) and 10 <= len(fb) <= 20
            if j < len(trials):
                assert trials[j].fields["episode"] == trials[i].fields["episode"] + 1
                assert trials[j].sample - trials[i].sample >= (4.0 + 0.1) * FS  # the serve after 4 s
        if counts_of.__name__ == "counts":  # the perfect player never misses
            assert (outcome == OUTCOME_HIT).sum() >= 10 and (outcome == OUTCOME_MISS).sum() == 0
        else:
            assert (outcome == OUTCOME_MISS).sum() >= 5


# ---- on the simulated culture ------------------------------------------------------------------------------
def test_a_short_run_on_sim_events_stores_the_task_fields(tmp_path):
    out = start_run("pong", RunOptions(rig="sim-events", seed=1, progress=False, overrides=FAST), tmp_path / "r")
    t = read_trials(out)
    assert len(t) == 300
    assert t.dtype.names[3:12] == ("phase", "episode", "step", "action", "ball_x", "ball_y", "paddle_y",
                                   "outcome", "counts")
    steps, feedback = t[t["phase"] == PHASE_STEP], t[t["phase"] == PHASE_FEEDBACK]
    assert set(steps["action"].tolist()) == {0, 1} and set(feedback["action"].tolist()) == {NO_ACTION}
    assert set(feedback["outcome"].tolist()) == {OUTCOME_NONE} and set(feedback["step"].tolist()) == {0}
    assert (steps["ball_x"] >= 0).all() and (steps["ball_x"] <= 1).all() and (steps["ball_y"] <= 1).all()
    assert (steps["outcome"] == OUTCOME_MISS).sum() >= 3 and (steps["outcome"] == OUTCOME_HIT).sum() >= 1
    for e in np.unique(steps["episode"])[:-1]:  # every rally but the last ends with its one miss
        own = steps[steps["episode"] == e]
        assert own["outcome"][-1] == OUTCOME_MISS and (own["outcome"][:-1] != OUTCOME_MISS).all()
        assert own["step"].tolist() == list(range(1, len(own) + 1))
    rows = pong_episode_rows(t)
    assert [r["episode"] for r in rows] == list(range(1, (steps["outcome"] == OUTCOME_MISS).sum() + 1))
    assert sum(r["hits"] for r in rows) <= (steps["outcome"] == OUTCOME_HIT).sum()
    assert all(r["ace"] == int(r["hits"] == 0) and r["start_s"] < r["end_s"] for r in rows)
    summary = pong_summary(t, first_minutes=0.25)
    assert summary["rallies_first"] + summary["rallies_rest"] == len(rows)
    stimulated = set(read_stims(out)["sample"].tolist())
    assert {int(s) for s in steps["sample"][np.isin(steps["sample"], list(stimulated))]} <= stimulated


def test_a_killed_run_resumes_to_the_uninterrupted_trials_byte_for_byte(tmp_path):
    ref = start_run("pong", RunOptions(rig="sim-events", seed=2, progress=False, overrides=FAST), tmp_path / "ref")
    out = tmp_path / "killed"
    call = (f"start_run('pong', RunOptions(rig='sim-events', seed=2, progress=False, overrides={FAST!r}), "
            f"{str(out)!r}, rig_factory=factory)")
    assert _child("start_run", call, 500, base=REAL_RIG) == 137
    assert load_run_meta(out)["status"] == "running" and 40 <= len(read_trials(out)) < 300
    resume_run(out, RunOptions(progress=False))
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__


# ---- configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, expected", [
    ("isi_s=0", "field 'isi_s' has value 0.0; allowed: 0.02 to 10.0"),
    ("trials=0", "field 'trials' has value 0"),
    ("decoder=greedy", "field 'decoder' has value 'greedy'"),
    ("sensory_electrodes=[1, 1]", "repeats an electrode"),
    ("sensory_electrodes=[3]", "field 'sensory_electrodes'"),
    ("motor_up=[34, 0]", "electrode 34 is in both sensory_electrodes and motor_up"),
    ("paddle_height=2.0", "field 'paddle_height' has value 2.0; allowed: at most court_height (1)"),
    ("rate_near_hz=20", "field 'rate_near_hz' has value 20.0; allowed: at most 1 / isi_s = 10 Hz"),
    ("rate_far_hz=12", "field 'rate_far_hz'"),
    ("ball_speed_per_s=5", "field 'ball_speed_per_s' has value 5.0; allowed: at most 2.5"),
    ("hit_feedback_rate_hz=100", "field 'hit_feedback_rate_hz' has value 100.0; allowed: > 0.0 and <= 50.0"),
    ("miss_feedback_min_interval_s=0.001", "field 'miss_feedback_min_interval_s'"),
    ("court_width=-1", "field 'court_width'"),
])
def test_bad_values_are_refused_in_one_line_naming_the_field(setting, expected):
    with pytest.raises(ProtocolError) as info:
        load_protocol("pong", [setting])
    message = str(info.value)
    assert f"--set {setting}" in message and expected in message and "\n" not in message, message
