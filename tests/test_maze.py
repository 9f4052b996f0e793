"""CB22 maze and canonical agent (issue 17): task rules, risk, the agent's equations against a slow literal
re-statement of the authors' algorithm, determinism and mid-episode save/restore."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest

from rigctl.sim import canonical_kernel as kern
from rigctl.sim.canonical import (CanonicalAgent, CanonicalConfig, DirichletCounts, _log_expectation,
                                  decision_prior)
from rigctl.sim.culture_kernel import hash_u01
from rigctl.sim.maze_experiment import estimate_decision_prior
from rigctl.tasks.episodes import EpisodeRow, read_episodes_csv, write_episodes_csv
from rigctl.tasks.maze import (DOWN, LEFT, RIGHT, UP, MazeEnv, RiskChunks, chunk_gammas, generate_maze, goal_cell,
                               is_solvable, move_cell, start_cell, step_risk, view)

SMALL = replace(CanonicalConfig(), max_steps=400)


# --- the maze ----------------------------------------------------------------------------------------------

def test_maze_is_reproducible_from_its_seed_and_differs_between_seeds():
    a, b, c = generate_maze(3), generate_maze(3), generate_maze(4)
    assert a.shape == (19, 99) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(10))
def test_maze_layout_and_start_goal_connected(seed):
    maze = generate_maze(seed)
    assert start_cell() == (9, 1) and goal_cell() == (9, 98)
    assert maze[9, 98] == 0 and maze[:, 0].all() and maze[0].all() and maze[-1].all()
    assert maze[:, -1].sum() == 18  # right border closed except the goal gap
    assert maze[2:-2:2, 2:-2:2].all()  # pillars
    assert (maze[1::2, 1::2] == 0).all()  # cells
    # each of the 8 x 48 interior pillars closed exactly one wall slot
    n_pillars = 8 * 48
    n_slot_walls = int(maze[1:-1, 1:-1].sum()) - n_pillars
    assert n_slot_walls == n_pillars
    assert is_solvable(maze)


def test_moves_respect_walls_and_jump_two_cells():
    maze = generate_maze(5)
    row, col = 9, 1
    for action, (dr, dc) in zip((UP, DOWN, LEFT, RIGHT), ((-1, 0), (1, 0), (0, -1), (0, 1))):
        new = move_cell(maze, row, col, action)
        if maze[row + dr, col + dc]:
            assert new == (row, col)
        else:
            assert new == (row + 2 * dr, col + 2 * dc)
    assert move_cell(maze, row, col, LEFT) == (row, col)  # left border
    assert move_cell(maze, 9, 97, RIGHT) == (9, 98)  # through the goal gap, clipped to the border
    closed = generate_maze(5)
    closed[9, 98] = 1
    assert move_cell(closed, 9, 97, RIGHT) == (9, 97)


def test_random_walk_stays_on_cells_and_never_crosses_a_wall():
    maze = generate_maze(6)
    rng = np.random.default_rng(0)
    row, col = start_cell()
    for action in rng.integers(0, 4, 3000):
        new_row, new_col = move_cell(maze, row, col, int(action))
        if (new_row, new_col) != (row, col):
            assert maze[(row + new_row) // 2, (col + new_col) // 2] == 0 or (new_row, new_col) == goal_cell()
            assert abs(new_row - row) + abs(new_col - col) in (1, 2)
        row, col = new_row, new_col
        if (row, col) == goal_cell():
            break
        assert row % 2 == 1 and col % 2 == 1


def test_view_is_11x11_centred_on_the_agent_with_outside_as_wall():
    maze = generate_maze(7)
    v = view(maze, 9, 1).reshape(11, 11)
    assert v.shape == (11, 11)
    assert np.array_equal(v[:, 4:], maze[4:15, 0:7])  # centre column 5 = maze column 1
    assert v[:, :4].all()  # left of the maze is wall
    assert v[5, 5] == 0  # the agent's own cell
    v_top = view(maze, 1, 51).reshape(11, 11)
    assert v_top[:4].all() and np.array_equal(v_top[4:], maze[0:7, 46:57])


def test_env_step_api_matches_the_numba_functions_and_round_trips_its_state():
    env = MazeEnv(8)
    obs = env.reset()
    assert obs.shape == (121,)
    res = env.step(UP)
    saved = json.loads(json.dumps(env.get_state()))
    after = [env.step(a) for a in (RIGHT, DOWN, RIGHT)]
    env2 = MazeEnv.from_state(saved)
    again = [env2.step(a) for a in (RIGHT, DOWN, RIGHT)]
    assert [(r.risk, r.reached) for r in after] == [(r.risk, r.reached) for r in again]
    assert all(np.array_equal(a.observation, b.observation) for a, b in zip(after, again))
    assert res.risk in (0.5,)  # up never changes the column


# --- risk --------------------------------------------------------------------------------------------------

def test_step_risk():
    assert step_risk(5, 7) == 0.0 and step_risk(7, 5) == 1.0 and step_risk(5, 5) == 0.5


def test_chunk_risk_thresholds():
    right, left, still = np.zeros(200), np.ones(200), np.full(200, 0.5)
    assert chunk_gammas(right).tolist() == [0.0]
    assert chunk_gammas(left).tolist() == [0.55]
    assert chunk_gammas(still).tolist() == [0.55]  # Δ = 0
    mixed = np.full(200, 0.5)
    mixed[:8] = 0.0  # Δ = 8: 0.45
    assert chunk_gammas(mixed).tolist() == [0.45]
    mixed[:11] = 0.0  # Δ = 11: 0
    assert chunk_gammas(mixed).tolist() == [0.0]
    mixed[10] = 0.5  # Δ = 10 computed as the authors do, (1 − 2·0.475)·200 = 10.000000000000009 > 10: 0
    assert chunk_gammas(mixed).tolist() == [0.0]
    net_left = np.full(200, 0.5)
    net_left[:3] = 1.0  # Δ = −3
    assert chunk_gammas(net_left).tolist() == [0.55]
    # a short last chunk is scaled by the nominal 200 (authors): 6 rightward moves of 10 give Δ = 120
    tail = np.concatenate([right, np.r_[np.zeros(6), np.full(4, 0.5)]])
    assert chunk_gammas(tail).tolist() == [0.0, 0.0]


def test_streaming_risk_chunks_agree_with_the_batch_rule():
    g = np.random.default_rng(1).choice([0.0, 0.5, 1.0], size=523, p=[0.3, 0.45, 0.25])
    stream = RiskChunks()
    out = [gam for x in g[:300] if (gam := stream.add(float(x))) is not None]
    resumed = RiskChunks()
    resumed.set_state(json.loads(json.dumps(stream.get_state())))
    out += [gam for x in g[300:] if (gam := resumed.add(float(x))) is not None]
    out.append(resumed.close())
    assert out == chunk_gammas(g).tolist() and resumed.close() is None


# --- the agent ---------------------------------------------------------------------------------------------

def test_decision_prior_spread():
    e = decision_prior(0.25)
    assert e.shape == (256,) and np.isclose(e.sum(), 1.0)
    assert np.allclose(e[:64], 0.25 / 64) and np.allclose(e[192:], 0.25 / 64)
    e15 = decision_prior(0.15).reshape(4, 64).sum(1)
    assert np.allclose(e15, [0.25, 0.25, 0.35, 0.15])


def _literal_episode(counts, d_prior, e_prior, maze, seed, episode, max_steps, chunk):
    """The authors' maze.m / mdp_learning.m / mdp_risk.m re-stated literally (slow, full trajectories)."""
    ln_a, ln_b, ln_c = (_log_expectation(q) for q in (counts.qa, counts.qb, counts.qc))
    ln_d = np.log(np.maximum(d_prior, 1e-6))
    ln_e = np.log(np.maximum(np.stack([e_prior, 1 - e_prior]), 1e-6))  # [on, off]
    ns, nd = counts.qa.shape[3], counts.qc.shape[3]
    qs = [(d_prior[0].copy(), d_prior[1].copy())]  # (on, off) per step; step 1 = D
    obs, decisions, risks = [None], [None], [0.0]
    row, col = start_cell(*maze.shape)
    action = -1
    t = 1
    for t in range(2, max_steps + 1):
        prev_col = col
        if action >= 0:
            row, col = move_cell(maze, row, col, action)
        o = view(maze, row, col)
        s1, s0 = qs[-1]
        vs_on = ln_a[1, 1].T @ o + ln_a[0, 1].T @ (1 - o) + ln_b[1, 1].T @ s1 + ln_b[0, 1].T @ s0 + ln_d[0]
        vs_off = ln_a[1, 0].T @ o + ln_a[0, 0].T @ (1 - o) + ln_b[1, 0].T @ s1 + ln_b[0, 0].T @ s0 + ln_d[1]
        vd_on = ln_c[1, 1].T @ s1 + ln_c[0, 1].T @ s0 + ln_e[0]
        vd_off = ln_c[1, 0].T @ s1 + ln_c[0, 0].T @ s0 + ln_e[1]
        x = 1 / (1 + np.exp(-(vs_on - vs_off)))
        y = 1 / (1 + np.exp(-(vd_on - vd_off)))
        p = y / (1 - y + 1e-6)
        d = int(np.searchsorted(np.cumsum(p), hash_u01(seed, kern.STREAM_DECISION, episode, t) * p.sum(),
                                side="right"))
        qs.append((x, 1 - x))
        obs.append(o)
        decisions.append(d)
        risks.append(step_risk(prev_col, col))
        action = d // (nd // 4)
        if (row, col) == goal_cell(*maze.shape):
            break
    gam = chunk_gammas(np.array(risks[:t - 1]), chunk)  # G(1..t−1)
    qa, qb, qc = counts.qa.copy(), counts.qb.copy(), counts.qc.copy()
    for tau in range(2, t + 1):
        o, (x1, x0), (p1, p0) = obs[tau - 1], qs[tau - 1], qs[tau - 2]
        for ov, ovec in ((1, o), (0, 1 - o)):
            qa[ov, 1] += np.outer(ovec, x1)
            qa[ov, 0] += np.outer(ovec, x0)
        for pv, pvec in ((1, p1), (0, p0)):
            qb[pv, 1] += np.outer(pvec, x1)
            qb[pv, 0] += np.outer(pvec, x0)
    for c, g in enumerate(gam):
        delta = np.zeros((2, 2, ns, nd))
        for tau in range(c * chunk + 1, min((c + 1) * chunk, t - 1) + 1):  # pairs (qs(τ), d(τ+1))
            dvec = np.zeros(nd)
            dvec[decisions[tau]] = 1.0  # decisions list is indexed by step − 1
            p1, p0 = qs[tau - 1]
            for sv, svec in ((1, p1), (0, p0)):
                delta[sv, 1] += np.outer(svec, dvec)
                delta[sv, 0] += np.outer(svec, 1 - dvec)
        qc = np.maximum(qc + (1 - 2 * g) * delta, 1.0)
    return t, gam, DirichletCounts(qa, qb, qc)


def test_kernel_matches_a_literal_restatement_of_the_authors_algorithm():
    config = replace(CanonicalConfig(), max_steps=450)
    maze = generate_maze(11)
    agent = CanonicalAgent(config, seed=11)
    ref_counts = DirichletCounts(agent.counts.qa.copy(), agent.counts.qb.copy(), agent.counts.qc.copy())
    for episode in range(2):  # the second episode runs on learned synapses
        t_ref, gam_ref, ref_counts = _literal_episode(ref_counts, agent.state_prior, agent.decision_prior_on,
                                                      maze, 11, episode, config.max_steps, config.risk_chunk)
        result = agent.run_episode(maze)
        assert result.steps == t_ref
        assert np.array_equal(result.gammas, gam_ref)
        for name in ("qa", "qb", "qc"):
            np.testing.assert_allclose(getattr(agent.counts, name), getattr(ref_counts, name), rtol=1e-9,
                                       atol=1e-6, err_msg=name)
    assert not np.allclose(agent.counts.qc, 3000.0)  # V did learn


def test_sigmoid_pair_is_finite_for_extreme_drives():
    for a in (-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4):
        y, ybar = kern._sigmoid_pair(a)
        assert np.isfinite(y) and np.isfinite(ybar) and abs(y + ybar - 1.0) < 1e-12


def test_agent_is_deterministic_for_a_seed():
    maze = generate_maze(2)
    runs = [CanonicalAgent(SMALL, seed=2).run_episode(maze, trace=True) for _ in range(2)]
    other = CanonicalAgent(SMALL, seed=3).run_episode(maze, trace=True)
    assert np.array_equal(runs[0].trace, runs[1].trace)
    assert not np.array_equal(runs[0].trace, other.trace)


def test_state_save_restore_mid_episode_continues_identically():
    maze = generate_maze(4)
    agent = CanonicalAgent(SMALL, seed=4)
    agent.run_episode(maze)  # learned synapses
    agent.begin_episode(maze, trace=True)
    assert not agent.advance(maze, until_step=137)
    saved = agent.get_state()
    agent.advance(maze)
    straight = agent.end_episode()
    straight_next = agent.run_episode(maze)
    restored = CanonicalAgent.from_state(saved)
    restored.advance(maze)
    resumed = restored.end_episode()
    resumed_next = restored.run_episode(maze)
    assert np.array_equal(straight.trace, resumed.trace) and straight.steps == resumed.steps
    assert np.array_equal(straight.gammas, resumed.gammas)
    assert straight_next.steps == resumed_next.steps
    assert np.array_equal(straight_next.gammas, resumed_next.gammas)
    np.testing.assert_array_equal(agent.counts.qc, restored.counts.qc)


def test_trace_agrees_with_the_step_api_environment():
    maze_seed = 9
    agent = CanonicalAgent(SMALL, seed=1)
    result = agent.run_episode(generate_maze(maze_seed), trace=True)
    env = MazeEnv(maze_seed)
    env.reset()
    for (r0, c0, a0), (r1, c1, _) in zip(result.trace[1:-1], result.trace[2:]):
        assert (env.row, env.col) == (r0, c0)
        assert move_cell(env.maze, r0, c0, a0) == (r1, c1)  # the move decided at a step is made at the next
        env.step(a0)


def test_v_update_sign_follows_one_minus_two_gamma_and_floors_at_one():
    maze = generate_maze(0)
    for qc_prior in (3000.0, 1.5):
        config = replace(CanonicalConfig(), max_steps=201, qc_prior=qc_prior)
        agent = CanonicalAgent(config, seed=0)
        agent.begin_episode(maze)
        agent.advance(maze)
        b = agent.buffers
        gamma = b.gammas[0]
        assert b.ist[kern.I_N_CHUNKS] == 1
        delta = b.qc_next - qc_prior
        chosen = b.decision_counts > 0
        if qc_prior == 3000.0:
            expected_sign = np.sign(1 - 2 * gamma)
            assert expected_sign != 0
            assert (np.sign(delta[1, 1][:, chosen]) == expected_sign).all()
            assert (delta[1, 1][:, ~chosen] == 0).all()
        else:
            assert (b.qc_next >= 1.0).all()
            if gamma > 0.5:
                assert (b.qc_next[1, 0] == 1.0).any()  # pushed below 1 and floored


@pytest.mark.parametrize("gamma", [0.0, 0.45, 0.55])
def test_v_update_gain_for_each_gamma(gamma, monkeypatch):
    """A chunk of pure rightward / mixed / leftward steps moves qc by (1 − 2Γ) times the Hebbian product."""
    ns, nd = 3, 8
    qc = np.full((2, 2, ns, nd), 2.0)
    m1 = np.zeros((nd, ns))
    m1[5] = [0.5, 1.0, 0.25]
    m0 = np.zeros((nd, ns))
    m0[5] = [0.5, 0.0, 0.75]
    s1, s0 = m1.sum(0), m0.sum(0)
    g_mean = {0.0: 0.0, 0.45: 0.5 - 4 / 200, 0.55: 1.0}[gamma]
    ist = np.zeros(kern.N_ISTATE, np.int64)
    ist[kern.I_CHUNK_N] = 200
    fst = np.array([0.0, g_mean * 200])
    gammas = np.zeros(2)
    kern._close_chunk(200, ist, fst, m1.copy(), m0.copy(), s1.copy(), s0.copy(), qc, gammas)
    gain = 1 - 2 * gamma
    assert gammas[0] == gamma
    np.testing.assert_allclose(qc[1, 1, :, 5], np.maximum(2.0 + gain * m1[5], 1.0))
    np.testing.assert_allclose(qc[0, 1, :, 5], np.maximum(2.0 + gain * m0[5], 1.0))
    np.testing.assert_allclose(qc[1, 0, :, 0], np.maximum(2.0 + gain * s1, 1.0))  # unit 0 was off: x·(1 − d)
    np.testing.assert_allclose(qc[1, 0, :, 5], 2.0)  # unit 5 was on every step: x·(1 − d) = 0
    assert (qc >= 1.0).all()


def test_risk_modulated_learning_turns_the_agent_rightward():
    """Seeded mechanism check: in a maze with only pillars (every rightward move succeeds) and a small decision
    prior count (qc0 = 30, so that a few episodes matter), the share of decisions whose first move is right rises
    from the prior's 0.25 to most of them: chunks with net rightward progress (Γ = 0) reinforce their decisions.
    With the paper's qc0 = 3000 the same drift takes tens of 20,000-step episodes (see bench/bench_maze.py)."""
    maze = generate_maze(0)
    maze[1:-1, 1:-1] = 0
    maze[2:-2:2, 2:-2:2] = 1
    config = replace(CanonicalConfig(), max_steps=1000, qc_prior=30.0)
    shares = []
    for seed in range(3):
        agent = CanonicalAgent(config, seed=seed)
        per_episode = []
        for _ in range(5):
            counts = agent.run_episode(maze).decision_counts.reshape(4, 64).sum(axis=1)
            per_episode.append(counts[RIGHT] / counts.sum())
        shares.append(per_episode)
    shares = np.array(shares)
    assert abs(shares[:, 0].mean() - 0.25) < 0.05
    assert shares[:, 3:].mean() > 0.6


def test_reverse_engineered_prior_recovers_the_first_move_shares():
    config = replace(CanonicalConfig(), max_steps=3000)
    counts = [CanonicalAgent(config, seed=s).run_episode(generate_maze(s)).decision_counts for s in range(3)]
    e_est = estimate_decision_prior(counts, config.max_steps)
    shares = e_est.reshape(4, 64).sum(1) / e_est.sum()
    np.testing.assert_allclose(shares, [0.25, 0.25, 0.25, 0.25], atol=0.03)


def test_episodes_csv_round_trip(tmp_path):
    rows = [EpisodeRow(1, 20000, False, {"seed": 3}), EpisodeRow(2, 812, True, {"seed": 3})]
    buf = io.StringIO()
    assert write_episodes_csv(buf, rows) == 2
    assert buf.getvalue().splitlines() == ["episode,steps,reached,seed", "1,20000,0,3", "2,812,1,3"]
    path = tmp_path / "episodes.csv"
    write_episodes_csv(path, rows)
    back = read_episodes_csv(path)
    assert [(r.episode, r.steps, r.reached) for r in back] == [(1, 20000, False), (2, 812, True)]
    with pytest.raises(ValueError):
        write_episodes_csv(io.StringIO(), [rows[0], EpisodeRow(2, 5, True)])
