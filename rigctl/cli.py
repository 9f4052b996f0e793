"""The `rigctl` command line. Each sub-command lives in its own module under `rigctl.commands`
and exposes `register(subparsers)`; modules are discovered, so adding a command touches one file."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import rigctl
import rigctl.commands
from rigctl.errors import RigctlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rigctl",
        description="Closed-loop controller for microelectrode-array rigs (real or simulated).",
    )
    parser.add_argument("--version", action="version", version=f"rigctl {rigctl.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(rigctl.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"rigctl.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RigctlError as exc:
        print(f"rigctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rigctl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rigctl export trials RUN | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
