"""Helpers for tests of a live run: key directories, a `rigctl run` process whose stderr is read line by line
with a deadline, and the TCP sockets a process listens on (from /proc, as `ss -ltnp` shows them)."""

from __future__ import annotations

import os
import selectors
import socket
import struct
import subprocess
import time
from pathlib import Path

from runcli import RIGCTL, rigctl

TEN_SESSIONS = """extends: isomura2023_bss.yaml
name: ten_sessions
sessions: 10
trials_per_session: 10
isi_s: 0.1
rest_s: 0.3
first_trial_s: 0.3
checkpoint_every_trials: 5
spike_window_ms: [-20, 60]
raw_window_ms: [-5, 35]
"""


def make_keys(keys: Path, allowed=("control", "other"), others=("intruder",)) -> Path:
    for name in ("rig", *allowed, *others):
        rigctl("keys", "--keys", str(keys), "new", name)
    for name in allowed:
        rigctl("keys", "--keys", str(keys), "allow", str(keys / f"{name}.key"))
    return keys


class LiveRun:
    """`rigctl ...` in the background; `wait_for(prefix)` reads its stderr (or stdout) until a line starts
    with it."""

    def __init__(self, *args: str, watch: str = "stderr"):
        self.proc = subprocess.Popen(RIGCTL + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        self._stream = getattr(self.proc, watch)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._stream, selectors.EVENT_READ)

    def wait_for(self, prefix: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._sel.select(deadline - time.monotonic()):
                break
            line = self._stream.readline()
            if not line:
                break
            self.stderr.append(line)
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no stderr line starting {prefix!r} within {timeout_s} s:\n{''.join(self.stderr)}")

    def finish(self, timeout_s: float = 120.0) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout_s)
        self.stderr.append(err)
        return self.proc.returncode, "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def listening_tcp(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if family == socket.AF_INET:
                addr = socket.inet_ntop(family, raw[::-1])
            else:
                addr = socket.inet_ntop(family, b"".join(struct.pack("<I", w) for w in
                                                         struct.unpack(">4I", raw)))
            out.append((addr, int(port_hex, 16)))
    return out
