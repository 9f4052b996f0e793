"""The `rigctl` command line as a user runs it: a separate process, for tests that need one."""

import subprocess
import sys

RIGCTL = [sys.executable, "-m", "rigctl.cli"]


def rigctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `rigctl ARGS...`; with check, a non-zero exit fails the test with rigctl's stderr."""
    proc = subprocess.run(RIGCTL + list(args), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc
