"""CB22 maze benchmark (issue 17): the canonical network's speed and its learning curve beside the paper's.

    python bench/bench_maze.py                      # speed, 20 agents x 100 episodes at E_right 0.15/0.25/0.35,
                                                    # and agents with the reverse-engineered prior
    python bench/bench_maze.py --seeds 4 --episodes 20 --priors 0.25   # a quick look

Each agent has its own maze generated from its seed (as the paper's 20 mazes) and its own decision stream.
Reverse engineering, as the authors' maze.m: E is estimated from the first-episode decisions of the agents on
the first half of the seeds and given to fresh agents on the second half of the seeds (unseen mazes); they are
compared with the true-prior agents on those same mazes. Runs are spread over processes; every result is a
function of its seed only, so the figures do not depend on the number of workers or their order.
"""

from __future__ import annotations

import os

# one BLAS thread per process: the workers already fill the cores, and a threaded BLAS on a shared machine
# makes the per-episode Hebbian products ten times slower (set before numpy is imported)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from rigctl.sim.canonical import CanonicalAgent, CanonicalConfig  # noqa: E402
from rigctl.sim.maze_experiment import (AgentRun, LearningSummary, estimate_decision_prior,  # noqa: E402
                                        prior_mass_by_first_move, run_agent, summarise)
from rigctl.tasks.episodes import write_episodes_csv  # noqa: E402
from rigctl.tasks.maze import generate_maze  # noqa: E402

# The authors' released outputs (reverse_engineering/maze/output/nn_mdp_time_E*.csv, 100 episodes x 30 agents;
# agents 1-20 true prior on 20 mazes, agents 21-30 estimated prior on mazes 11-20), summarised the same way.
PAPER = {  # prior: (success 1-10, success 91-100, median steps 1-10, median steps 91-100), agents 1-20
    0.15: (0.110, 0.235, 20000, 20000),
    0.25: (0.455, 0.840, 20000, 7041),
    0.35: (0.670, 0.645, 11125, 11666),
}
PAPER_BLOCKS = {  # prior: success per block of 10 episodes, agents 1-20
    0.15: (0.110, 0.160, 0.115, 0.145, 0.200, 0.200, 0.210, 0.195, 0.225, 0.235),
    0.25: (0.455, 0.710, 0.825, 0.895, 0.880, 0.880, 0.880, 0.830, 0.810, 0.840),
    0.35: (0.670, 0.660, 0.675, 0.705, 0.660, 0.695, 0.705, 0.590, 0.650, 0.645),
}
PAPER_REVERSE = {  # prior: (true prior on mazes 11-20, estimated prior on mazes 11-20), same four figures
    0.15: ((0.110, 0.220, 20000, 20000), (0.090, 0.220, 20000, 20000)),
    0.25: ((0.550, 0.850, 18333, 5574), (0.540, 0.730, 18524, 8030)),
    0.35: ((0.680, 0.660, 10466, 12125), (0.670, 0.580, 10684, 13546)),
}


def _run(task: tuple) -> tuple[tuple, AgentRun]:
    key, seed, config, n_episodes, prior = task
    return key, run_agent(seed, config, n_episodes, prior)


def _fmt(s: LearningSummary) -> str:
    return (f"success {s.success_early:.3f} -> {s.success_late:.3f}   "
            f"median steps {s.median_steps_early:7.0f} -> {s.median_steps_late:7.0f}")


def _fmt_paper(fig: tuple) -> str:
    return f"success {fig[0]:.3f} -> {fig[1]:.3f}   median steps {fig[2]:7.0f} -> {fig[3]:7.0f}"


def block_success(runs: list[AgentRun], block: int = 10) -> list[float]:
    reached = np.stack([r.reached for r in runs])
    return [float(reached[:, i:i + block].mean()) for i in range(0, reached.shape[1], block)]


def measure_speed(config: CanonicalConfig, n_episodes: int) -> None:
    maze = generate_maze(0)
    CanonicalAgent(replace(config, max_steps=50), 0).run_episode(maze)  # compile / load the numba cache
    t0 = time.perf_counter()
    run = run_agent(0, config, n_episodes)
    seconds = time.perf_counter() - t0
    steps = int(run.steps.sum())
    print(f"(a) speed: one agent (seed 0, E_right {config.decision_prior_right}), {n_episodes} episodes, "
          f"{steps} steps in {seconds:.1f} s = {steps / seconds:,.0f} steps/s (1 process; "
          f"{run.reached.sum()} episodes reached the goal)")
    # the same agent through the protocol engine, as `rigctl run cb22_maze --rig canonical` (every step stored)
    import tempfile

    from rigctl.session import RunOptions, start_run
    from rigctl.store import read_trials

    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(rig="canonical", seed=0, progress=False,
                             overrides=(f"episodes={n_episodes}", f"max_steps={config.max_steps}",
                                        f"decision_prior_right={config.decision_prior_right}"))
        t0 = time.perf_counter()
        out = start_run("cb22_maze", options, Path(tmp) / "run")
        engine_s = time.perf_counter() - t0
        stored = len(read_trials(out))
        size_mb = (out / "trials.bin").stat().st_size / 1e6
    print(f"    through the engine (rigctl run cb22_maze --rig canonical): {stored} steps stored in {engine_s:.1f} s "
          f"= {stored / engine_s:,.0f} steps/s, {engine_s / seconds:.2f}x the agent alone; trials.bin {size_mb:.0f} MB"
          f"{'' if stored == steps else ' (STEPS DIFFER from the agent alone)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="agents (= mazes) per prior")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds − 1")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--priors", type=float, nargs="+", default=[0.15, 0.25, 0.35])
    parser.add_argument("--reverse-priors", type=float, nargs="*", default=None,
                        help="priors to reverse-engineer (default: all of --priors; none: skip)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--speed-episodes", type=int, default=None, help="episodes of the speed run (default --episodes)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--csv-dir", type=Path, default=None, help="write one episodes CSV per condition here")
    args = parser.parse_args(argv)
    reverse_priors = args.priors if args.reverse_priors is None else args.reverse_priors
    base = replace(CanonicalConfig(), max_steps=args.max_steps)
    print("command: python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))
    if not args.skip_speed:
        measure_speed(replace(base, decision_prior_right=0.25), args.speed_episodes or args.episodes)

    if args.seeds <= 0:
        return 0
    t0 = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    tasks = [(("true", p, s), s, replace(base, decision_prior_right=p), args.episodes, None)
             for p in args.priors for s in seeds]
    with mp.get_context("fork").Pool(args.workers) as pool:
        runs = dict(pool.map(_run, tasks, chunksize=1))
        half = args.seeds // 2
        reverse_tasks, estimates = [], {}
        for p in reverse_priors:
            if p not in args.priors or half == 0:
                continue
            e_est = estimate_decision_prior([runs[("true", p, s)].first_decision_counts for s in seeds[:half]],
                                            args.max_steps)
            estimates[p] = e_est
            reverse_tasks += [(("est", p, s), s, replace(base, decision_prior_right=p), args.episodes, e_est)
                              for s in seeds[half:]]
        runs.update(dict(pool.map(_run, reverse_tasks, chunksize=1)))
    wall = time.perf_counter() - t0

    print(f"(b) learning: {args.seeds} agents x {args.episodes} episodes (cap {args.max_steps} steps) per prior; "
          f"success = goal reached within the cap; blocks = first and last 10 episodes; {args.workers} workers, "
          f"{wall:.0f} s")
    for p in args.priors:
        s = summarise([runs[("true", p, seed)] for seed in seeds])
        print(f"  E_right {p:.2f}  ours:  {_fmt(s)}")
        blocks = block_success([runs[("true", p, seed)] for seed in seeds])
        print("               success per 10-episode block: " + " ".join(f"{v:.2f}" for v in blocks))
        if p in PAPER and args.episodes == 100 and args.max_steps == 20000:
            print(f"               paper: {_fmt_paper(PAPER[p])}   (authors' released outputs, 20 agents)")
            print("               paper success per 10-episode block: "
                  + " ".join(f"{v:.2f}" for v in PAPER_BLOCKS[p]))
    if estimates:
        print(f"(c) reverse engineering: E estimated from episode 1 of seeds {seeds[0]}-{seeds[half - 1]}; agents "
              f"on seeds {seeds[half]}-{seeds[-1]} with the true and with the estimated E")
        for p, e_est in estimates.items():
            shares = prior_mass_by_first_move(e_est)
            print(f"  E_right {p:.2f}: estimated first-move shares up/down/left/right = "
                  + "/".join(f"{v:.3f}" for v in shares) + f" (sum of E_est {e_est.sum():.3f})")
            true_s = summarise([runs[("true", p, s)] for s in seeds[half:]])
            est_s = summarise([runs[("est", p, s)] for s in seeds[half:]])
            print(f"    true E:      {_fmt(true_s)}")
            print(f"    estimated E: {_fmt(est_s)}")
            if p in PAPER_REVERSE and args.episodes == 100 and args.max_steps == 20000:
                print(f"    paper true:  {_fmt_paper(PAPER_REVERSE[p][0])}")
                print(f"    paper est.:  {_fmt_paper(PAPER_REVERSE[p][1])}")
    if args.csv_dir is not None:
        args.csv_dir.mkdir(parents=True, exist_ok=True)
        for (kind, p, seed), run in sorted(runs.items()):
            write_episodes_csv(args.csv_dir / f"episodes_{kind}_E{p}_seed{seed}.csv",
                               run.episode_rows(decision_prior_right=p, prior=kind))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
