"""`rigctl report RUN_DIR`: summary.json and PNG plots of a run (of an unfinished run too, with a warning)."""

from __future__ import annotations

import argparse
import sys

from rigctl.report import write_report


def _warn(message: str) -> None:
    print(f"rigctl report: warning: {message}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    from rigctl.report_sweep import is_sweep_dir, write_sweep_report

    from rigctl.plate_file import is_plate_dir

    if is_plate_dir(args.run_dir):
        from rigctl.report_plate import write_plate_report
        path = write_plate_report(args.run_dir, warn=_warn)
    elif is_sweep_dir(args.run_dir):
        path = write_sweep_report(args.run_dir)
    else:
        path = write_report(args.run_dir, warn=_warn)
    print_task_figures(path)
    print(path)
    return 0


def print_task_figures(summary_path) -> None:
    """A run's headline figures on stderr: a task's (learning curve ends, rallies), a BSS run's responses, a
    spontaneous run's bursts."""
    import json

    from rigctl.report import response_lines
    from rigctl.report_spontaneous import spontaneous_lines
    from rigctl.report_task import task_lines

    summary = json.loads(open(summary_path).read())
    lines = (task_lines(summary.get("task") or {}) + response_lines(summary.get("response") or {})
             + spontaneous_lines(summary.get("spontaneous") or {}))
    for label, entry in (summary.get("conditions") or {}).items():
        pooled = entry.get("episodes_pooled")
        if pooled:
            lines += task_lines({"task": "maze", **pooled}, label)
    for line in lines:
        print(line, file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("report", help="write summary.json and plots for a run",
                       description="Write RUN_DIR/summary.json (protocol, seed, run status, per-session trials, "
                                   "mean evoked spikes, response to each source per electrode, selectivity, "
                                   "ensemble separation) and PNG plots into the run directory. A run that is not "
                                   "complete (running, interrupted, failed) is reported over the trials it has, "
                                   "with a warning on stderr. Given a sweep directory (`rigctl sweep`), it writes "
                                   "sweep_summary.json and sweep.png: each figure of sweep.csv per condition, mean "
                                   "and SD over seeds.")
    p.add_argument("run_dir", metavar="RUN_DIR|SWEEP_DIR")
    p.set_defaults(func=_report)
