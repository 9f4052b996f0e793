"""`rigctl keys`: CURVE key pairs for the control channel and the stream, and the rig's allow-list."""

from __future__ import annotations

import argparse
from pathlib import Path

from rigctl import keys


def _new(args: argparse.Namespace) -> int:
    where = keys.key_dir(args.keys)
    public, secret = keys.new_keypair(args.name, where)
    print(f"public key: {public}\nsecret key: {secret} (0600; never copy it off this machine)")
    print(keys.load_public(str(public), where).decode("ascii"))
    return 0


def _allow(args: argparse.Namespace) -> int:
    where = keys.key_dir(args.keys)
    target = keys.allow(args.public_key, where, args.name)
    print(f"allowed: {target} (takes effect for runs started from now on)")
    return 0


def _list(args: argparse.Namespace) -> int:
    where = keys.key_dir(args.keys)
    for path in sorted(where.glob("*.key")):
        print(f"key      {path.stem:20s} {keys.load_public(str(path), where).decode('ascii')}")
    for public, name in sorted(keys.allowed_clients(where).items(), key=lambda kv: kv[1]):
        print(f"allowed  {name:20s} {public.decode('ascii')}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("keys", help="CURVE keys for `run --control` / `--stream-curve` and the allow-list",
                       description="Key pairs live in the key directory (default $RIGCTL_KEYS or "
                                   "~/.config/rigctl/keys); the rig accepts the clients whose public keys are "
                                   "in its allowed/ subdirectory. See docs/control.md.")
    p.add_argument("--keys", metavar="DIR", help="key directory")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    n = ksub.add_parser("new", help="make a key pair NAME (NAME.key public, NAME.key_secret 0600)",
                        description="Make a CURVE key pair: the rig's (`rig`, used by `run --control`) or a "
                                    "controller's.")
    n.add_argument("name", metavar="NAME")
    n.add_argument("--keys", metavar="DIR", help="key directory", default=argparse.SUPPRESS)
    n.set_defaults(func=_new)
    a = ksub.add_parser("allow", help="add a client's public key to the rig's allow-list",
                        description="Copy a client's public key (a NAME.key file or a z85 string) into the "
                                    "allow-list; the client is known by NAME in the control log.")
    a.add_argument("public_key", type=Path, metavar="PUBLIC_KEY")
    a.add_argument("--name", help="client name (default: the file's name)")
    a.add_argument("--keys", metavar="DIR", help="key directory", default=argparse.SUPPRESS)
    a.set_defaults(func=_allow)
    ls = ksub.add_parser("list", help="key pairs and allowed clients", description="List key pairs and the "
                                                                                   "allow-list.")
    ls.add_argument("--keys", metavar="DIR", help="key directory", default=argparse.SUPPRESS)
    ls.set_defaults(func=_list)
