"""`rigctl model fit SOURCE... --out DIR` and `rigctl model table DATA_DIR`: the free-energy model of
Isomura et al. (2023) on released .mat files or rigctl run directories (docs/model.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rigctl.commands._argtypes import output_file
from rigctl.errors import ModelInputError


def _progress(total: int, desc: str):
    """A tqdm bar on stderr when fitting more than one culture; identity otherwise."""
    if total <= 1:
        return lambda it: it
    from tqdm import tqdm
    return lambda it: tqdm(it, total=total, desc=desc, unit="culture", file=sys.stderr, leave=False)


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _fit(args: argparse.Namespace) -> int:
    from rigctl.model.batch import FitFailure, fit_batch
    from rigctl.model.loading import load_source, pick_cultures
    from rigctl.model.plots import plot_fit

    if args.train_sessions < 1:
        raise ModelInputError(f"--train-sessions must be >= 1, got {args.train_sessions}")
    if args.baseline is not None and not (math.isfinite(args.baseline) and args.baseline > 0):
        raise ModelInputError(f"--baseline must be a positive finite number of spikes/stim, got {args.baseline}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ModelInputError(f"--out {out}: exists and is not a directory; allowed: a directory (created if missing)")
    sources = [load_source(Path(p)) for p in args.sources]
    picks = pick_cultures(sources, args.culture)
    batch = [tr for src in sources for tr in src.cultures]
    picked = [src.cultures[i] for src, i in picks]
    baseline, fits = fit_batch(batch, picked, args.mode, args.baseline, args.train_sessions, args.skip_bad,
                               wrap=_progress(len(picked), f"model fit ({args.mode})"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelInputError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    single = len(fits) == 1
    index = {"mode": args.mode, "baseline": baseline,
             "baseline_source": "given" if args.baseline is not None else "batch of all sources",
             "train_sessions": args.train_sessions, "sources": [str(p) for p in args.sources], "cultures": []}
    for f in fits:
        if isinstance(f, FitFailure):
            index["cultures"].append({"culture": f.name, "error": f.error})
            print(f"{f.name}: skipped: {f.error}", file=sys.stderr)
            continue
        d = out if single else out / _slug(f.name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.json").write_text(json.dumps(f.to_json(), allow_nan=False) + "\n")
        if not args.no_plots:
            plot_fit(f, d)
        s = f.to_json()["summary"]
        index["cultures"].append({"culture": f.name, "dir": str(d.relative_to(out)) or ".", **s})
        print(f"{f.name}: err_x(last 10) {s['err_x_last10']:.4f}  weight corr {s['weight_corr_last']:.3f}  "
              f"L {s['L_first']:.2f} -> {s['L_last']:.2f}")
    if not single:
        (out / "index.json").write_text(json.dumps(index, indent=1, allow_nan=False) + "\n")
    print(f"baseline B = {baseline:.5f} spikes/stim ({index['baseline_source']}); wrote {out}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from rigctl.model.loading import load_mat
    from rigctl.model.table import markdown_table, released_fits, table_rows

    data = Path(args.data_dir)
    files = sorted(data.glob("response_data_*.mat"))
    if not files:
        raise ModelInputError(f"{data}: no response_data_<condition>.mat files")
    by_cond = {}
    for f in files:
        src = load_mat(f)
        by_cond[src.condition] = src.cultures
    n = sum(len(v) for v in by_cond.values())
    from tqdm import tqdm
    with tqdm(total=2 * n, desc="model table", unit="fit", file=sys.stderr, leave=False) as bar:
        def wrap(items):
            for item in items:
                yield item
                bar.update(1)
        fits = {mode: released_fits(by_cond, mode, wrap=wrap) for mode in ("published", "online")}
    text = markdown_table(table_rows(fits))
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise ModelInputError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    sys.stdout.write(text)
    return 0


def register(sub) -> None:
    p = sub.add_parser("model", help="fit the free-energy model (Isomura et al. 2023)",
                       description="Fit the free-energy model of Isomura et al. (2023) to released .mat files "
                                   "or rigctl runs. See docs/model.md.")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    f = what.add_parser("fit", help="fit cultures, write model.json and PNG plots",
                        description="Fit each culture of the SOURCEs (released .mat files or run directories). "
                                    "All sources together form one batch for the baseline B. One culture: "
                                    "DIR/model.json and plots; several: DIR/<cond>_<n>/ each, plus DIR/index.json.")
    f.add_argument("sources", nargs="+", metavar="SOURCE", help="response_data_<cond>.mat or a run directory")
    f.add_argument("--culture", metavar="COND:N", help="fit only culture N (1-based) of condition COND")
    f.add_argument("--baseline", type=float, metavar="B",
                   help="batch baseline in spikes/stim (e.g. 2.64037 for the released bic and dzp); "
                        "default: computed from all cultures of the sources")
    f.add_argument("--mode", choices=("published", "online"), default="published",
                   help="published: the authors' analysis exactly; online: nothing from the future")
    f.add_argument("--train-sessions", type=int, default=10, metavar="N",
                   help="sessions used to estimate phi and the starting weights (default 10)")
    f.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    f.add_argument("--skip-bad", action="store_true",
                   help="record unusable cultures in index.json and go on, instead of stopping")
    f.add_argument("--no-plots", action="store_true", help="write model.json only")
    f.set_defaults(func=_fit)
    t = what.add_parser("table", help="per-condition prediction-error table over the released cultures",
                        description="Fit every released culture in both modes and print the markdown table of "
                                    "docs/model.md (err_x sessions 91-100, weight correlation at session 100, "
                                    "L(1) -> L(100)).")
    t.add_argument("data_dir", metavar="DATA_DIR", help="folder with response_data_<cond>.mat files")
    t.add_argument("--out", metavar="FILE", type=output_file, help="also write the table to FILE (in an existing "
                                                                    "directory)")
    t.set_defaults(func=_table)
