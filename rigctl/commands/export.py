"""`rigctl export trials RUN_DIR`: the trial table as CSV on stdout; `rigctl export nwb RUN_DIR`: the whole run
as one NWB file (rigctl.interop.nwb; extra `[nwb]`)."""

from __future__ import annotations

import argparse
import sys

from rigctl.errors import RigctlError
from rigctl.export import write_trials_csv


def _export(args: argparse.Namespace) -> int:
    write_trials_csv(args.run_dir, sys.stdout)
    return 0


def _export_nwb(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rigctl.export import load_run_info
    from rigctl.interop.nwb import export_nwb, inspect_nwb, severe

    from rigctl.tasks.run_episodes import is_agent_run

    run_dir = Path(args.run_dir)
    info = load_run_info(run_dir)  # a missing or non-run directory is one line before any optional import
    if is_agent_run(info):
        raise RigctlError(f"{run_dir}: an agent rig's run ({info.meta.get('rig')}) has no electrodes or recordings "
                          "to put in NWB; allowed: a run on an MEA rig (its steps: `rigctl export trials`, its "
                          "episodes: `rigctl export episodes`)")
    out = Path(args.output) if args.output else run_dir / f"{run_dir.resolve().name}.nwb"
    path, warnings = export_nwb(run_dir, out)
    for text in warnings:
        print(f"rigctl export nwb: warning: {text}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    if not args.inspect:
        return 0
    findings = inspect_nwb(path)
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.importance.name] = counts.get(f.importance.name, 0) + 1
    for f in severe(findings):
        print(f"nwbinspector: {f.importance.name} {f.check_function_name} at {f.location}: {f.message}",
              file=sys.stderr)
    summary = ", ".join(f"{n} {name.lower()}" for name, n in sorted(counts.items())) or "no findings"
    print(f"nwbinspector: {summary}", file=sys.stderr)
    return 1 if severe(findings) else 0


def _export_episodes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rigctl.export import load_run_info
    from rigctl.tasks.episodes import write_dict_rows_csv, write_episodes_csv
    from rigctl.tasks.run_episodes import maze_episode_rows

    run_dir = Path(args.run_dir)
    info = load_run_info(run_dir)
    kind = info.meta.get("protocol_kind", "bss")
    if kind == "maze":
        rows = maze_episode_rows(run_dir)
        write = lambda out: write_episodes_csv(out, rows)  # noqa: E731
    elif kind == "pong":
        from rigctl.store import read_records
        from rigctl.tasks.pong import pong_episode_rows

        trials = read_records(run_dir / "trials.bin", info.trial_dtype)
        pong_rows = pong_episode_rows(trials, float(info.meta["sample_rate_hz"]))
        write = lambda out: write_dict_rows_csv(out, pong_rows, ("episode", "hits", "ace", "start_s", "end_s"))  # noqa: E731
    else:
        raise RigctlError(f"{run_dir}: a {kind} run has no episodes; allowed: a run of a task protocol "
                          "(kind: maze or pong)")
    try:
        out = open(args.output, "w", newline="") if args.output else sys.stdout
        try:
            n = write(out)
        finally:
            if out is not sys.stdout:
                out.close()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return 0
    except OSError as exc:
        raise RigctlError(f"{args.output or 'stdout'}: cannot write ({exc.strerror or exc})") from None
    print(f"{n} episodes", file=sys.stderr)
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
    n = what.add_parser("nwb", help="the whole run as one NWB file (pip install 'rigctl[nwb]')",
                        description="Write the run as NWB (docs/interop.md): electrodes with positions, kept raw "
                                    "samples (int16, in volts through `conversion`), detected spikes (multi-unit, "
                                    "one row per electrode), every delivered stimulus, the trials with the "
                                    "protocol's fields, metadata and the online models' results. An unfinished "
                                    "run is exported with a warning.")
    n.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rigctl run`")
    n.add_argument("-o", "--output", metavar="FILE.nwb", help="output file (its directory must exist; "
                                                              "default RUN_DIR/<run name>.nwb)")
    n.add_argument("--inspect", action="store_true", help="run nwbinspector on the file; exit 1 on a critical "
                                                          "or error finding")
    n.set_defaults(func=_export_nwb)
    e = what.add_parser("episodes", help="one CSV row per episode of a task run (maze, pong)",
                        description="Write one CSV row per episode of a task run. Maze: episode,steps,reached "
                                    "(0/1) and the moves made (up,down,left,right); on an MEA also complete (0: cut "
                                    "short by the run's end), start_s, end_s. Agent runs count steps as the CB22 "
                                    "paper (its `time`: the episode's last step). Pong: episode,hits (a rally per "
                                    "episode), ace, start_s, end_s.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rigctl run`")
    e.add_argument("-o", "--output", metavar="FILE.csv", help="write here instead of stdout")
    e.set_defaults(func=_export_episodes)
