"""`rigctl twin fit --culture COND:N ... --out DIR` and `rigctl twin table DIR`: the digital twin of a
released culture (a simulated culture fitted to it, then scored with the model's err_x; docs/twin.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rigctl.commands._argtypes import int_in, seed
from rigctl.errors import ModelInputError

#: Released cultures per condition (data README, spec 1.5).
RELEASED = {"bic": 6, "dzp": 7, "mix0": 4, "mix50": 4}
DEFAULT_BUDGET = 240
_CULTURE = re.compile(r"^([a-z0-9]+):(\d+)$")


def _allowed() -> str:
    return "COND:N with " + ", ".join(f"{c}:1..{n}" for c, n in RELEASED.items())


def culture_arg(text: str) -> tuple[str, int]:
    """'mix0:1' -> ('mix0', 1); anything else is one argparse error line naming what is allowed."""
    m = _CULTURE.match(text.strip())
    if not m or m.group(1) not in RELEASED or not 1 <= int(m.group(2)) <= RELEASED[m.group(1)]:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: {_allowed()}")
    return m.group(1), int(m.group(2))


def default_data_dir() -> Path:
    """../shared/data/isomura2023 beside the repository (where the spec keeps the released files)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isomura2023"


def _load(data_dir: Path, cond: str):
    from rigctl.model.loading import load_mat

    path = data_dir / f"response_data_{cond}.mat"
    if not path.is_file():
        raise ModelInputError(f"{path}: released data file not found (give the folder of response_data_<cond>.mat "
                              f"with --data-dir)")
    return load_mat(path)


def _model_fits(data_dir: Path, cond: str, index: int, cache: dict) -> dict:
    """The free-energy model for the same culture, both modes, as `rigctl model table` fits it."""
    from rigctl.model.batch import fit_batch
    from rigctl.model.table import AUTHORS_NEW_LAB_BASELINE, RELEASED_BATCHES

    conds = next(b for b in RELEASED_BATCHES if cond in b)
    for c in conds:
        if c not in cache:
            cache[c] = _load(data_dir, c).cultures
    batch = [tr for c in conds for tr in cache[c]]
    tr = cache[cond][index - 1]
    out = {}
    for mode in ("published", "online"):
        given = AUTHORS_NEW_LAB_BASELINE if (mode == "published" and "bic" in conds) else None
        _, fits = fit_batch(batch, [tr], mode, given)
        out[mode] = fits[0]
    return out


def _fit_one(args: argparse.Namespace, cond: str, index: int, cache: dict) -> dict:
    import numpy as np

    from rigctl.model.twin_score import ensemble_state_means, score
    from rigctl.twin import params as P
    from rigctl.twin.drive import DRUG_BY_CONDITION
    from rigctl.twin.fit import SIGMA0, make_target, optimise, run
    from rigctl.twin.plots import plot_twin

    t_start = time.perf_counter()
    name = f"{cond}:{index}"
    if cond not in cache:
        cache[cond] = _load(args.data_dir, cond).cultures
    if index > len(cache[cond]):
        raise ModelInputError(f"--culture {name}: the file has cultures {cond}:1..{len(cache[cond])}")
    tr = cache[cond][index - 1]
    if not 1 <= args.sessions <= tr.n_sessions or args.fit_sessions > args.sessions:
        raise ModelInputError(f"--sessions {args.sessions} / --fit-sessions {args.fit_sessions}: allowed: "
                              f"1 <= fit sessions <= sessions <= {tr.n_sessions}")
    models = _model_fits(args.data_dir, cond, index, cache)
    pub = models["published"]
    out = args.out / f"{cond}_{index}"
    out.mkdir(parents=True, exist_ok=True)
    drug = DRUG_BY_CONDITION[cond]
    target = make_target(tr, drug, args.fit_sessions, args.seed)
    opt = optimise(target, args.budget, args.seed, args.workers, out / "evaluations.jsonl", label=f"{name} ")
    t_fit = time.perf_counter() - t_start
    best = opt["best"]["params"]
    print(f"{name}: best loss {opt['best']['loss']:.5f} after {opt['evaluations']} evaluations "
          f"({t_fit / 60:.1f} min); running sessions 1..{args.sessions}", file=sys.stderr, flush=True)
    t1 = time.perf_counter()
    k = args.sessions
    m = tr.sess < k
    r = run(best, target.o_session, k, drug, args.seed)
    t_final = time.perf_counter() - t1
    s, sess = tr.s[m], tr.sess[m]
    sc = score(pub.x[m], pub.x_raw[m], r, s, sess, k, pub.ensembles, pub.baseline)
    np.save(out / "twin_counts.npy", np.minimum(r, 255).astype(np.uint8))  # [sessions * 256, 64], data columns
    # the untuned twin through the same sessions: did fitting help err_x?
    t2 = time.perf_counter()
    r_def = run(P.defaults(), target.o_session, k, drug, args.seed)
    sc_def = score(pub.x[m], pub.x_raw[m], r_def, s, sess, k, pub.ensembles, pub.baseline)
    t_def = time.perf_counter() - t2
    cfg, eff = P.apply(best)
    twin_means = ensemble_state_means(r, s, sess, k, pub.ensembles)
    culture_means = ensemble_state_means(tr.r[m], s, sess, k, pub.ensembles)
    rec = {
        "culture": name, "drug": drug, "seed": args.seed, "budget": args.budget, "workers": args.workers,
        "fit_sessions": args.fit_sessions, "sessions": k, "evaluations": opt["evaluations"],
        "popsize": opt["popsize"], "optimiser": f"CMA-ES (cma), unit box, sigma0 {SIGMA0}, evaluation 1 = defaults",
        "params": best, "loss": opt["best"]["loss"], "best_evaluation": opt["best"]["evaluation"],
        "loss_defaults": None, "parameter_table": [asdict(p) for p in P.PARAMS],
        **sc,
        "defaults": {"params": P.defaults(), "loss": None,
                     **{key: v for key, v in sc_def.items() if key.endswith("last10") or key == "err_x"}},
        "scored_sessions": [max(1, k - 9), k],
        "model": {mode: float(f.traj.err_x[max(0, k - 10):k].mean()) for mode, f in models.items()},
        "model_err_x": {mode: f.traj.err_x.tolist() for mode, f in models.items()},
        "baseline": pub.baseline,
        "ensembles": {"g1": [int(e) + 1 for e in pub.ensembles.g1], "g2": [int(e) + 1 for e in pub.ensembles.g2],
                      "numbering": "1-based columns of r"},
        "ensemble_response": {"states": ["11", "10", "01", "00"],
                              "twin": np.nan_to_num(twin_means).tolist(),
                              "culture": np.nan_to_num(culture_means).tolist()},
        "wall_time_s": {"evaluation_mean": opt["mean_eval_seconds"], "fit": t_fit, "final_run": t_final, "defaults_run": t_def,
                        "total": time.perf_counter() - t_start},
        "config": {**asdict(cfg), "efficacy_a": eff[0], "efficacy_b": eff[1]},
        "notes": ["data columns 33-64 = stimulating electrodes o1..o32 (protocol isomura2023_bss order); "
                  "columns 1-32 = record-only electrodes in row-major order: their true positions are unknown, "
                  "so the loss compares them sorted",
                  "err_x: culture x (published pipeline) vs the twin's per-session, per-state mean x (the twin's "
                  "own normalisation, the culture's ensembles and batch baseline)"],
    }
    first = json.loads((out / "evaluations.jsonl").read_text().splitlines()[0])
    rec["loss_defaults"] = rec["defaults"]["loss"] = first["loss"]
    (out / "twin.json").write_text(json.dumps(rec, indent=1, allow_nan=False) + "\n")
    plot_twin(rec, out / "twin.png")
    print(f"{name}: twin err_x(sessions {max(1, k - 9)}-{k}) {rec['err_x_last10']:.4f}; model published "
          f"{rec['model']['published']:.4f}, online {rec['model']['online']:.4f}; wrote {out}", flush=True)
    return rec


def _fit(args: argparse.Namespace) -> int:
    from rigctl.model.twin_score import markdown_table

    from rigctl.twin.fit import require_cma

    if args.out.exists() and not args.out.is_dir():
        raise ModelInputError(f"--out {args.out}: exists and is not a directory; allowed: a directory (created)")
    require_cma()  # before any culture is simulated
    cache: dict = {}
    records = [_fit_one(args, cond, index, cache) for cond, index in args.culture]
    sys.stdout.write(markdown_table(records))
    return 0


def read_records(root: Path) -> list[dict]:
    files = sorted(root.glob("*/twin.json"))
    if not files:
        raise ModelInputError(f"{root}: no <culture>/twin.json (run `rigctl twin fit --out {root}` first)")
    out = []
    for f in files:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError) as exc:
            raise ModelInputError(f"{f}: unreadable twin.json ({exc})") from None
    return out


def _table(args: argparse.Namespace) -> int:
    from rigctl.model.twin_score import markdown_table

    sys.stdout.write(markdown_table(read_records(args.dir)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("twin", help="fit a simulated culture (digital twin) to a released culture",
                       description="A simulated culture fitted to one released culture of Isomura et al. (2023), "
                                   "then scored with the free-energy model's err_x. See docs/twin.md.")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    f = what.add_parser("fit", help="fit twins, write DIR/<cond>_<n>/twin.json, the evaluation log and a figure",
                        description="For each --culture: drive a simulated culture with the culture's own stimulus "
                                    "sequence, fit the parameters of docs/twin.md to its first --fit-sessions "
                                    "sessions (CMA-ES), run the best twin through all sessions and score it with "
                                    "err_x beside the free-energy model. Prints the table at the end.")
    f.add_argument("--culture", type=culture_arg, action="append", required=True, metavar="COND:N",
                   help=f"a released culture, 1-based ({_allowed()}); repeat for several")
    f.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    f.add_argument("--budget", type=int_in(1, 100000), default=DEFAULT_BUDGET, metavar="N",
                   help=f"simulator evaluations per culture (default {DEFAULT_BUDGET})")
    f.add_argument("--seed", type=seed, default=0, help="network seed of the twin and optimiser seed (default 0)")
    f.add_argument("--workers", type=int_in(1, 64), default=2, metavar="W",
                   help="parallel evaluation processes (default 2)")
    f.add_argument("--fit-sessions", type=int_in(1, 100), default=10, metavar="K",
                   help="sessions of the culture the loss uses (default 10)")
    f.add_argument("--sessions", type=int_in(1, 100), default=100, metavar="K",
                   help="sessions the fitted twin runs and is scored on (default 100; fewer for a quick look)")
    f.add_argument("--data-dir", type=Path, default=default_data_dir(), metavar="DIR",
                   help="folder of response_data_<cond>.mat (default ../shared/data/isomura2023 beside the repo)")
    f.set_defaults(func=_fit)
    t = what.add_parser("table", help="markdown table of the twins in DIR beside the free-energy model",
                        description="One row per DIR/<cond>_<n>/twin.json: twin err_x (sessions 91-100) beside "
                                    "the model's (published and online modes), fit loss and wall time.")
    t.add_argument("dir", type=Path, metavar="DIR", help="the --out folder of `rigctl twin fit`")
    t.set_defaults(func=_table)
