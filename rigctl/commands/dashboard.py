"""`rigctl dashboard RUN_DIR_OR_STREAM`: a local web page showing a run live (rigctl.dashboard)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from rigctl.errors import RigctlError


def _dashboard(args: argparse.Namespace) -> int:
    from rigctl import keys
    from rigctl.control import is_loopback, request
    from rigctl.dashboard import DashboardConfig, require_bokeh, serve
    from rigctl.live_view import RunDirFeed, StreamFeed
    from rigctl.stream import check_endpoint, subscribe

    require_bokeh()
    if args.nice:
        os.nice(args.nice)  # the page must never take the CPU from a loop on the same PC
    where = keys.key_dir(args.keys)
    is_stream = "://" in args.target
    if is_stream:
        check_endpoint(args.target, "stream address")
        server_key = keys.load_public(args.stream_server_key, where) if args.stream_server_key else None
        client = keys.load_keypair(args.key or "control", where) if server_key is not None else None
        subscribe(args.target, server_key=server_key, client=client).close()  # a bad key fails here, once

        def make_feed():
            return StreamFeed(subscribe(args.target, server_key=server_key, client=client))
    else:
        RunDirFeed(Path(args.target))  # names a missing or foreign directory now, not in the page

        def make_feed():
            return RunDirFeed(Path(args.target))
    control = None  # no buttons without a key
    if args.key:
        from rigctl.commands.control import resolve_target
        client_key = keys.load_keypair(args.key, where)
        target = args.control or (None if is_stream else args.target)
        if target is None:
            raise RigctlError("--key with a stream needs --control ADDRESS_OR_RUN_DIR for the buttons")

        def send(cmd: str) -> dict:
            endpoint, server = resolve_target(target, args.server_key, where)  # again: a resume moves it
            return request(endpoint, server, client_key, cmd, timeout_s=3.0)
        control = send
    token = None if is_loopback(f"tcp://{args.address}:1") else secrets.token_urlsafe(18)
    config = DashboardConfig(address=args.address, port=args.port, token=token, control=control)

    def ready(url: str) -> None:
        print(f"dashboard: {url}", flush=True)
        if token is not None:
            print("warning: reachable from other machines; the token in the URL is its only key", file=sys.stderr)
    serve(make_feed, config, ready)
    return 0


def register(sub) -> None:
    from rigctl.commands._argtypes import int_in
    p = sub.add_parser("dashboard", help="serve a live web page of a run (progress, raster, MEA grid, model)",
                       description="Serve a local web page showing a run live: progress and ETA, a spike raster "
                                   "of the last seconds, evoked count per electrode on the MEA grid, evoked count "
                                   "and ensemble separation per session, the free-energy curve with its "
                                   "predictions, overruns and faults. The source is a run directory (read as it "
                                   "grows) or a stream address (`rigctl run --stream`). With --key, the page has "
                                   "pause/resume/abort buttons (docs/control.md). Needs the [live] extra.")
    p.add_argument("target", metavar="RUN_DIR_OR_STREAM")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; elsewhere the URL carries a random token)")
    p.add_argument("--port", type=int_in(0, 65535), default=0, help="port (default 0: a free one)")
    p.add_argument("--key", metavar="NAME", help="your control key: shows pause/resume/abort buttons")
    p.add_argument("--keys", metavar="DIR", help="key directory (default $RIGCTL_KEYS or ~/.config/rigctl/keys)")
    p.add_argument("--control", metavar="ADDRESS_OR_RUN_DIR", help="the run's control endpoint, for a stream "
                                                                     "TARGET (default: the run directory)")
    p.add_argument("--server-key", metavar="KEY", help="the rig's public key for a control ADDRESS")
    p.add_argument("--stream-server-key", metavar="KEY", help="the rig's public key of a CURVE stream "
                                                              "(`run --stream-curve`); your key is --key")
    p.add_argument("--nice", type=int_in(0, 19), default=10,
                   help="lower the dashboard's CPU priority by this much (default 10: a loop on the same PC "
                        "comes first)")
    p.set_defaults(func=_dashboard)
