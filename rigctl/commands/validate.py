"""`rigctl validate PROTOCOL`: check a protocol file without touching a rig."""

from __future__ import annotations

import argparse
from pathlib import Path

from rigctl.errors import ProtocolError
from rigctl.protocol import add_set_argument, load_protocol
from rigctl.safety import SafetyLimits


def _validate(args: argparse.Namespace) -> int:
    given = Path(args.protocol)
    if given.is_dir() and (given / "run.json").is_file():
        raise ProtocolError(f"{given}: is a run directory, not a protocol file; validate its protocol: "
                            f"{given / 'protocol.yaml'}")
    protocol = load_protocol(args.protocol, overrides=args.set)
    if getattr(protocol, "mea", True) is None:  # a task only an agent rig plays (kind: maze without `mea:`)
        print(f"{protocol.source_file}: OK ({protocol.kind}; for an agent rig: --rig canonical)")
        for line in protocol.describe(None):
            print(f"  {line}")
        return 0
    plan = protocol.make_protocol(protocol.seed, 25000.0)
    limits = SafetyLimits()
    for command in (plan.trial(i, 0).command for i in range(min(plan.n_trials, 1000))) if plan.open_loop \
            else plan.candidate_commands():
        if command is not None:
            limits.check_pulse(command.pulse)
    print(f"{protocol.source_file}: OK ({protocol.kind})")
    for line in protocol.describe(plan):
        print(f"  {line}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a protocol file",
                       description="Validate a protocol file (path or library name) and print what it will do; "
                                   "errors name the file, line, field, bad value and what is allowed.")
    p.add_argument("protocol", metavar="PROTOCOL", help="protocol YAML path or library name")
    add_set_argument(p)
    p.set_defaults(func=_validate)
