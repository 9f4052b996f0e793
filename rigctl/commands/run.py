"""`rigctl run`: run a protocol on a rig, or resume a stored run; then write the report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rigctl.commands import _argtypes
from rigctl.errors import RigctlError
from rigctl.protocol import DRUGS, add_set_argument
from rigctl.session import RunOptions, resume_run, start_run


def _run(args: argparse.Namespace) -> int:
    options = RunOptions(rig=args.rig or "sim-events", seed=args.seed, sessions=args.sessions, drug=args.drug,
                         realtime=args.realtime, chunk_ms=args.chunk_ms, progress=not args.no_progress,
                         overrides=tuple(args.set))
    t0 = time.monotonic()
    from rigctl.plate_file import is_plate_dir, is_plate_file

    if (args.resume and is_plate_dir(args.resume)) or (
            not args.resume and args.protocol and is_plate_file(args.protocol)):
        return _run_plate(args, t0)
    if args.workers != 1:
        raise RigctlError("--workers: only for a plate file (kind: plate) or a plate directory")
    publisher = _publisher(args)
    control = None
    try:
        control = _control_server(args)
        if args.resume:
            if args.protocol or args.set:
                raise RigctlError("give either PROTOCOL (with --set) or --resume RUN_DIR, not both")
            run_dir = resume_run(Path(args.resume), options, publisher, control=control)
        else:
            if not args.protocol:
                raise RigctlError("PROTOCOL is required (a library name such as isomura2023_bss, or a path), "
                                  "or --resume RUN_DIR")
            run_dir = start_run(args.protocol, options, args.out, publisher, control=control)
    finally:
        if publisher is not None:
            publisher.close()
    print(f"run complete in {time.monotonic() - t0:.1f} s: {run_dir}", file=sys.stderr)
    if not args.no_report:
        from rigctl.report import write_report
        summary_path = write_report(run_dir)
        from rigctl.commands.report import print_task_figures
        print_task_figures(summary_path)
        print(f"report: {summary_path}", file=sys.stderr)
    print(run_dir)
    return 0




def _run_plate(args: argparse.Namespace, t0: float) -> int:
    """A plate file (kind: plate) or a plate directory: every well at once (rigctl.plate_session)."""
    from rigctl.plate_session import resume_plate, start_plate
    from rigctl.report_plate import write_plate_report

    given = [flag for flag, value in (("--set", args.set), ("--seed", args.seed), ("--sessions", args.sessions),
                                      ("--drug", args.drug), ("--stream", args.stream), ("--control", args.control),
                                      ("--realtime", args.realtime), ("--chunk-ms", args.chunk_ms)) if value]
    if given:
        raise RigctlError(f"{', '.join(given)}: not for a plate; a plate file sets each well's seed, drug and "
                          "fields (its conditions, `set` and `wells`)")
    progress = not args.no_progress
    if args.resume:
        plate_dir = resume_plate(Path(args.resume), progress, workers=args.workers)
    else:
        plate_dir = start_plate(args.protocol, args.rig or "sim-plate", args.out, progress, workers=args.workers)
    print(f"plate complete in {time.monotonic() - t0:.1f} s: {plate_dir}", file=sys.stderr)
    if not args.no_report:
        def warn(message: str) -> None:
            print(f"rigctl report: warning: {message}", file=sys.stderr)
        print(f"report: {write_plate_report(plate_dir, warn)}", file=sys.stderr)
    print(plate_dir)
    return 0


def _publisher(args: argparse.Namespace):
    if not args.stream:
        if args.stream_curve or args.stream_spikes_hz or args.stream_raw_hz:
            raise RigctlError("--stream-curve, --stream-spikes-hz and --stream-raw-hz need --stream ENDPOINT")
        return None
    from rigctl.control import is_loopback
    from rigctl.stream import Publisher, check_endpoint
    check_endpoint(args.stream)
    curve = None
    if args.stream_curve:
        from rigctl import keys
        where = keys.key_dir(args.keys)
        curve = (keys.load_keypair(args.control_key, where), keys.allowed_clients(where))
    elif not is_loopback(args.stream):
        print(f"warning: --stream {args.stream} is reachable from other machines without authentication; "
              "--stream-curve admits only the allow-list's keys", file=sys.stderr)
    publisher = Publisher(args.stream, curve=curve, spikes_per_s=args.stream_spikes_hz or 0.0,
                          raw_per_s=args.stream_raw_hz or 0.0)
    print(f"stream: {publisher.endpoint}{' (CURVE)' if curve else ''}", file=sys.stderr, flush=True)
    return publisher


def _control_server(args: argparse.Namespace):
    """The control endpoint of `--control`: the rig's key pair and allow-list from the key directory."""
    if args.control is None:
        return None
    from rigctl import keys
    from rigctl.control import ControlServer
    from rigctl.stream import check_endpoint
    check_endpoint(args.control, "--control")
    where = keys.key_dir(args.keys)
    server = keys.load_keypair(args.control_key, where)
    clients = keys.allowed_clients(where)
    if not clients:
        raise RigctlError(f"--control: the allow-list {keys.allow_dir(where)} is empty; add a client's public "
                          "key with `rigctl keys allow FILE.key`")
    return ControlServer(args.control, server, clients, lease_s=args.control_lease_s)


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run a protocol on a rig (or resume a run)",
        description="Run a protocol on a rig, storing raw data, spikes, stimuli and per-trial responses in "
                    "a run directory, then write its report. A run killed at any point continues with "
                    "`rigctl run --resume RUN_DIR`.")
    p.add_argument("protocol", nargs="?", metavar="PROTOCOL",
                   help="protocol YAML path or library name (e.g. isomura2023_bss, isomura2023_bss_mix0)")
    add_set_argument(p)
    p.add_argument("--rig", default=None,
                   help="sim (voltage through the whole signal path), sim-events (the network's spike events, "
                        "fast), canonical (the CB22 canonical network as an agent, for kind: maze protocols), "
                        "sim-plate / sim-plate-voltage (a simulated culture per well, for a plate file), or a rig "
                        "file rigs/<name>.yaml (default: sim-events; sim-plate for a plate file)")
    p.add_argument("--sessions", type=_argtypes.int_in(1, 100000), help="run only the first N sessions")
    p.add_argument("--seed", type=_argtypes.seed,
                   help="seed of the schedule and the simulated culture (default: the protocol's)")
    p.add_argument("--drug", choices=DRUGS, help="simulated rig condition (default: the protocol's)")
    p.add_argument("--out", type=Path, help="run directory to create (default: runs/<protocol>-seed<N>-<time>)")
    p.add_argument("--realtime", action="store_true", help="pace the simulated rig to the wall clock")
    p.add_argument("--chunk-ms", type=_argtypes.chunk_ms, help="chunk length of the simulated rig in ms (0.1 to 10000; default 50, "
                   "10 for --rig sim with --realtime; an open-loop protocol on sim-events, not paced, "
                   "reads 1-s chunks unless this is given)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (or plate)")
    p.add_argument("--workers", type=_argtypes.int_in(1, 64), default=1,
                   help="a plate only: split its wells over N processes (default 1: one process, one clock)")
    p.add_argument("--stream", metavar="ENDPOINT", help="publish trials and session results on a ZMQ PUB socket "
                                                       "(e.g. tcp://127.0.0.1:5600)")
    p.add_argument("--stream-curve", action="store_true",
                   help="require CURVE on the stream: only keys in the allow-list may subscribe (for a stream "
                        "that leaves the machine)")
    p.add_argument("--stream-spikes-hz", type=_argtypes.finite_float_in(0.1, 100.0),
                   help="also publish the binary `spikes` topic, at most this many messages a second")
    p.add_argument("--stream-raw-hz", type=_argtypes.finite_float_in(0.1, 100.0),
                   help="also publish the binary `raw` topic: one chunk of int16 samples, at most this many a second")
    p.add_argument("--control", nargs="?", const="tcp://127.0.0.1:*", metavar="ENDPOINT",
                   help="open the CURVE-authenticated control endpoint (default tcp://127.0.0.1 on a free port; "
                        "see docs/control.md)")
    p.add_argument("--keys", metavar="DIR", help="key directory (default $RIGCTL_KEYS or ~/.config/rigctl/keys)")
    p.add_argument("--control-key", default="rig", metavar="NAME",
                   help="the rig's key pair in the key directory (default: rig)")
    p.add_argument("--control-lease-s", type=_argtypes.finite_float_in(1.0, 86400.0), default=300.0,
                   help="a controller loses control after this long without a command (default 300)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=_run)
