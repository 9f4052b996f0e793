"""`rigctl control TARGET COMMAND [TEXT]`: the client of a run's control endpoint (docs/control.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rigctl import keys
from rigctl.control import ControlError, request
from rigctl.steering import COMMANDS
from rigctl.store import load_run_meta


def resolve_target(target: str, server_key: str | None, where: Path) -> tuple[str, bytes]:
    """(endpoint, server public key) of a run directory (from run.json) or an address (key from
    --server-key, default the local rig key)."""
    if "://" not in target:
        meta = load_run_meta(Path(target))
        endpoint = meta.get("control_endpoint")
        if not endpoint:
            raise ControlError(f"{target}: no control endpoint (status {meta.get('status', '?')}); the run is not "
                               "running, or was started without --control")
        return endpoint, (keys.load_public(server_key, where) if server_key
                          else meta["control_server_key"].encode("ascii"))
    return target, keys.load_public(server_key or "rig", where)


def _control(args: argparse.Namespace) -> int:
    where = keys.key_dir(args.keys)
    if args.command_name == "mark" and not args.text:
        raise ControlError("mark needs a TEXT")
    if args.command_name != "mark" and args.text:
        raise ControlError(f"{args.command_name} takes no TEXT")
    endpoint, server = resolve_target(args.target, args.server_key, where)
    client = keys.load_keypair(args.key, where)
    reply = request(endpoint, server, client, args.command_name, " ".join(args.text), args.timeout_s)
    if not reply.get("ok"):
        raise ControlError(f"{args.command_name} refused: {reply.get('error')}")
    if args.command_name == "status":
        print(json.dumps({**reply["status"], "controller": reply.get("controller")}))
    else:
        print(reply.get("message", "ok"))
    return 0


def register(sub) -> None:
    from rigctl.commands._argtypes import finite_float_in
    p = sub.add_parser("control", help="status, pause, resume, abort or mark a run started with --control",
                       description="Send one command to a run's CURVE-authenticated control endpoint. TARGET is "
                                   "the run directory (endpoint and server key from run.json) or an address "
                                   "(tcp://HOST:PORT; server key from --server-key). Your key must be in the "
                                   "rig's allow-list. One controller at a time: see docs/control.md.")
    p.add_argument("target", metavar="ADDRESS_OR_RUN_DIR")
    p.add_argument("command_name", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    p.add_argument("text", nargs="*", metavar="TEXT", help="the annotation of `mark`")
    p.add_argument("--key", default="control", metavar="NAME", help="your key pair (default: control)")
    p.add_argument("--keys", metavar="DIR", help="key directory (default $RIGCTL_KEYS or ~/.config/rigctl/keys)")
    p.add_argument("--server-key", metavar="KEY", help="the rig's public key (z85, file or key name) for an ADDRESS")
    p.add_argument("--timeout-s", type=finite_float_in(0.1, 600.0), default=5.0,
                   help="wait this long for an answer (default 5)")
    p.set_defaults(func=_control)
