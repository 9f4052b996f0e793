"""Fit a twin to one released culture and score it (docs/twin.md).

1. The target: the culture's evoked-count profile over its first `fit_sessions` sessions
   (`rigctl.model.twin_score.evoked_profile`: per half-window, state and electrode column).
2. CMA-ES (`cma`) in the unit box of `rigctl.twin.params.PARAMS`; evaluation 1 is the untuned default
   point, then generations of `popsize` candidates (a multiple of the workers), evaluated in parallel in
   `workers` processes; the last generation is cut to the budget. Each evaluation simulates sessions
   1..fit_sessions of a fresh culture with the same network seed (common random numbers: the loss is a
   deterministic function of the parameters). Every evaluation goes to `evaluations.jsonl`.
3. The best parameters run once through all sessions; `rigctl.model.twin_score.score` gives err_x.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from rigctl.errors import ModelInputError
from rigctl.model.data import Trials
from rigctl.model.twin_score import evoked_profile, profile_loss
from rigctl.twin import params as P
from rigctl.twin.drive import simulate

SESSION_LENGTH = 256
SIGMA0 = 0.2  # CMA-ES initial step in the unit box (a local search around the tuned defaults)


@dataclass(frozen=True, eq=False)
class Target:
    """What an evaluation needs (sent once to each worker)."""

    o_session: np.ndarray  # [256, 32] the culture's sequence (session 1; the same in every session)
    s: np.ndarray  # [fit_sessions * 256, 2]
    sess: np.ndarray  # [fit_sessions * 256] 0-based
    profile: np.ndarray  # the culture's evoked profile [B, 4, 64]
    drug: str
    fit_sessions: int
    seed: int


def require_cma():
    """The optimiser's package, or one line naming the extra that brings it."""
    try:
        import cma
    except ImportError:
        raise ModelInputError("the twin's optimiser needs the cma package; run: pip install 'rigctl[twin]' "
                              "(or pip install -e '.[twin]' in a checkout)") from None
    return cma


def make_target(tr: Trials, drug: str, fit_sessions: int, seed: int) -> Target:
    """The culture's target; checks that its sequence repeats (spec 1.3), so one session's o drives all."""
    if fit_sessions > tr.n_sessions:
        raise ModelInputError(f"--fit-sessions {fit_sessions}: {tr.name} has {tr.n_sessions} sessions")
    o = tr.o[:SESSION_LENGTH]
    n = tr.n_sessions * SESSION_LENGTH
    if tr.n_steps != n or not (tr.o.reshape(tr.n_sessions, SESSION_LENGTH, -1) == o).all():
        raise ModelInputError(f"{tr.name}: the stimulus sequence does not repeat every {SESSION_LENGTH} steps "
                              "(spec 1.3); the twin replays one session's sequence")
    m = tr.first_sessions(fit_sessions)
    return Target(o.copy(), tr.s[m], tr.sess[m], evoked_profile(tr.r[m], tr.s[m], tr.sess[m], fit_sessions),
                  drug, fit_sessions, seed)


def run(values: dict[str, float], o_session: np.ndarray, sessions: int, drug: str, seed: int) -> np.ndarray:
    cfg, eff = P.apply(values)
    return simulate(o_session, sessions, drug, cfg, eff, seed)


def evaluate(target: Target, u) -> dict:
    """One evaluation: parameters, loss, seconds."""
    t0 = time.perf_counter()
    values = P.from_unit(u)
    r = run(values, target.o_session, target.fit_sessions, target.drug, target.seed)
    loss = profile_loss(evoked_profile(r, target.s, target.sess, target.fit_sessions), target.profile)
    return {"params": values, "u": [float(v) for v in u], "loss": loss, "seconds": time.perf_counter() - t0}


_TARGET: Target | None = None


def _init_worker(target: Target) -> None:
    global _TARGET
    _TARGET = target
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")


def _evaluate_in_worker(u) -> dict:
    assert _TARGET is not None
    return evaluate(_TARGET, u)


def popsize_for(n_params: int, workers: int) -> int:
    """CMA-ES default 4 + floor(3 ln n), rounded up to a multiple of the workers."""
    base = 4 + int(3 * math.log(n_params))
    return int(math.ceil(base / workers) * workers)


def optimise(target: Target, budget: int, seed: int, workers: int, log_path: Path,
             progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
             label: str = "") -> dict:
    """CMA-ES with `budget` evaluations; returns {best, evaluations, seconds}. Deterministic for a seed
    (candidates are produced in the parent; results are collected in order)."""
    cma = require_cma()

    if budget < 1:
        raise ModelInputError(f"--budget must be >= 1, got {budget}")
    P.check_params()
    x0 = P.to_unit(P.defaults())
    popsize = popsize_for(len(P.PARAMS), workers)
    opts = {"seed": seed + 1, "bounds": [0.0, 1.0], "popsize": popsize, "verbose": -9}
    state = np.random.get_state()
    es = cma.CMAEvolutionStrategy(x0, SIGMA0, opts)
    t0 = time.perf_counter()
    done: list[dict] = []
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(target,))
    try:
        with open(log_path, "w") as log:
            def record(results: list[dict], generation: int) -> None:
                for res in results:
                    res = {"evaluation": len(done) + 1, "generation": generation, **res}
                    done.append(res)
                    log.write(json.dumps(res) + "\n")
                    best = min(d["loss"] for d in done)
                    progress(f"{label}evaluation {len(done)}/{budget}: loss {res['loss']:.5f}, best {best:.5f}, "
                             f"elapsed {time.perf_counter() - t0:.0f} s")
                log.flush()

            def run_batch(xs: list) -> list[dict]:
                if pool is None:
                    return [evaluate(target, x) for x in xs]
                return list(pool.map(_evaluate_in_worker, xs))

            record(run_batch([x0]), 0)  # evaluation 1: the untuned defaults
            generation = 0
            while len(done) < budget:
                generation += 1
                np.random.seed((seed * 1_000_003 + generation) % 2**32)  # cma samples from numpy's global RNG
                xs = es.ask()
                xs = xs[:budget - len(done)]
                results = run_batch([list(map(float, x)) for x in xs])
                record(results, generation)
                if len(results) == popsize:
                    es.tell(xs, [r["loss"] for r in results])
    finally:
        np.random.set_state(state)
        if pool is not None:
            pool.shutdown()
    best = min(done, key=lambda d: (d["loss"], d["evaluation"]))
    return {"best": best, "evaluations": len(done), "seconds": time.perf_counter() - t0, "popsize": popsize,
            "mean_eval_seconds": float(np.mean([d["seconds"] for d in done]))}
