"""The CB22 canonical neural network agent (Isomura, Shimazaki & Friston, Commun. Biol. 5:55, 2022): the
simulated stand-in for a culture that learns the maze.

Network (No = Ns = 121 view cells / middle units, Nd = 4**4 = 256 decision units, one per 4-move plan):
    x_t = σ(W o_t + K x_{t−1} + h)         middle layer, x ∈ [0,1]^Ns, x̄ = 1 − x
    y_t = σ(V x_{t−1} + m)                 output layer, y ∈ [0,1]^Nd
    d_t ~ Categorical(y / (ȳ + 1e−6))      one plan; only its first move is executed
The synapses are the log-odds of Dirichlet-expected probabilities (the authors' `sim_type = 2`, ln E[A]):
    W = ln A[1|1] − ln A[1|0] − ln A[0|1] + ln A[0|0]   (A[o|s] from counts qa, normalised over o)
    K likewise from qb (normalised over the previous state's value), V from qc (normalised over the state's value)
    h = Σ_i (ln A[0|1] − ln A[0|0]) + Σ_k (ln B[0|1] − ln B[0|0]) + ln D1 − ln D0
    m = Σ_j (ln C[0|1] − ln C[0|0]) + ψ1 − ψ0,  ψ = ln E (decision prior)
Learning (once per episode, with the synapses frozen during it, as the authors' maze.m):
    qa += Σ_t o_t ⊗ x_t (all four value pairs), qb += Σ_t x_{t−1} ⊗ x_t,
    qc += (1 − 2Γ_c) Σ_{t∈c} x_{t−1} ⊗ d_t per 200-step chunk c, floored at 1 after each chunk.
The counts are accumulated every step (in the kernel); they reach W, K, V at the episode's end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from rigctl.sim import canonical_kernel as kern
from rigctl.tasks.maze import MAX_STEPS, RISK_CHUNK, VIEW_SIZE, goal_cell, start_cell

N_MOVES = 4
LOG_FLOOR = 1e-6  # authors: log(max(1e-6, ·))


@dataclass(frozen=True)
class CanonicalConfig:
    """Sizes, priors and schedule of the agent; defaults are the authors' maze.m values."""

    view_size: int = VIEW_SIZE
    plan_depth: int = 4  # moves per decision unit; Nd = 4**plan_depth
    decision_prior_right: float = 0.25  # prior mass of the plans whose first move is right
    qa_prior: float = 1e7  # every cell of qa (large: W barely learns)
    qa_prior_diagonal: float = 9.9e8  # added on the (o = s) diagonal of the matching value pairs: o_i ≈ s_i
    qb_prior: float = 1e7
    qc_prior: float = 3000.0  # small: V learns
    max_steps: int = MAX_STEPS
    risk_chunk: int = RISK_CHUNK

    @property
    def n_obs(self) -> int:
        return self.view_size * self.view_size

    @property
    def n_states(self) -> int:
        return self.n_obs

    @property
    def n_decisions(self) -> int:
        return N_MOVES ** self.plan_depth


def decision_prior(right: float, plan_depth: int = 4) -> np.ndarray:
    """E (prior of each decision unit being on), as the authors spread it: first move up 0.25, down 0.25,
    left 0.5 − right, right `right`, each shared evenly by the 4**(plan_depth−1) plans starting with that move.
    E.g. right = 0.25 gives 0.25/64 = 0.0039 per unit (the paper's "E_right = 0.0039")."""
    if not 0.0 < right < 0.5:
        raise ValueError(f"decision_prior_right must be in (0, 0.5), got {right}")
    per_move = N_MOVES ** (plan_depth - 1)
    return np.repeat(np.array([0.25, 0.25, 0.5 - right, right]), per_move) / per_move


@dataclass
class DirichletCounts:
    """Concentration parameters, indexed [value of the first variable, value of the second, i, j], 1 = on.

    qa [2, 2, No, Ns]: (o_i, s_j); qb [2, 2, Ns, Ns]: (s_k at t−1, s_j at t); qc [2, 2, Ns, Nd]: (s_j at t−1, d).
    """

    qa: np.ndarray
    qb: np.ndarray
    qc: np.ndarray

    @staticmethod
    def initial(config: CanonicalConfig) -> "DirichletCounts":
        no, ns, nd = config.n_obs, config.n_states, config.n_decisions
        qa = np.full((2, 2, no, ns), config.qa_prior)
        qa[1, 1] += np.eye(no, ns) * config.qa_prior_diagonal
        qa[0, 0] += np.eye(no, ns) * config.qa_prior_diagonal
        return DirichletCounts(qa, np.full((2, 2, ns, ns), config.qb_prior), np.full((2, 2, ns, nd), config.qc_prior))


@dataclass
class Synapses:
    """The network's weights and thresholds (transposed weights: rows are presynaptic, for the kernel)."""

    w_t: np.ndarray  # [No, Ns] Wᵀ
    k_t: np.ndarray  # [Ns, Ns] Kᵀ (row: unit at t−1)
    v_t: np.ndarray  # [Ns, Nd] Vᵀ
    h: np.ndarray  # [Ns]
    h_first: np.ndarray  # [Ns] threshold plus K's drive when x_{t−1} = x̄_{t−1} = D (the episode's first step)
    m: np.ndarray  # [Nd]
    m_first: np.ndarray  # [Nd] likewise for V


def _log_expectation(q: np.ndarray) -> np.ndarray:
    """ln E[P(first variable = a | second = b)]: counts normalised over the first index."""
    q = np.maximum(q, LOG_FLOOR)
    return np.log(q) - np.log(np.maximum(q[0] + q[1], LOG_FLOOR))[None]


def _log_odds_pair(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(on-row, off-row) log-odds of the second variable: ln P(a=1|b=1) − ln P(a=1|b=0), same for a = 0."""
    ln = _log_expectation(q)
    return ln[1, 1] - ln[1, 0], ln[0, 1] - ln[0, 0]


def synapses_from_counts(counts: DirichletCounts, state_prior: np.ndarray, decision_prior_on: np.ndarray) -> Synapses:
    """Variable conversion Dirichlet counts -> network (see module docstring).

    state_prior [2, Ns]: (D on, D off); decision_prior_on [Nd]: E (the off value is 1 − E).
    """
    d_on, d_off = state_prior
    ln_d = np.log(np.maximum(d_on, LOG_FLOOR)) - np.log(np.maximum(d_off, LOG_FLOOR))
    ln_e = np.log(np.maximum(decision_prior_on, LOG_FLOOR)) - np.log(np.maximum(1.0 - decision_prior_on, LOG_FLOOR))
    a_on, a_off = _log_odds_pair(counts.qa)
    b_on, b_off = _log_odds_pair(counts.qb)
    c_on, c_off = _log_odds_pair(counts.qc)
    h_obs = a_off.sum(axis=0) + ln_d
    return Synapses(
        w_t=np.ascontiguousarray(a_on - a_off),
        k_t=np.ascontiguousarray(b_on - b_off),
        v_t=np.ascontiguousarray(c_on - c_off),
        h=h_obs + b_off.sum(axis=0),
        h_first=h_obs + d_on @ b_on + d_off @ b_off,
        m=c_off.sum(axis=0) + ln_e,
        m_first=d_on @ c_on + d_off @ c_off + ln_e,
    )


@dataclass
class EpisodeBuffers:
    """Everything an open episode holds (the kernel mutates these in place)."""

    ist: np.ndarray
    fst: np.ndarray
    x_prev: np.ndarray
    xbar_prev: np.ndarray
    x_traj: np.ndarray  # [max_steps, Ns] x_t at row t − 1 (row 0, step 1, stays unused: that state is D)
    obs_traj: np.ndarray  # [max_steps, No] o_t at row t − 1 (uint8)
    chunk_m1: np.ndarray
    chunk_m0: np.ndarray
    chunk_s1: np.ndarray
    chunk_s0: np.ndarray
    qc_next: np.ndarray
    gammas: np.ndarray
    decision_counts: np.ndarray
    trace: np.ndarray

    @staticmethod
    def open(config: CanonicalConfig, state_prior: np.ndarray, qc: np.ndarray, start: tuple[int, int],
             trace: bool) -> "EpisodeBuffers":
        no, ns, nd = config.n_obs, config.n_states, config.n_decisions
        ist = np.zeros(kern.N_ISTATE, np.int64)
        ist[kern.I_T] = 1
        ist[kern.I_ROW], ist[kern.I_COL] = start
        ist[kern.I_ACTION] = -1
        n_chunks = -(-config.max_steps // config.risk_chunk) + 1
        return EpisodeBuffers(
            ist=ist, fst=np.zeros(kern.N_FSTATE), x_prev=state_prior[0].copy(), xbar_prev=state_prior[1].copy(),
            x_traj=np.zeros((config.max_steps, ns)), obs_traj=np.zeros((config.max_steps, no), np.uint8),
            chunk_m1=np.zeros((nd, ns)), chunk_m0=np.zeros((nd, ns)), chunk_s1=np.zeros(ns), chunk_s0=np.zeros(ns),
            qc_next=qc.copy(), gammas=np.zeros(n_chunks), decision_counts=np.zeros(nd, np.int64),
            trace=_trace_buffer(config.max_steps if trace else 0, start))


def _trace_buffer(rows: int, start: tuple[int, int]) -> np.ndarray:
    """[rows, 3] (row, col, move decided) per step; step 1 is the start, where nothing is decided (-1)."""
    trace = np.zeros((rows, 3), np.int64)
    if rows:
        trace[0] = (start[0], start[1], -1)
    return trace


@dataclass
class EpisodeResult:
    """One finished episode."""

    episode: int  # 0-based index in the agent's life
    steps: int  # the authors' `time`: last step index (max_steps if the goal was not reached)
    reached: bool
    gammas: np.ndarray  # Γ per 200-step chunk
    decision_counts: np.ndarray  # [Nd] decisions at steps 3..steps (the authors' Eest numerator)
    trace: np.ndarray  # [steps, 3] (row, col, move decided; -1 at step 1) per step if traced, else empty


@dataclass
class CanonicalAgent:
    """A seeded canonical network that plays maze episodes; its whole state round-trips through get_state."""

    config: CanonicalConfig = field(default_factory=CanonicalConfig)
    seed: int = 0
    decision_prior_on: np.ndarray | None = None  # E; None: `decision_prior(config.decision_prior_right)`

    def __post_init__(self) -> None:
        if self.decision_prior_on is None:
            self.decision_prior_on = decision_prior(self.config.decision_prior_right, self.config.plan_depth)
        self.decision_prior_on = np.asarray(self.decision_prior_on, dtype=np.float64)
        if self.decision_prior_on.shape != (self.config.n_decisions,):
            raise ValueError(f"decision prior must have {self.config.n_decisions} entries")
        # authors: D = 0.5/Nd for both values of every state (only its use at the first step matters)
        self.state_prior = np.full((2, self.config.n_states), 0.5 / self.config.n_decisions)
        self.counts = DirichletCounts.initial(self.config)
        self.synapses = synapses_from_counts(self.counts, self.state_prior, self.decision_prior_on)
        self.episodes_done = 0
        self.buffers: EpisodeBuffers | None = None

    # --- playing -------------------------------------------------------------------------------------------
    def begin_episode(self, maze: np.ndarray, trace: bool = False) -> None:
        if self.buffers is not None:
            raise RuntimeError("an episode is already open")
        self.buffers = EpisodeBuffers.open(self.config, self.state_prior, self.counts.qc, start_cell(*maze.shape),
                                           trace)

    def advance(self, maze: np.ndarray, until_step: int | None = None) -> bool:
        """Play the open episode up to step `until_step` (default: to its end); True once it is over."""
        b = self.buffers
        if b is None:
            raise RuntimeError("no open episode")
        s = self.synapses
        goal_row, goal_col = goal_cell(*maze.shape)
        stop = self.config.max_steps if until_step is None else min(int(until_step), self.config.max_steps)
        ns, nd = self.config.n_states, self.config.n_decisions
        kern.run_steps(np.ascontiguousarray(maze, dtype=np.uint8), goal_row, goal_col, s.w_t, s.k_t, s.v_t, s.h,
                       s.h_first, s.m, s.m_first, self.seed, self.episodes_done, self.config.max_steps,
                       self.config.risk_chunk, stop, b.ist, b.fst, b.x_prev, b.xbar_prev,
                       np.zeros(self.config.n_obs), np.zeros(ns), np.zeros(nd), np.zeros(nd), b.x_traj, b.obs_traj,
                       b.chunk_m1, b.chunk_m0, b.chunk_s1, b.chunk_s0, b.qc_next, b.gammas, b.decision_counts,
                       b.trace)
        return bool(b.ist[kern.I_DONE])

    def end_episode(self) -> EpisodeResult:
        """Learn from the finished episode (W, K Hebbian; V risk-modulated) and return its summary."""
        b = self.buffers
        if b is None or not b.ist[kern.I_DONE]:
            raise RuntimeError("the episode is not over")
        self.counts = learned_counts(self.counts, b, self.state_prior)
        self.synapses = synapses_from_counts(self.counts, self.state_prior, self.decision_prior_on)
        steps = int(b.ist[kern.I_T])
        result = EpisodeResult(self.episodes_done, steps, bool(b.ist[kern.I_REACHED]),
                               b.gammas[:b.ist[kern.I_N_CHUNKS]].copy(), b.decision_counts.copy(),
                               b.trace[:steps].copy())
        self.episodes_done += 1
        self.buffers = None
        return result

    def run_episode(self, maze: np.ndarray, trace: bool = False) -> EpisodeResult:
        self.begin_episode(maze, trace)
        self.advance(maze)
        return self.end_episode()

    # --- state ---------------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything needed to continue identically: config, seed, priors, counts, the open episode if any.
        Values are JSON-able scalars/dicts or numpy arrays (synapses are recomputed from the counts)."""
        return {
            "config": asdict(self.config), "seed": self.seed, "episodes_done": self.episodes_done,
            "decision_prior_on": self.decision_prior_on.copy(), "state_prior": self.state_prior.copy(),
            "counts": {k: v.copy() for k, v in asdict(self.counts).items()},
            "episode": None if self.buffers is None else {k: v.copy() for k, v in asdict(self.buffers).items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "CanonicalAgent":
        agent = cls(CanonicalConfig(**state["config"]), int(state["seed"]), np.array(state["decision_prior_on"]))
        agent.state_prior = np.array(state["state_prior"])
        agent.counts = DirichletCounts(**{k: np.array(v) for k, v in state["counts"].items()})
        agent.synapses = synapses_from_counts(agent.counts, agent.state_prior, agent.decision_prior_on)
        agent.episodes_done = int(state["episodes_done"])
        episode = state["episode"]
        agent.buffers = None if episode is None else EpisodeBuffers(**{k: np.array(v) for k, v in episode.items()})
        return agent


def learned_counts(counts: DirichletCounts, b: EpisodeBuffers, state_prior: np.ndarray) -> DirichletCounts:
    """The counts after one episode: Hebbian products of the kept trajectory, expanded to all four value pairs.

    Steps 2..t count (step 1 is the prior state D). For them the off values are complements (x̄ = 1 − x,
    1 − o), so Σ o x̄ᵀ = Σo·1ᵀ − Σ o xᵀ and so on; the first pair of qb (x_1 = x̄_1 = D) is added on its own.
    qc was updated chunk by chunk in the kernel.
    """
    t = int(b.ist[kern.I_T])
    qa, qb = counts.qa.copy(), counts.qb.copy()
    if t >= 2:
        x = b.x_traj[1:t]
        o = b.obs_traj[1:t].astype(np.float64)
        ox, sum_o, sum_x, n = o.T @ x, o.sum(axis=0), x.sum(axis=0), float(t - 1)
        qa[1, 1] += ox
        qa[1, 0] += sum_o[:, None] - ox
        qa[0, 1] += sum_x[None, :] - ox
        qa[0, 0] += n - sum_o[:, None] - sum_x[None, :] + ox
        prev, cur = b.x_traj[1:t - 1], b.x_traj[2:t]
        xx, sum_prev, sum_cur, n_pairs = prev.T @ cur, prev.sum(axis=0), cur.sum(axis=0), float(t - 2)
        d_on, d_off = state_prior
        x1 = b.x_traj[1]
        qb[1, 1] += xx + np.outer(d_on, x1)
        qb[1, 0] += sum_prev[:, None] - xx + np.outer(d_on, 1.0 - x1)
        qb[0, 1] += sum_cur[None, :] - xx + np.outer(d_off, x1)
        qb[0, 0] += n_pairs - sum_prev[:, None] - sum_cur[None, :] + xx + np.outer(d_off, 1.0 - x1)
    return DirichletCounts(qa, qb, b.qc_next.copy())
