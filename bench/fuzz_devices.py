"""Device-reply fuzzer: malformed and hostile replies thrown at each driver, every case's outcome classified.

    python bench/fuzz_devices.py --cases 100000 --target rhx|openephys|pulsepal|all --seed 0
    python bench/fuzz_devices.py --target rhx --seed 0 --replay 1234     # one case, verbosely

Each case is a seeded random script (case i of a seed is always the same script): a short driver session
(connect, start, read, schedule a pulse, close) against a fake device that answers honestly except for one
mutated reply (or data stream) chosen by the script. Outcomes:

- ok: the session completed; device_error: a rigctl DeviceError ended it (both fine);
- traceback: any other exception escaped a driver call (a bug);
- hang: a driver call took longer than `3 x timeout_s + 0.5 s` (an exchange's timeout, the safe state's
  read-back and one more exchange, plus slack for a loaded shared machine), or never returned;
- blowup: the process's peak RSS rose by more than --blowup-mb during the case (with --tracemalloc: the
  traced peak), or a driver buffer outgrew its documented bound;
- unsafe: after the session (the driver closed, so its safe state ran) the fake device still has
  stimulation armed although it kept processing commands, or the driver claims a verified safe state
  the device does not have.

Transports (what is in-process and what goes through real servers):
- rhx: in-process fake RHX on a loopback TCP socket pair handed to the driver through its `open_socket`
  hook (command and waveform connections); the fake parses every batch like RHX (set/get/execute,
  uploads, keypress triggers) and models each channel's uploaded StimEnabled. Every --loopback-every-th
  case instead runs the shipped `sim.rhx_emulator` over loopback TCP with its reply-rewrite and
  delayed-reply fault hooks.
- openephys: HTTP always over real loopback TCP (a hostile server thread; the driver opens a connection
  per request); ZMQ messages in-process from an inproc XPUB the driver subscribes to through its
  `data_url` parameter; every --loopback-every-th case runs the shipped `sim.openephys_emulator` (HTTP +
  ZMQ over loopback) with its message-rewrite hook.
- pulsepal: always a real pty (the driver opens device paths only) with a fake firmware thread on the
  master side that parses the host's messages and records triggers and aborts.

The drivers' start-up allowances (`START_TIMEOUT_S`, 10 s for the first data) are set to timeout_s here,
so that a silent device costs a case timeout_s, not 10 s; nothing else of the drivers is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import resource
import select
import socket
import struct
import sys
import threading
import time
import traceback
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from rigctl.drivers import _openephys_wire as ow
from rigctl.drivers import _pulsepal_wire as pw
from rigctl.drivers import _rhx_wire as rw
from rigctl.drivers import intan_rhx, openephys
from rigctl.benchmarks.drivers import RampBackend
from rigctl.drivers.intan_rhx import IntanRHX
from rigctl.drivers.openephys import OpenEphysGUI
from rigctl.drivers.pulsepal import PulsePal
from rigctl.errors import DeviceError
from rigctl.types import BiphasicPulse, StimCommand

OUTCOMES = ("ok", "device_error", "traceback", "hang", "blowup", "unsafe")
BAD = ("traceback", "hang", "blowup", "unsafe")
TARGETS = ("rhx", "openephys", "pulsepal")


@dataclass
class Result:
    outcome: str
    detail: str = ""


# ---- hostile material ----------------------------------------------------------------------------------------
HOSTILE_TOKENS = (
    "inf", "-inf", "Infinity", "-Infinity", "nan", "NaN", "0", "-0", "0.0", "-1", "-5", "1e999", "-1e999", "1e308",
    "1e-300", "9" * 25, "9" * 400, "", "abc", "0x10", "1_000", "\xb2", "\xbd", "25000.5", "30000", "20000", "25000",
    "0.5", "10", "0.01", "1", "True", "False", "true", "Run", "Stop", "Record", "ControllerRecordUSB2",
    "ControllerStimRecordUSB2", "Toaster", "3.4.0", "1e+06", "4294967295", "4294967296", "65535", "65536", "100",
    "101", "-2147483648", "+1", ".5", "5.", "1e3", "1E3", "00001", "\x00", "\xff" * 8, "Return:",
    "Return: RunMode Stop",
)
RHX_ERRORS = ("Unrecognized parameter",
              "Invalid value for FirstPhaseAmplitudeMicroAmps command. Acceptable: [ 0 , 2550 ]",
              "Error - Command 2: Set commands require a parameter and a value",
              "Board must be stopped in order to start running", "Unrecognized action",
              "UploadStimParameters cannot be executed while the board is running")


def hostile_token(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.8:
        return rng.choice(HOSTILE_TOKENS)
    if r < 0.9:
        return "".join(chr(rng.randrange(33, 127)) for _ in range(rng.randrange(1, 30)))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))).decode("latin-1")


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client, server) ends of one loopback TCP connection."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return client, server


class Sender(threading.Thread):
    """Writes queued (delay, bytes) items in order from its own thread, so a fake device's command
    processing never blocks on a full socket (RHX's Qt writes are asynchronous too)."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock, self.q = sock, queue.Queue()
        self.start()

    def put(self, data: bytes, gap_s: float = 0.0) -> None:
        self.q.put((gap_s, data))

    def later(self, delay_s: float, data: bytes) -> None:
        t = threading.Timer(delay_s, self.q.put, ((0.0, data),))
        t.daemon = True
        t.start()

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            gap, data = item
            if gap:
                time.sleep(gap)  # the device itself is slow: part of the hostile behaviour being fuzzed
            try:
                self.sock.sendall(data)
            except OSError:
                return

    def stop(self) -> None:
        self.q.put(None)


# ---- one case: timing of every driver call ------------------------------------------------------------------
class Case:
    """A driver session; `call` times each driver call against the per-call limit."""

    max_calls = 14

    def __init__(self, rng: random.Random, timeout_s: float):
        self.rng, self.T = rng, timeout_s
        self.call_limit = 3 * timeout_s + 0.5
        self.slow: list[str] = []
        self.notes: list[str] = []

    @property
    def total_limit(self) -> float:
        return self.max_calls * self.call_limit + 2.0

    def call(self, fn: Callable, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            dt = time.monotonic() - t0
            if dt > self.call_limit:
                self.slow.append(f"{getattr(fn, '__name__', fn)} took {dt:.3f} s (limit {self.call_limit:.3f} s)")

    def run(self) -> Result:  # pragma: no cover - overridden
        raise NotImplementedError

    def abandon(self) -> None:
        """Unstick a hung session: close every transport."""

    def describe(self) -> str:
        return "; ".join(self.notes)

    def finish(self, outcome: str, detail: str, unsafe: str) -> Result:
        if unsafe:
            return Result("unsafe", unsafe)
        if self.slow:
            return Result("hang", "; ".join(self.slow))
        return Result(outcome, detail)


# ---- Intan RHX --------------------------------------------------------------------------------------------------
RHX_NAMES = ("A-000", "A-001", "B-000", "B-001")
RHX_PULSE = BiphasicPulse.symmetric(10.0, 200.0, "uA")
RHX_REPLY_MUTATIONS = {  # kind -> weight
    "none": 4, "value": 30, "name": 4, "prefix_error": 5, "prefix_stale": 5, "suffix_junk": 5, "truncate": 3,
    "split": 4, "duplicate": 3, "random_bytes": 5, "flood": 1, "silence": 2, "late": 4, "hang": 1, "close": 2,
    "drip": 1,
}
RHX_WAVE_MUTATIONS = {
    "none": 30, "garbage": 8, "jump": 5, "cut_close": 4, "close": 2, "silence": 2, "flood": 2, "magic_storm": 3,
    "wrong_width": 4, "corrupt": 6, "wrap": 2, "slow": 3, "big": 2,
}
_RETURN_VALUE = re.compile(r"Return: ((?:[A-Za-z]+ )?)(.*?)(?=Return: |$)", re.DOTALL)


def weighted(rng: random.Random, table: dict[str, int]) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


class FakeRHX(threading.Thread):
    """RHX's command semantics as the driver uses them; replies come from the model, then the one the
    script picks is mutated. Processing stays honest (only replies lie) unless the script hangs or closes it."""

    def __init__(self, cmd: socket.socket, wave: socket.socket, rng: random.Random, timeout_s: float):
        super().__init__(daemon=True)
        self.cmd, self.wave, self.rng, self.T = cmd, wave, rng, timeout_s
        self.kind = weighted(rng, RHX_REPLY_MUTATIONS)
        self.at = rng.randrange(12)
        self.wave_kind = weighted(rng, RHX_WAVE_MUTATIONS)
        self.set = {n.lower(): {"stimenabled": False, "source": "digitalin01"} for n in RHX_NAMES}
        self.uploaded = {n.lower(): {"stimenabled": False, "source": "digitalin01"} for n in RHX_NAMES}
        self.pending: set[str] = set()
        self.run_mode = "Stop"
        self.per_write = 10
        wrap = self.wave_kind == "wrap"  # RHX's uint32 frame clock wraps after 2**32 samples
        self.ts0 = rng.choice([(1 << 32) - 300, (1 << 32) - 2000]) if wrap else rng.randrange(1 << 20)
        self.ts = self.ts0 - 1  # the last frame produced
        self.n_replies = 0
        self.hung = False
        self.closed = False
        self.sender = Sender(cmd)
        self.wave_stop = threading.Event()
        self.wave_thread: threading.Thread | None = None
        self.start()

    @property
    def alive(self) -> bool:
        return not (self.hung or self.closed)

    def enabled(self) -> list[str]:
        return sorted(n for n, p in self.uploaded.items() if p["stimenabled"])

    # -- command port
    def run(self) -> None:
        buf = ""
        while True:
            try:
                data = self.cmd.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.hung:
                continue
            buf += data.decode("latin-1")
            if ";" not in buf:
                continue
            cut = buf.rindex(";") + 1
            text, buf = buf[:cut], buf[cut:]
            reply = "".join(self._command(c) for c in text.split(";") if c.strip())
            if reply:
                self._respond(reply)
            if self.closed:
                break
        self.sender.stop()

    def _command(self, command: str) -> str:
        words = command.split(" ")
        verb = words[0].lower()
        if verb == "get" and len(words) >= 2:
            return self._get(words[1].lower())
        if verb == "set" and len(words) >= 3:
            return self._set(words[1].lower(), words[2].lower())
        if verb == "execute" and len(words) >= 2:
            return self._execute(words[1].lower(), words[2].lower() if len(words) > 2 else None)
        return "Error - Command 1: Unrecognized command"

    def _get(self, item: str) -> str:
        if "." in item:
            ch, name = item.split(".", 1)
            if ch in self.set and name == "stimenabled":
                return f"Return: StimEnabled {'True' if self.set[ch]['stimenabled'] else 'False'}"
            return "Unrecognized parameter"
        replies = {"type": "Return: Type ControllerStimRecord", "sampleratehertz": "Return: SampleRateHertz 25000",
                   "stimstepsizemicroamps": "Return: StimStepSizeMicroAmps 1", "version": "Return: Version 3.4.0",
                   "runmode": f"Return: RunMode {self.run_mode}", "uploadinprogress": "Return: UploadInProgress False",
                   "tcpnumberdatablocksperwrite": f"Return: TCPNumberDataBlocksPerWrite {self.per_write}",
                   "tcpwaveformdataoutputport": "Return: TCPWaveformDataOutputPort 5001",
                   "currenttimestamp": f"Return: {self.ts if self.run_mode == 'Run' else -1}"}
        return replies.get(item, "Unrecognized parameter")

    def _set(self, item: str, value: str) -> str:
        if "." in item:
            ch, name = item.split(".", 1)
            if ch not in self.set:
                return "Unrecognized parameter"
            if name == "stimenabled":
                self.set[ch]["stimenabled"] = value == "true"
            elif name == "source":
                self.set[ch]["source"] = value
            return ""
        if item == "runmode":
            if value == "run" and self.run_mode == "Stop":
                self.run_mode = "Run"
                self._start_wave()
            elif value == "stop":
                self.run_mode = "Stop"
                self.pending.clear()
            return ""
        if item == "tcpnumberdatablocksperwrite":
            self.per_write = int(value) if value.isdigit() else self.per_write
        return ""

    def _execute(self, action: str, arg: str | None) -> str:
        if action == "uploadstimparameters":
            for ch in [arg] if arg else list(self.set):
                if ch not in self.set:
                    return "Unrecognized channel"
                self.uploaded[ch] = dict(self.set[ch])
                if not self.uploaded[ch]["stimenabled"]:
                    self.pending.discard(ch)  # as the emulator assumes: disabling drops a latched trigger
            return ""
        if action == "manualstimtriggerpulse":
            for ch, p in self.uploaded.items():
                if p["stimenabled"] and p["source"] == f"keypress{arg}":
                    self.pending.add(ch)
            return ""
        return ""

    def _respond(self, reply: str) -> None:
        index, self.n_replies = self.n_replies, self.n_replies + 1
        out = reply.encode("latin-1")
        kind, rng = self.kind, self.rng
        if index != self.at or kind == "none":
            self.sender.put(out)
            return
        if kind == "value":
            ms = list(_RETURN_VALUE.finditer(reply))
            if ms:
                m = rng.choice(ms)
                out = (reply[:m.start(2)] + hostile_token(rng) + reply[m.end(2):]).encode("latin-1")
        elif kind == "name":
            name = rng.choice(["", "Type ", "runmode ", "X ", "StimEnabled "])
            out = re.sub(r"Return: [A-Za-z]+ ", "Return: " + name, reply, count=1).encode("latin-1")
        elif kind == "prefix_error":
            out = rng.choice(RHX_ERRORS).encode() + out
        elif kind == "prefix_stale":
            out = rng.choice(["Return: StimEnabled False", "Return: UploadInProgress False", "Return: RunMode Stop",
                              "Return: 12345", "Return: StimEnabled True", reply]).encode() + out
        elif kind == "suffix_junk":
            out += rng.choice([b" ", b"x", b"\x00", b";", b"Return:", random_bytes(rng, rng.randrange(1, 40))])
        elif kind == "truncate":
            out = out[:rng.randrange(len(out))]
        elif kind == "split":
            k = rng.randrange(1, max(2, len(out)))
            self.sender.put(out[:k])
            self.sender.put(out[k:], gap_s=rng.choice([0.0001, 0.0005, 0.002]))
            return
        elif kind == "duplicate":
            out = out + out
        elif kind == "random_bytes":
            out = random_bytes(rng, rng.randrange(0, 200))
        elif kind == "flood":
            for _ in range(32):
                self.sender.put(b"A" * 65536)
            return
        elif kind == "silence":
            return
        elif kind == "late":
            self.sender.later(1.5 * self.T, out)
            return
        elif kind == "hang":
            self.hung = True
            return
        elif kind == "close":
            self.closed = True
            try:
                self.cmd.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        elif kind == "drip":
            for i in range(len(out)):
                self.sender.put(out[i:i + 1], gap_s=0.005)
            return
        self.sender.put(out)

    # -- waveform port
    def _start_wave(self) -> None:
        if self.wave_thread is None:
            self.wave_thread = threading.Thread(target=self._wave, daemon=True)
            self.wave_thread.start()

    def _block(self, first: int, n_words: int = len(RHX_NAMES)) -> bytes:
        words = np.full((rw.FRAMES_PER_BLOCK, n_words), 32768, np.uint16)
        return rw.build_block(first & 0xFFFFFFFF, words)

    def _wave(self) -> None:
        """Blocks at 10x real time (little run-ahead of the driver), with the script's mutation at one
        block; `CurrentTimestamp` answers the last frame sent."""
        rng, kind, sock = self.rng, self.wave_kind, self.wave
        at = rng.randrange(12)
        period = rw.FRAMES_PER_BLOCK / 25000.0 / 10
        try:
            for b in range(10 ** 9):
                if self.wave_stop.wait(period if b else 0.0):
                    return
                first = self.ts0 + b * rw.FRAMES_PER_BLOCK
                data = self._block(first)
                if b == at and kind != "none":
                    if kind == "garbage":
                        data = random_bytes(rng, rng.randrange(1, 3000)) + data
                    elif kind == "jump":
                        data = self._block(rng.randrange(1 << 32))
                    elif kind == "cut_close":
                        sock.sendall(data[:rng.randrange(len(data))])
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    elif kind == "close":
                        sock.shutdown(socket.SHUT_RDWR)
                        return
                    elif kind == "silence":
                        self.wave_stop.wait()
                        return
                    elif kind == "magic_storm":
                        data = struct.pack("<I", rw.WAVEFORM_MAGIC) * rng.randrange(1, 5000) + data
                    elif kind == "wrong_width":
                        data = self._block(first, rng.choice([0, 1, 3, 5, 64]))
                    elif kind == "corrupt":
                        d = bytearray(data)
                        for _ in range(rng.randrange(1, 20)):
                            d[rng.randrange(len(d))] = rng.randrange(256)
                        data = bytes(d)
                    elif kind == "flood":
                        junk = random_bytes(rng, 65536).replace(struct.pack("<I", rw.WAVEFORM_MAGIC), b"")
                        while not self.wave_stop.is_set():
                            sock.sendall(junk)
                        return
                    elif kind == "slow":
                        self.wave_stop.wait(rng.choice([0.005, 0.02, 2 * self.T]))
                    elif kind == "big":
                        data = b"".join(self._block(first + k * rw.FRAMES_PER_BLOCK) for k in range(400))
                        self.ts0 += 399 * rw.FRAMES_PER_BLOCK
                self.ts = self.ts0 + (b + 1) * rw.FRAMES_PER_BLOCK - 1
                sock.sendall(data)
        except OSError:
            pass

    def shutdown(self) -> None:
        self.wave_stop.set()
        for s in (self.cmd, self.wave):
            try:
                s.close()
            except OSError:
                pass


class RhxCase(Case):
    """The RHX driver against FakeRHX over a socket pair (connect, start, reads, one pulse, close)."""

    listener: socket.socket | None = None

    def __init__(self, rng: random.Random, timeout_s: float):
        super().__init__(rng, timeout_s)
        if RhxCase.listener is None:
            RhxCase.listener = socket.create_server(("127.0.0.1", 0))
        self.cmd_client, cmd_server = tcp_pair(RhxCase.listener)
        self.wave_client, wave_server = tcp_pair(RhxCase.listener)
        self.fake = FakeRHX(cmd_server, wave_server, rng, timeout_s)
        self.notes.append(f"reply #{self.fake.at}: {self.fake.kind}; waveform: {self.fake.wave_kind}")
        self.drv: IntanRHX | None = None

    def _open(self, address: tuple[str, int], timeout: float) -> socket.socket:
        s = self.cmd_client if address[1] == 5000 else self.wave_client
        s.settimeout(timeout)  # as socket.create_connection leaves it
        return s

    def run(self) -> Result:
        rng = self.rng
        outcome, detail = "ok", ""
        drv = self.drv = IntanRHX("127.0.0.1", 5000, electrode_channels=list(RHX_NAMES), timeout_s=self.T,
                                  connect=False, open_socket=self._open)
        try:
            self.call(drv.connect)
            self.call(drv.start)
            for i in range(3):
                chunk = self.call(drv.read)
                self.call(drv.on_chunk, chunk.end_sample)
                if i == 0:
                    electrodes = rng.choice([(0,), (1,), (2,), (0, 3), (1, 2)])
                    ahead = rng.choice([6000, 9000, 14000])  # 14000: past the longest post-trigger delay at first
                    self.call(drv.schedule, StimCommand(drv.clock + ahead, electrodes, RHX_PULSE))
            if len(drv._rx) > rw.MAX_REPLY_BYTES or len(drv._wbuf) > (1 << 20) + rw.block_bytes(len(RHX_NAMES)):
                return Result("blowup", f"driver buffers {len(drv._rx)} / {len(drv._wbuf)} bytes")
        except DeviceError as exc:
            outcome, detail = "device_error", str(exc)[:160]
        try:
            self.call(drv.close)
        except DeviceError as exc:
            outcome, detail = "device_error", f"close: {exc}"[:160]
        self._close_clients()  # the fake reads everything the driver sent, then EOF: its model is final
        self.fake.join(5.0)
        self.fake.shutdown()
        enabled = self.fake.enabled()
        unsafe = ""
        if enabled and self.fake.alive:
            unsafe = f"channels {enabled} still StimEnabled on a responsive controller after close"
        elif enabled and drv.safe_state_verified:
            unsafe = f"driver claims a verified safe state, controller has {enabled} enabled"
        return self.finish(outcome, detail, unsafe)

    def _close_clients(self) -> None:
        for s in (self.cmd_client, self.wave_client):
            try:
                s.close()
            except OSError:
                pass

    def abandon(self) -> None:
        self.fake.shutdown()
        self._close_clients()


class RhxEmulatorCase(Case):
    """The RHX driver against the shipped emulator over loopback TCP, one reply rewritten or delayed."""

    def __init__(self, rng: random.Random, timeout_s: float):
        super().__init__(rng, timeout_s)
        from rigctl.sim.rhx_emulator import RHXEmulator

        self.backend = RampBackend(8)
        self.emu = RHXEmulator(self.backend).start()
        self.kind = rng.choice(["value", "prefix_error", "prefix_stale", "suffix_junk", "truncate", "duplicate",
                                "random_bytes", "late_arm", "garbage_wave", "cut_wave", "none"])
        self.at = rng.randrange(12)
        self.n = 0
        self.notes.append(f"emulator, reply #{self.at}: {self.kind}")
        f = self.emu.faults
        if self.kind == "late_arm":
            f.delay_reply_to, f.reply_delay_s = "manualstimtriggerpulse", 1.5 * timeout_s
        elif self.kind == "garbage_wave":
            f.garbage_in_next_write = random_bytes(rng, rng.randrange(1, 2000))
        elif self.kind == "cut_wave":
            f.cut_next_write_at = rng.randrange(1, 3000)
        else:
            f.rewrite_reply = self._rewrite

    def _rewrite(self, batch: str, reply: str) -> bytes:
        index, self.n = self.n, self.n + (1 if reply else 0)
        out = reply.encode("latin-1")
        if not reply or index != self.at or self.kind == "none":
            return out
        rng, kind = self.rng, self.kind
        if kind == "value":
            ms = list(_RETURN_VALUE.finditer(reply))
            if ms:
                m = rng.choice(ms)
                return (reply[:m.start(2)] + hostile_token(rng) + reply[m.end(2):]).encode("latin-1")
        if kind == "prefix_error":
            return rng.choice(RHX_ERRORS).encode() + out
        if kind == "prefix_stale":
            return b"Return: StimEnabled False" + out
        if kind == "suffix_junk":
            return out + random_bytes(rng, rng.randrange(1, 20))
        if kind == "truncate":
            return out[:rng.randrange(len(out))]
        if kind == "duplicate":
            return out + out
        if kind == "random_bytes":
            return random_bytes(rng, rng.randrange(0, 100))
        return out

    def run(self) -> Result:
        outcome, detail = "ok", ""
        drv = None
        try:
            drv = self.call(lambda: IntanRHX("127.0.0.1", self.emu.command_port, electrode_channels=self.emu.names,
                                             timeout_s=self.T))
            self.call(drv.start)
            for i in range(4):
                chunk = self.call(drv.read)
                self.call(drv.on_chunk, chunk.end_sample)
                if i == 0:
                    self.call(drv.schedule, StimCommand(drv.clock + 6000, (self.rng.randrange(8),), RHX_PULSE))
        except DeviceError as exc:
            outcome, detail = "device_error", str(exc)[:160]
        cmd_alive = drv is not None and drv._cmd is not None and self.emu.command_status == "Connected"
        if drv is not None:
            self.call(drv.close)
        deadline = time.monotonic() + 5.0  # the emulator handles what it received before it sees the close
        while self.emu._cmd_client is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        enabled = sorted({n for n, p in self.emu.uploaded.items() if p["stimenabled"]}
                         | {n for n, p in self.emu.channels.items() if p["stimenabled"]})
        self.emu.close()
        unsafe = f"emulator channels {enabled} StimEnabled after close" if enabled and cmd_alive else ""
        if enabled and drv is not None and drv.safe_state_verified:
            unsafe = f"driver claims a verified safe state, emulator has {enabled} enabled"
        return self.finish(outcome, detail, unsafe)

    def abandon(self) -> None:
        self.emu.close()


# ---- Open Ephys -----------------------------------------------------------------------------------------------
OE_STREAM = "fuzz"
OE_CHANNELS = 4
HTTP_MUTATIONS = {
    "none": 6, "json": 25, "raw_body": 8, "status": 8, "headers": 8, "length": 5, "chunked": 6, "interim": 3,
    "close_now": 3, "close_mid": 3, "reset": 2, "drip": 2, "late": 2, "flood": 1, "silence": 1,
}
ZMQ_MUTATIONS = {
    "none": 8, "header_json": 20, "raw_header": 6, "envelope": 4, "frames": 5, "payload": 5, "nonfinite": 6,
    "message_num": 6, "sample_num": 6, "channel_num": 5, "num_samples": 5, "stream": 3, "events": 4,
    "pile_up": 2, "strays": 2, "silence": 1, "big": 1,
}
_RAW = "\u0000RAW{}\u0000"


def processors_doc(data_port: int) -> dict:
    stream = {"name": OE_STREAM, "source_id": 100, "sample_rate": 25000.0, "channel_count": OE_CHANNELS,
              "parameters": []}
    return {"processors": [
        {"id": 100, "name": "File Reader", "parameters": [], "streams": [stream], "predecessor": None},
        {"id": 101, "name": "ZMQ Interface", "streams": [stream], "predecessor": 100,
         "parameters": [{"name": "data_port", "type": "int", "value": str(data_port)}]}]}


def deep(n: int) -> str:
    return "[" * n + "]" * n


def hostile_json(rng: random.Random, raws: list[str]):
    """A hostile JSON value; raw texts Python's json cannot produce are put in `raws` (placeholders)."""
    pool = [None, True, False, 0, -1, 1.5, 2 ** 64, -(2 ** 63) - 1, 10 ** 30, "", "x", "5556", "25000", "ZMQ Interface",
            float("nan"), float("inf"), -float("inf"), [], {}, [1, 2], {"a": 1}, [[[[]]]], "\udcff", OE_STREAM]
    if rng.random() < 0.2:
        raws.append(rng.choice(["1e400", "-1e400", "1" * 5000, deep(rng.choice([50, 900, 5000])), "1.0e-400", "-0"]))
        return _RAW.format(len(raws) - 1)
    return rng.choice(pool)


def mutate_json(doc, rng: random.Random, n: int) -> bytes:
    """`n` random edits (replace, delete, wrap) at random places of a copy of `doc`, serialised."""
    doc = json.loads(json.dumps(doc))
    raws: list[str] = []
    for _ in range(n):
        slots = []

        def walk(x):
            if isinstance(x, dict):
                for k in list(x):
                    slots.append((x, k))
                    walk(x[k])
            elif isinstance(x, list):
                for i in range(len(x)):
                    slots.append((x, i))
                    walk(x[i])
        walk(doc)
        if not slots:
            break
        parent, key = rng.choice(slots)
        op = rng.random()
        if op < 0.65:
            parent[key] = hostile_json(rng, raws)
        elif op < 0.8 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.9:
            parent[key] = [parent[key]]
        else:
            parent[key] = {"value": parent[key]}
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(_RAW.format(i)), raw)
    return text.encode("utf-8", errors="surrogatepass")


def http_ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class HostileHTTPServer(threading.Thread):
    """A persistent loopback server; each connection is answered by `handler(conn, request)` in its own thread."""

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handler: Callable[[socket.socket, bytes], None] | None = None
        self.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, self.handler), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket, handler) -> None:
        try:
            conn.settimeout(3.0)
            req = b""
            while b"\r\n\r\n" not in req:
                data = conn.recv(65536)
                if not data:
                    return
                req += data
            head, _, rest = req.partition(b"\r\n\r\n")
            m = re.search(rb"Content-Length: (\d+)", head)
            while m and len(rest) < int(m.group(1)):
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            if handler is not None:
                handler(conn, head + b"\r\n\r\n" + rest)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


class OpenEphysCase(Case):
    """HTTP over the hostile server (connect, start, message, stop) and the data stream in-process."""

    server: HostileHTTPServer | None = None
    counter = 0

    def __init__(self, rng: random.Random, timeout_s: float):
        super().__init__(rng, timeout_s)
        if OpenEphysCase.server is None:
            OpenEphysCase.server = HostileHTTPServer()
        OpenEphysCase.counter += 1
        self.url = f"inproc://fuzz-oe-{os.getpid()}-{OpenEphysCase.counter}"
        self.http_kind = weighted(rng, HTTP_MUTATIONS)
        self.http_at = rng.randrange(5)
        self.zmq_kind = weighted(rng, ZMQ_MUTATIONS) if rng.random() < 0.7 else "none"
        self.n_http = 0
        self.notes.append(f"http #{self.http_at}: {self.http_kind}; zmq: {self.zmq_kind}")
        self.pub = zmq.Context.instance().socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100000)
        self.pub.bind(self.url)
        self.feeding = threading.Event()
        self.feeder: threading.Thread | None = None
        self.drv: OpenEphysGUI | None = None

    # -- HTTP
    def _answer(self, conn: socket.socket, request: bytes) -> None:
        index, self.n_http = self.n_http, self.n_http + 1
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        body_in = request.partition(b"\r\n\r\n")[2]
        if line.startswith("GET /api/processors"):
            doc: object = processors_doc(5556)
        else:
            try:
                doc = {"mode": json.loads(body_in).get("mode", "ACQUIRE")}
            except (ValueError, AttributeError):
                doc = {"mode": "ACQUIRE"}
        body = json.dumps(doc).encode()
        rng, kind = self.rng, self.http_kind
        if index != self.http_at or kind == "none":
            conn.sendall(http_ok(body))
            return
        if kind == "json":
            conn.sendall(http_ok(mutate_json(doc, rng, rng.randrange(1, 4))))
        elif kind == "raw_body":
            raw = rng.choice([random_bytes(rng, rng.randrange(0, 300)), deep(100000).encode(), b"1" * 5000,
                              b"\xff\xfe{}", b"\xef\xbb\xbf" + body, body.decode().encode("utf-16"), b"NaN", b"",
                              b"null", b"[]",
                              b"{" * 20, body[:rng.randrange(len(body))], b'{"processors": {}}', b'"str"'])
            conn.sendall(http_ok(raw))
        elif kind == "status":
            status = rng.choice(["HTTP/1.1 404 Not Found", "HTTP/1.1 500 Internal", "HTTP/1.0 200 OK", "HTTP/2 200",
                                 "HTTP/1.1 200", "http/1.1 200 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 20 OK", "ICY 200 OK",
                                 "", "HTTP/1.1 204 No Content", "HTTP/1.1 200 OK\x00", "HTTP/1.1 -200 OK",
                                 "HTTP/1.1 200 \xff"])
            conn.sendall(status.encode("latin-1") + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif kind == "headers":
            bad = rng.choice([b"NoColon", b": empty", b" Lead: x", b"X: " + b"a" * 70000, b"X: y\r\n" * 3000,
                              b"Content-Length: 1\r\nContent-Length: 2", b"Content-Length: -1", b"Content-Length: abc",
                              b"Content-Length: 99999999999", b"Content-Length: 1e3", b"Content-Length: 5, 5",
                              b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, chunked", b"\xff\xfe: x"])
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + bad + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif kind == "length":
            n = max(0, len(body) + rng.choice([-5, -1, 1, 10, 1000, 10 ** 6]))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (n, body))
        elif kind == "chunked":
            k = rng.randrange(1, max(2, len(body)))
            chunks = [b"%x\r\n%s\r\n" % (k, body[:k]), b"%x\r\n%s\r\n" % (len(body) - k, body[k:]), b"0\r\n\r\n"]
            r = rng.random()
            if r < 0.3:
                chunks[0] = rng.choice([b"zz\r\n", b"-1\r\n", b"fffffffff\r\n", b"%x\r\n%s" % (k, body[:k]), b"\r\n"])
            elif r < 0.5:
                chunks = chunks[:rng.randrange(3)]
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks))
        elif kind == "interim":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * rng.randrange(1, 10) + http_ok(body))
        elif kind == "close_now":
            return
        elif kind == "close_mid":
            whole = http_ok(body)
            conn.sendall(whole[:rng.randrange(len(whole))])
        elif kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "drip":
            gap = rng.choice([0.0005, 0.002, 0.02])
            for i, b in enumerate(http_ok(body)):
                conn.sendall(bytes((b,)))
                time.sleep(gap)  # the hostile server drips; the driver's total deadline must cut it off
        elif kind == "late":
            time.sleep(rng.choice([0.3, 1.5]) * self.T)
            conn.sendall(http_ok(body))
        elif kind == "flood":
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            for _ in range(200):
                conn.sendall(b"x" * 65536)
        elif kind == "silence":
            conn.settimeout(5 * self.T)
            try:
                conn.recv(1)
            except OSError:
                pass

    # -- ZMQ
    def _header(self, num: int, ch: int, sample: int, n: int) -> dict:
        return {"message_num": num, "type": "data", "content": {"stream": OE_STREAM, "channel_num": ch,
                "channel_name": f"CH{ch + 1}", "num_samples": n, "sample_num": sample, "sample_rate": 25000.0},
                "data_size": 4 * n, "timestamp": 1}

    def _messages(self) -> list[list[bytes]]:
        rng, kind = self.rng, self.zmq_kind
        n, blocks = rng.choice([1, 16, 100]), 7  # the session reads 5 blocks
        msgs, num = [], 0
        for b in range(blocks):
            for ch in range(OE_CHANNELS):
                num += 1
                values = (np.arange(n, dtype=np.float32) + ch) * 0.195
                msgs.append([ow.ENVELOPE_DATA, json.dumps(self._header(num, ch, b * n, n)).encode(), values.tobytes()])
        if kind in ("none", "pile_up", "strays", "silence"):
            return [] if kind == "silence" else msgs
        i = rng.randrange(len(msgs))
        env, head, payload = msgs[i]
        h = json.loads(head)
        if kind == "header_json":
            msgs[i] = [env, mutate_json(h, rng, rng.randrange(1, 4)), payload]
        elif kind == "raw_header":
            msgs[i] = [env, rng.choice([random_bytes(rng, rng.randrange(0, 200)), deep(100000).encode(), b"\xff" * 10,
                                        b'{"message_num": 1e400}', b" " * 70000 + b"{}", b"null", b"[]"]), payload]
        elif kind == "envelope":
            msgs[i] = [rng.choice([b"", b"DATA", b"EVENT\x00", b"\x00", random_bytes(rng, 8)]), head, payload]
        elif kind == "frames":
            msgs[i] = rng.choice([[env], [env, head, payload, b"x"], [env, head, payload] + [b""] * 50,
                                  [env, head, b""]])
        elif kind == "payload":
            msgs[i] = [env, head, rng.choice([payload[:-1], payload + b"\x00", b"", payload[:len(payload) // 2]])]
        elif kind == "nonfinite":
            v = np.frombuffer(payload, "<f4").copy()
            v[rng.randrange(len(v))] = rng.choice([np.nan, np.inf, -np.inf])
            msgs[i] = [env, head, v.tobytes()]
        elif kind in ("message_num", "sample_num", "channel_num", "num_samples", "stream"):
            target = h if kind == "message_num" else h["content"]
            c = h["content"]
            choices = {"message_num": [h["message_num"] + 1, h["message_num"] - 1, 1, -5, 2 ** 70, 1.5, "7", None],
                       "sample_num": [-1, 0, 10 ** 6, 2 ** 63, 0.5, "0", None, c["sample_num"] + 1],
                       "channel_num": [-1, OE_CHANNELS, 10 ** 6, (c["channel_num"] + 1) % OE_CHANNELS, "0", None],
                       "num_samples": [0, n + 1, n - 1, 2 ** 40, -1, None, float(n)],
                       "stream": ["other", "", None, 5, OE_STREAM + " "]}
            target[kind] = rng.choice(choices[kind])
            msgs[i] = [env, json.dumps(h, allow_nan=True).encode(), payload]
        elif kind == "events":
            for _ in range(rng.randrange(1, 5)):
                j = rng.randrange(len(msgs) + 1)
                msgs.insert(j, [ow.ENVELOPE_EVENT, b"{}", b"\x00" * 10])
            num = 0
            for m in msgs:  # renumber: events count in message_num too
                num += 1
                hh = json.loads(m[1]) if m[1] != b"{}" else {"type": "event", "content": {}}
                hh["message_num"] = num
                m[1] = json.dumps(hh).encode()
        elif kind == "big":
            big_n = rng.choice([1 << 19, 1 << 20, (1 << 20) + 1])
            msgs[i] = [env, json.dumps(self._header(h["message_num"], h["content"]["channel_num"],
                                                    h["content"]["sample_num"], big_n)).encode(), b"\x00" * (4 * big_n)]
        return msgs

    def _feed_forever(self) -> None:
        """Messages that never complete a block (or only another stream's), until the case ends."""
        num, sample = 0, 0
        while not self.feeding.is_set():
            for ch in range(OE_CHANNELS):
                num += 1
                h = self._header(num, ch, sample + (ch * 10 ** 9 if self.zmq_kind == "pile_up" else 0), 16)
                if self.zmq_kind == "strays":
                    h["content"]["stream"] = "another"
                try:
                    self.pub.send_multipart([ow.ENVELOPE_DATA, json.dumps(h).encode(), b"\x00" * 64], flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    self.feeding.wait(0.001)
            sample += 16

    def run(self) -> Result:
        OpenEphysCase.server.handler = self._answer
        outcome, detail = "ok", ""
        drv = None
        try:
            drv = self.drv = self.call(lambda: OpenEphysGUI("127.0.0.1", OpenEphysCase.server.port, timeout_s=self.T,
                                                            data_url=self.url))
            self.call(drv.start)
            if self.pub.poll(1000, zmq.POLLIN):
                self.pub.recv()  # the driver's subscription: from now on nothing is dropped
            if self.zmq_kind in ("pile_up", "strays"):
                self.feeder = threading.Thread(target=self._feed_forever, daemon=True)
                self.feeder.start()
            else:
                for m in self._messages():
                    self.pub.send_multipart(m)
            self.call(drv.message, "stim 1")
            for _ in range(5):
                self.call(drv.read)
                if drv._pending_bytes > ow.MAX_PENDING_BYTES or len(drv._pending) > ow.MAX_PENDING_BLOCKS:
                    return Result("blowup", f"{len(drv._pending)} pending blocks, {drv._pending_bytes} bytes")
        except DeviceError as exc:
            outcome, detail = "device_error", str(exc)[:160]
        finally:
            self.feeding.set()
            if self.feeder is not None:
                self.feeder.join(2.0)
        if drv is not None:
            self.call(drv.stop)
        self.pub.close(0)
        return self.finish(outcome, detail, "")

    def abandon(self) -> None:
        self.feeding.set()


class OpenEphysEmulatorCase(Case):
    """The Open Ephys driver against the shipped emulator over loopback (HTTP + ZMQ), messages rewritten."""

    def __init__(self, rng: random.Random, timeout_s: float):
        super().__init__(rng, timeout_s)
        from rigctl.sim.openephys_emulator import OpenEphysEmulator

        self.emu = OpenEphysEmulator(RampBackend(8), block_samples=100).start()
        self.kind = rng.choice(["header_json", "nonfinite", "payload", "drop", "none"])
        self.at = rng.randrange(40)
        self.n = 0
        self.lock = threading.Lock()
        self.emu.faults.rewrite = self._rewrite
        self.notes.append(f"emulator, message #{self.at}: {self.kind}")

    def _rewrite(self, frames: list[bytes]) -> list[bytes]:
        with self.lock:
            index, self.n = self.n, self.n + 1
        if index != self.at or self.kind == "none":
            return frames
        rng = self.rng
        if self.kind == "header_json":
            return [frames[0], mutate_json(json.loads(frames[1]), rng, 1), frames[2]]
        if self.kind == "nonfinite":
            v = np.frombuffer(frames[2], "<f4").copy()
            v[rng.randrange(len(v))] = np.nan
            return [frames[0], frames[1], v.tobytes()]
        if self.kind == "payload":
            return [frames[0], frames[1], frames[2][:rng.randrange(len(frames[2]))]]
        self.emu.faults.drop_next = 1
        return frames

    def run(self) -> Result:
        outcome, detail = "ok", ""
        drv = None
        try:
            drv = self.call(lambda: OpenEphysGUI("127.0.0.1", self.emu.http_port, timeout_s=self.T))
            self.call(drv.start)
            for _ in range(12):
                self.call(drv.read)
        except DeviceError as exc:
            outcome, detail = "device_error", str(exc)[:160]
        if drv is not None:
            self.call(drv.stop)
        self.emu.close()
        return self.finish(outcome, detail, "")

    def abandon(self) -> None:
        self.emu.close()


# ---- Pulse Pal ------------------------------------------------------------------------------------------------
PP_WIRING = {1: (0,), 2: (1,)}
PP_PULSE = BiphasicPulse.symmetric(1250.0, 200.0, "mV")
PP_MUTATIONS = {
    "none": 5, "wrong_byte": 20, "version": 10, "truncate": 6, "extra": 8, "unsolicited": 6, "silence": 3,
    "late": 3, "hang": 2, "hangup": 3, "split": 5, "duplicate": 5,
}


def _pp_payload(buf: bytearray) -> int | None:
    """Payload length of the message at the start of `buf` (D5 op ...), None if not yet known."""
    op = buf[1]
    if op == pw.OP_PROGRAM_ONE:
        if len(buf) < 3:
            return None
        return 2 + struct.calcsize(pw.PARAM_FORMAT.get(buf[2], "<B"))
    return {pw.OP_HANDSHAKE: 0, pw.OP_CLIENT_ID: 6, pw.OP_PROGRAM_ALL: pw.PROGRAM_ALL_PAYLOAD,
            pw.OP_SOFT_TRIGGER: 1, pw.OP_SET_VOLTAGE: 3, pw.OP_ABORT: 0, pw.OP_DISCONNECT: 0,
            pw.OP_CONTINUOUS_LOOP: 2}.get(op, 0)


class FakePulsePal(threading.Thread):
    """Firmware 2.0.1's replies on a pty master, one mutated; records every trigger and abort it parsed."""

    def __init__(self, master: int, rng: random.Random, timeout_s: float):
        super().__init__(daemon=True)
        self.master, self.rng, self.T = master, rng, timeout_s
        self.kind = weighted(rng, PP_MUTATIONS)
        self.at = rng.randrange(9)  # handshake, program-all ack, the pulse's parameter acks, trigger confirmation
        self.n_replies = 0
        self.events: list[str] = []  # "trigger" / "abort" in the order parsed
        self.hung = False
        self.hung_up = False
        self.stop = threading.Event()
        self.disconnected = threading.Event()  # the driver's close() sends op 81 last
        self.start()

    def _write(self, data: bytes) -> None:
        if self.hung_up:
            return
        try:
            os.write(self.master, data)
        except OSError:
            pass

    def run(self) -> None:
        buf = bytearray()
        while True:
            if self.hung_up:
                return
            r, _, _ = select.select([self.master], [], [], 0.005)
            if not r:
                if self.stop.is_set():
                    return
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                if self.stop.is_set():
                    return
                time.sleep(0.001)  # no slave open at this instant: nothing to read yet
                continue
            buf += data
            while len(buf) >= 2:
                if buf[0] != pw.OP_MENU:
                    del buf[0]
                    continue
                n = _pp_payload(buf)
                if n is None or len(buf) < 2 + n:
                    break
                op = buf[1]
                del buf[:2 + n]
                self._message(op)

    def _message(self, op: int) -> None:
        if op == pw.OP_SOFT_TRIGGER:
            self.events.append("trigger")
        elif op == pw.OP_ABORT:
            self.events.append("abort")
        elif op == pw.OP_DISCONNECT:
            self.events.append("disconnect")
            self.disconnected.set()
        if self.hung:
            return
        if op == pw.OP_HANDSHAKE:
            self._reply(bytes((pw.HANDSHAKE_REPLY,)) + struct.pack("<I", 21), handshake=True)
        elif op in (pw.OP_PROGRAM_ALL, pw.OP_PROGRAM_ONE, pw.OP_CONTINUOUS_LOOP, pw.OP_SET_VOLTAGE):
            self._reply(bytes((pw.ACK,)))

    def _reply(self, out: bytes, handshake: bool = False) -> None:
        index, self.n_replies = self.n_replies, self.n_replies + 1
        rng, kind = self.rng, self.kind
        if index != self.at or kind == "none":
            self._write(out)
            return
        if kind == "wrong_byte" or (kind == "version" and not handshake):
            out = bytes(rng.choice([0x00, 0x02, 0xFF, 0x4B, 0xD5, rng.randrange(256)]) for _ in out)
        elif kind == "version":
            out = out[:1] + struct.pack("<I", rng.choice([0, 5, 19, 20, 21, 22, 999, 1000, 2 ** 31, 2 ** 32 - 1]))
        elif kind == "truncate":
            out = out[:rng.randrange(len(out))]
        elif kind == "extra":
            out = out + random_bytes(rng, rng.randrange(1, 8))
        elif kind == "unsolicited":
            out = random_bytes(rng, rng.randrange(1, 8)) + out
        elif kind == "silence":
            return
        elif kind == "late":
            t = threading.Timer(1.5 * self.T, self._write, (out,))
            t.daemon = True
            t.start()
            return
        elif kind == "hang":
            self.hung = True
            return
        elif kind == "hangup":
            self.hung_up = True
            os.close(self.master)
            return
        elif kind == "split":
            k = rng.randrange(1, max(2, len(out)))
            self._write(out[:k])
            time.sleep(rng.choice([0.0001, 0.001]))  # a slow USB transfer, part of the behaviour fuzzed
            out = out[k:]
        elif kind == "duplicate":
            out = out + out
        self._write(out)

    def armed(self) -> bool:
        """A trigger not followed by an abort."""
        last_trigger = max((i for i, e in enumerate(self.events) if e == "trigger"), default=-1)
        return last_trigger >= 0 and "abort" not in self.events[last_trigger:]


class PulsePalCase(Case):
    """The Pulse Pal driver on a real pty (connect, arm one pulse, close) against FakePulsePal."""

    def __init__(self, rng: random.Random, timeout_s: float):
        super().__init__(rng, timeout_s)
        self.master, self.slave = os.openpty()  # the slave fd stays open: the master never sees a hang-up early
        self.path = os.ttyname(self.slave)
        self.fake = FakePulsePal(self.master, rng, timeout_s)
        self.notes.append(f"reply #{self.fake.at}: {self.fake.kind}")

    def run(self) -> Result:
        outcome, detail = "ok", ""
        drv = None
        try:
            drv = self.call(lambda: PulsePal(self.path, PP_WIRING, 25000.0, timeout_s=self.T))
            self.call(drv.on_chunk, 1250)
            self.call(drv.schedule, StimCommand(3000 + self.rng.randrange(500), (self.rng.randrange(2),), PP_PULSE))
            for end in (2500, 3750, 5000):
                self.call(drv.on_chunk, end)
        except DeviceError as exc:
            outcome, detail = "device_error", str(exc)[:160]
        if drv is not None:
            self.call(drv.close)
            if not self.fake.hung_up:  # pty data reaches the master asynchronously: wait for the last message
                self.fake.disconnected.wait(5.0)
        self.fake.stop.set()
        self.fake.join(2.0)
        unsafe = ""
        if self.fake.armed() and not self.fake.hung_up:
            unsafe = f"a trigger was not followed by an abort (device events {self.fake.events[-6:]})"
        self._close_fds()
        return self.finish(outcome, detail, unsafe)

    def _close_fds(self) -> None:
        for fd in (self.slave,) + (() if self.fake.hung_up else (self.master,)):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fake.hung_up = True

    def abandon(self) -> None:
        self.fake.stop.set()
        self._close_fds()


# ---- running ------------------------------------------------------------------------------------------------------
def make_case(target: str, seed: int, index: int, timeout_s: float, loopback_every: int) -> Case:
    rng = random.Random(f"{seed}:{target}:{index}")
    loopback = loopback_every > 0 and index % loopback_every == loopback_every - 1
    if target == "rhx":
        return RhxEmulatorCase(rng, timeout_s) if loopback else RhxCase(rng, timeout_s)
    if target == "openephys":
        return OpenEphysEmulatorCase(rng, timeout_s) if loopback else OpenEphysCase(rng, timeout_s)
    return PulsePalCase(rng, timeout_s)


def run_case(case: Case, blowup_mb: float, traced: bool) -> Result:
    """Run one case in a worker thread (so a driver that never returns is a hang, not a stuck fuzzer)."""
    box: dict = {}

    def body():
        try:
            box["result"] = case.run()
        except Exception:  # noqa: BLE001 - anything but DeviceError escaping a driver is what we look for
            box["result"] = Result("traceback", traceback.format_exc(limit=6)[-1500:])

    rss0 = maxrss_mb()
    if traced:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(case.total_limit)
    if worker.is_alive():
        case.abandon()
        worker.join(2.0)
        return Result("hang", f"a driver call never returned ({case.total_limit:.1f} s)")
    grown = (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20 if traced else maxrss_mb() - rss0
    if grown > blowup_mb:
        return Result("blowup", f"memory grew by {grown:.0f} MB during the case")
    return box["result"]


@dataclass
class Tally:
    counts: dict = field(default_factory=lambda: {o: 0 for o in OUTCOMES})
    examples: list = field(default_factory=list)
    wall_s: float = 0.0


def fuzz(targets: list[str], cases: int, seed: int = 0, timeout_s: float = 0.05, loopback_every: int = 100,
         blowup_mb: float = 128.0, traced: bool = False, progress: bool = True,
         max_examples: int = 8) -> dict[str, Tally]:
    """`cases` per target -> outcome counts, wall time and the first few bad cases (index, what, why)."""
    saved = intan_rhx.START_TIMEOUT_S, openephys.START_TIMEOUT_S
    intan_rhx.START_TIMEOUT_S = openephys.START_TIMEOUT_S = timeout_s
    if traced:
        tracemalloc.start()
    out: dict[str, Tally] = {}
    try:
        for target in targets:
            tally = out[target] = Tally()
            t0 = last = time.monotonic()
            for i in range(cases):
                case = make_case(target, seed, i, timeout_s, loopback_every)
                res = run_case(case, blowup_mb, traced)
                tally.counts[res.outcome] += 1
                if res.outcome in BAD and len(tally.examples) < max_examples:
                    tally.examples.append((i, case.describe(), res.detail))
                now = time.monotonic()
                if progress and (now - last > 2.0 or i == cases - 1):
                    last = now
                    shown = " ".join(f"{k}={v}" for k, v in tally.counts.items())
                    print(f"\r{target}: {i + 1}/{cases} {shown} ({(i + 1) / (now - t0):.0f} cases/s)   ",
                          end="" if i < cases - 1 else "\n", file=sys.stderr, flush=True)
            tally.wall_s = time.monotonic() - t0
    finally:
        intan_rhx.START_TIMEOUT_S, openephys.START_TIMEOUT_S = saved
        if traced:
            tracemalloc.stop()
    return out


def table(results: dict[str, Tally], cases: int) -> str:
    head = f"{'target':<10} {'cases':>7} " + " ".join(f"{o:>12}" for o in OUTCOMES) + f" {'wall_s':>8}"
    rows = [head, "-" * len(head)]
    for target, t in results.items():
        counts = " ".join(f"{t.counts[o]:>12}" for o in OUTCOMES)
        rows.append(f"{target:<10} {cases:>7} {counts} {t.wall_s:>8.1f}")
    for target, t in results.items():
        for i, what, why in t.examples:
            rows.append(f"  {target} case {i} [{what}]: {why}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000, help="cases per target")
    p.add_argument("--target", choices=TARGETS + ("all",), default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=0.05, help="the drivers' timeout_s")
    p.add_argument("--loopback-every", type=int, default=100, help="every N-th case through the shipped emulator")
    p.add_argument("--blowup-mb", type=float, default=128.0)
    p.add_argument("--tracemalloc", action="store_true", help="measure each case's traced peak instead of RSS")
    p.add_argument("--replay", type=int, default=None, help="run only case N of the seed and print it")
    p.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    a = p.parse_args(argv)
    targets = list(TARGETS) if a.target == "all" else [a.target]
    if a.replay is not None:
        saved = intan_rhx.START_TIMEOUT_S, openephys.START_TIMEOUT_S
        intan_rhx.START_TIMEOUT_S = openephys.START_TIMEOUT_S = a.timeout_s
        for target in targets:
            case = make_case(target, a.seed, a.replay, a.timeout_s, a.loopback_every)
            res = run_case(case, a.blowup_mb, False)
            print(f"{target} case {a.replay} [{case.describe()}]: {res.outcome} {res.detail}")
        intan_rhx.START_TIMEOUT_S, openephys.START_TIMEOUT_S = saved
        return 0
    t0 = time.monotonic()
    results = fuzz(targets, a.cases, a.seed, a.timeout_s, a.loopback_every, a.blowup_mb, a.tracemalloc)
    print(table(results, a.cases))
    print(f"total wall time {time.monotonic() - t0:.1f} s (seed {a.seed}, timeout_s {a.timeout_s})")
    if a.json:
        print(json.dumps({t: dict(r.counts, wall_s=round(r.wall_s, 1)) for t, r in results.items()}))
    return 1 if any(r.counts[o] for r in results.values() for o in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
