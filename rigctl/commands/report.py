"""`rigctl report RUN_DIR`: summary.json and PNG plots of a run."""

from __future__ import annotations

import argparse

from rigctl.report import write_report


def _report(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir)
    print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write summary.json and plots for a run",
                       description="Write RUN_DIR/summary.json (protocol, seed, per-session trials, mean evoked "
                                   "spikes, response to each source per electrode, selectivity, ensemble "
                                   "separation) and PNG plots into the run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=_report)
