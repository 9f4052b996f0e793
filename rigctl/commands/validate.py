"""`rigctl validate PROTOCOL`: check a protocol file without touching a rig."""

from __future__ import annotations

import argparse
from pathlib import Path

from rigctl.errors import ProtocolError
from rigctl.protocol import BssSchedule, load_protocol
from rigctl.safety import SafetyLimits


def _validate(args: argparse.Namespace) -> int:
    given = Path(args.protocol)
    if given.is_dir() and (given / "run.json").is_file():
        raise ProtocolError(f"{given}: is a run directory, not a protocol file; validate its protocol: "
                            f"{given / 'protocol.yaml'}")
    protocol = load_protocol(args.protocol)
    SafetyLimits().check_pulse(protocol.pulse)
    schedule = BssSchedule(protocol, protocol.seed, 25000.0)
    s, o = schedule.session_sequence(1)
    hours = schedule.trial_time_s(protocol.n_trials - 1) / 3600.0
    print(f"{protocol.source_file}: OK")
    print(f"  {protocol.name}: {protocol.sessions} sessions x {protocol.trials_per_session} trials, "
          f"isi {protocol.isi_s} s, rest {protocol.rest_s} s, about {hours:.1f} h on a real rig")
    print(f"  mixing {protocol.mixing}; {len(protocol.group_a)} + {len(protocol.group_b)} stimulating electrodes; "
          f"pulse {protocol.pulse.phase1_amplitude:g}/{protocol.pulse.phase2_amplitude:g} {protocol.pulse.unit}, "
          f"{protocol.pulse.phase1_us:g}/{protocol.pulse.phase2_us:g} us")
    print(f"  response window {protocol.response_window_ms} ms; raw: {protocol.raw}; spikes: {protocol.spikes}; "
          f"drug: {protocol.drug}; sequence: {protocol.sequence}")
    print(f"  session 1 (seed {protocol.seed}): P(s1)={s[:, 0].mean():.2f} P(s2)={s[:, 1].mean():.2f}, "
          f"mean stimuli per step {o.sum(axis=1).mean():.1f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a protocol file",
                       description="Validate a protocol file (path or library name) and print what it will do; "
                                   "errors name the file, line, field, bad value and what is allowed.")
    p.add_argument("protocol", metavar="PROTOCOL", help="protocol YAML path or library name")
    p.set_defaults(func=_validate)
