"""Shared argparse `type=` helpers for numeric and output-file flags.

Each helper parses one flag's text and refuses anything outside its range (for floats: `nan` and `inf`
too) with `argparse.ArgumentTypeError("TEXT: allowed: WHAT")`, which argparse prints as one line naming
the flag, e.g. `argument --rate-hz: nan: allowed: a finite number from 1000 to 100000`, exit code 2.

    p.add_argument("--seconds", type=finite_float_in(0, 600, lo_open=True))
    p.add_argument("--port", type=port_number)

Output files (`output_file`) are never given missing directories: the flag is refused naming the
directory that does not exist. (Flags that name an output *directory*, such as `run --out` or
`model fit --out`, create it.)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

__all__ = ["int_in", "finite_float_in", "positive_int", "non_negative_int", "positive_float", "port_number",
           "seed", "channels", "sample_rate_hz", "chunk_ms", "output_file"]


def _num(x: float) -> str:
    """1000.0 -> '1000', 0.1 -> '0.1' (no exponent for the bounds people type)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"from {_num(lo)} to {_num(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {_num(hi)}")
    return " and ".join(parts)


def int_in(lo: int | None = None, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An integer in [lo, hi] (either bound may be None); `what` replaces the description of what is allowed."""
    allowed = what or " ".join(filter(None, ("an integer", _range_text(lo, hi, False, False))))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: allowed: {allowed}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text}: allowed: {allowed}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                    hi_open: bool = False) -> Callable[[str], float]:
    """A finite float in the range lo..hi (bounds inclusive unless `lo_open`/`hi_open`; None = unbounded)."""
    allowed = " ".join(filter(None, ("a finite number", _range_text(lo, hi, lo_open, hi_open))))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text}: allowed: {allowed}") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"{text}: allowed: {allowed}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
positive_float = finite_float_in(0.0, lo_open=True)
port_number = int_in(0, 65535, what="a TCP port from 0 to 65535 (0 = any free port)")

# The ranges rigctl's commands share (the same flag means the same thing everywhere).
seed = int_in(0, 2**63 - 1)                  # numpy seeds are non-negative; run.json keeps them as int64
channels = int_in(1, 4096)                   # the largest MEAs in use record 4096 channels
sample_rate_hz = finite_float_in(1000.0, 100000.0)
chunk_ms = finite_float_in(0.1, 10000.0)


def output_file(text: str) -> Path:
    """A file to write: its directory must exist (nothing is created) and it must not be a directory."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text or repr(text)}: is a directory; allowed: a file path")
    parent = path.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text}: directory {parent} {problem}; allowed: a file in an "
                                         "existing directory")
    return path
