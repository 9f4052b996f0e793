"""`rigctl export trials RUN_DIR`: the trial table as CSV on stdout."""

from __future__ import annotations

import argparse
import sys

from rigctl.export import write_trials_csv


def _export(args: argparse.Namespace) -> int:
    write_trials_csv(args.run_dir, sys.stdout)
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run's data", description="Export a run's data.")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    t = what.add_parser("trials", help="one CSV row per trial on stdout",
                        description="Write one CSV row per trial to stdout, header "
                                    "session,trial,sample,s1,s2,o1..o32,r1..rN (session and trial 1-based; "
                                    "sample = the pulse's sample index; r in the rig's electrode order).")
    t.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rigctl run`")
    t.set_defaults(func=_export)
