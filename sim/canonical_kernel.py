"""numba hot loop of the CB22 canonical network in the maze: one call runs steps until the goal, the step cap or
a requested stop, mutating the episode's state arrays in place (so an episode can be cut and resumed anywhere).

Time follows the authors' maze.m: step t = 1 is the initial state (x = x̄ = D, no decision, G = 0); at each
t ≥ 2 the agent moves by the action decided at t − 1 (none at t = 2), sees its view o_t, updates
x_t = σ(W o_t + K x_{t−1} + h) and samples the decision d_t from y_t = σ(V x_{t−1} + m). The episode's length
is the last t (20,000 if the goal was not reached), as the authors' `time`.

Randomness: the decision at step t of episode e is drawn with `hash_u01(seed, STREAM_DECISION, e, t)`, a pure
function, so a cut-and-resumed episode draws exactly the same numbers.
"""

from __future__ import annotations

import math

from numba import njit

from rigctl.sim.culture_kernel import hash_u01
from rigctl.tasks.maze import gamma_of_chunk, move_cell, step_risk, view_into

STREAM_DECISION = 17

# integer episode state (int64 vector)
I_T = 0  # last step done (1 = initial state only)
I_ROW = 1
I_COL = 2
I_ACTION = 3  # move decided at step t, executed at t + 1 (-1: none)
I_DONE = 4  # 1 once the goal is reached or the step cap hit
I_REACHED = 5
I_CHUNK_N = 6  # (x, d) pairs in the open risk chunk
I_N_CHUNKS = 7  # chunks closed so far
N_ISTATE = 8
# float episode state (float64 vector)
F_G_PREV = 0  # G of step t (joins its chunk one step later, with the pair (x_t, d_{t+1}))
F_G_SUM = 1  # sum of G in the open chunk
N_FSTATE = 2

ODDS_EPS = 1e-6  # authors: qd1 ./ (qd2 + 1e-6)
# reassociation for vectorised loops, but no "no-inf/no-nan" assumptions (drives can be large)
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@njit(cache=True, inline="always")
def _sigmoid_pair(a):
    """(σ(a), 1 − σ(a)) without overflow for any a."""
    if a >= 0.0:
        e = math.exp(-a)
        y = 1.0 / (1.0 + e)
        return y, e * y
    e = math.exp(a)
    ybar = 1.0 / (1.0 + e)
    return e * ybar, ybar


@njit(cache=True, fastmath=FASTMATH)
def _close_chunk(chunk, ist, fst, chunk_m1, chunk_m0, chunk_s1, chunk_s0, qc_next, gammas):
    """Three-factor update of the decision counts for one chunk: qc += (1 − 2Γ)·x_{t−1} d_tᵀ, floored at 1.

    The four (state value, decision value) blocks: (1,1) x·d, (0,1) x̄·d, (1,0) x·(1−d), (0,0) x̄·(1−d).
    """
    n = ist[I_CHUNK_N]
    gamma = gamma_of_chunk(fst[F_G_SUM] / n, chunk)
    gain = 1.0 - 2.0 * gamma
    n_dec, n_state = chunk_m1.shape
    for j in range(n_state):
        s1 = chunk_s1[j]
        s0 = chunk_s0[j]
        for d in range(n_dec):
            m1 = chunk_m1[d, j]
            m0 = chunk_m0[d, j]
            qc_next[1, 1, j, d] = max(qc_next[1, 1, j, d] + gain * m1, 1.0)
            qc_next[0, 1, j, d] = max(qc_next[0, 1, j, d] + gain * m0, 1.0)
            qc_next[1, 0, j, d] = max(qc_next[1, 0, j, d] + gain * (s1 - m1), 1.0)
            qc_next[0, 0, j, d] = max(qc_next[0, 0, j, d] + gain * (s0 - m0), 1.0)
    gammas[ist[I_N_CHUNKS]] = gamma
    ist[I_N_CHUNKS] += 1
    ist[I_CHUNK_N] = 0
    fst[F_G_SUM] = 0.0
    chunk_m1[:, :] = 0.0
    chunk_m0[:, :] = 0.0
    chunk_s1[:] = 0.0
    chunk_s0[:] = 0.0


@njit(cache=True, fastmath=FASTMATH)
def run_steps(maze, goal_row, goal_col, w_t, k_t, v_t, h, h_first, m, m_first,
              seed, episode, max_steps, chunk, stop_t,
              ist, fst, x_prev, xbar_prev, obs, x_new, drive_d, odds, x_traj, obs_traj,
              chunk_m1, chunk_m0, chunk_s1, chunk_s0, qc_next, gammas, decision_counts, trace):
    """Advance the episode to step `stop_t` (or the goal, or `max_steps`).

    Shapes: w_t [No, Ns] (Wᵀ), k_t [Ns, Ns] (Kᵀ), v_t [Ns, Nd] (Vᵀ), h/h_first [Ns], m/m_first [Nd];
    x_traj [max_steps, Ns] and obs_traj [max_steps, No] receive x_t and o_t at row t − 1 (the Hebbian products
    for W and K are taken from them at the episode's end, one matrix product instead of a rank-1 update per
    step); trace [max_steps, 3] receives (row, col, first move decided) per step if it has rows, else nothing
    is traced (row 0, step 1, is the caller's: the start and no move).
    """
    n_obs, n_state = w_t.shape
    n_dec = v_t.shape[1]
    per_move = n_dec // 4
    t = ist[I_T]
    row = ist[I_ROW]
    col = ist[I_COL]
    action = ist[I_ACTION]
    tracing = trace.shape[0] > 0
    while ist[I_DONE] == 0 and t < stop_t:
        t += 1
        first = t == 2
        # the world: last step's decision moves the agent, which then sees its view
        prev_col = col
        if action >= 0:
            row, col = move_cell(maze, row, col, action)
        g = step_risk(prev_col, col)
        view_into(maze, row, col, obs)
        if tracing:
            trace[t - 1, 0] = row
            trace[t - 1, 1] = col
        # middle layer: x_t = σ(W o_t + K x_{t−1} + h); the first step's x_{t−1} = x̄_{t−1} = D is in h_first
        if first:
            x_new[:] = h_first
        else:
            x_new[:] = h
        for i in range(n_obs):
            if obs[i] != 0.0:
                for j in range(n_state):
                    x_new[j] += w_t[i, j]
        if not first:
            for k in range(n_state):
                xk = x_prev[k]
                for j in range(n_state):
                    x_new[j] += xk * k_t[k, j]
        for j in range(n_state):
            x_new[j] = _sigmoid_pair(x_new[j])[0]
        # output layer: y_t = σ(V x_{t−1} + m); sample d_t ∝ y / (ȳ + ε)
        if first:
            drive_d[:] = m_first
        else:
            drive_d[:] = m
            for j in range(n_state):
                xj = x_prev[j]
                for d in range(n_dec):
                    drive_d[d] += xj * v_t[j, d]
        total = 0.0
        for d in range(n_dec):
            y, ybar = _sigmoid_pair(drive_d[d])
            odds[d] = y / (ybar + ODDS_EPS)
            total += odds[d]
        target = hash_u01(seed, STREAM_DECISION, episode, t) * total
        decision = n_dec - 1
        cum = 0.0
        for d in range(n_dec):
            cum += odds[d]
            if cum > target:
                decision = d
                break
        # kept for the Hebbian products of W (o_t x_tᵀ) and K (x_{t−1} x_tᵀ)
        for j in range(n_state):
            x_traj[t - 1, j] = x_new[j]
        for i in range(n_obs):
            obs_traj[t - 1, i] = obs[i]
        # the pair (x_{t−1}, d_t) and G_{t−1} join the risk chunk of step t − 1
        for j in range(n_state):
            chunk_m1[decision, j] += x_prev[j]
            chunk_m0[decision, j] += xbar_prev[j]
            chunk_s1[j] += x_prev[j]
            chunk_s0[j] += xbar_prev[j]
        fst[F_G_SUM] += fst[F_G_PREV]
        ist[I_CHUNK_N] += 1
        if (t - 1) % chunk == 0:
            _close_chunk(chunk, ist, fst, chunk_m1, chunk_m0, chunk_s1, chunk_s0, qc_next, gammas)
        if t >= 3:
            decision_counts[decision] += 1
        fst[F_G_PREV] = g
        action = decision // per_move
        if tracing:
            trace[t - 1, 2] = action
        for j in range(n_state):
            x_prev[j] = x_new[j]
            xbar_prev[j] = 1.0 - x_new[j]
        reached = row == goal_row and col == goal_col
        if reached or t >= max_steps:
            if ist[I_CHUNK_N] > 0:
                _close_chunk(chunk, ist, fst, chunk_m1, chunk_m0, chunk_s1, chunk_s0, qc_next, gammas)
            ist[I_DONE] = 1
            ist[I_REACHED] = 1 if reached else 0
    ist[I_T] = t
    ist[I_ROW] = row
    ist[I_COL] = col
    ist[I_ACTION] = action
