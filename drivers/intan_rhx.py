"""Intan RHX (v3.x) TCP interface as a rigctl Amplifier and Stimulator (RHS stim/record controllers).

Data: the wideband signal of every mapped channel from the waveform port (128-frame blocks, resynchronised
on the magic number, timestamps checked for continuity). Stimulation: each electrode's RHS channel is given
the pulse's parameters and a keypress trigger source (F1-F8), uploaded, and fired with
`execute ManualStimTriggerPulse Fk`; the pulse is aimed at the commanded sample with the channel's
`PostTriggerDelayMicroseconds`, computed from `get CurrentTimestamp` in the same exchange. Every batch of
writes ends with a `get` whose `Return:` confirms it; any other text before it is RHX's error sentence.
Every value read from a reply is checked against what RHX can answer (finite, in range, one of the
documented choices) before it is used, so a hostile or corrupt reply is a DeviceError, never arithmetic
on garbage.

Safe state (`safe_state`, also run on every fault while stimulating): every channel this driver has
*sent* an enable since it last saw the channel read back disabled — recorded before the bytes go out, so
a batch whose reply never came is covered — gets `set <ch>.StimEnabled false` + `execute
UploadStimParameters <ch>` in one write, followed by `get <ch>.StimEnabled` (the upload precedes each
read-back in the batch, which RHX runs in order). What is guaranteed: it never raises; it returns within
about `timeout_s` (waiting at most `timeout_s` more for the driver's lock if another thread holds it); if
the command connection accepts the write, the disable reaches RHX; `safe_state_verified` is True only if
every such channel answered `False`, else `unverified_channels` names the rest and `safe_state_problem`
says why. With the connection dead nothing can be sent (RHX listens again only when the operator
presses Connect); the channels stay recorded and `connect()` disables them first. [assumption, as the
emulator models it] disabling and uploading a channel also drops a trigger latched in its post-trigger
delay; check this on hardware before relying on it.
Wire facts: ../shared/spec/devices.md section 2 (checked against Intan-RHX v3.4.0 sources).
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rigctl.drivers import _rhx_wire as rw
from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.errors import DeviceError
from rigctl.layout import ElectrodeLayout
from rigctl.types import BiphasicPulse, Chunk, StimCommand

STIM_TYPES = rw.STIM_TYPES
START_TIMEOUT_S = 10.0  # the first block after `set runmode run` may take a while (board start-up)


@dataclass(frozen=True)
class _Armed:
    command: StimCommand
    key: str
    channels: tuple[str, ...]
    done_sample: int  # the channels are free again from here


class IntanRHX(Amplifier, Stimulator):
    """One RHX instance: `electrode_channels[i]` is the native channel (e.g. `A-010`) of electrode i."""

    def __init__(self, host: str, command_port: int = 5000, *, electrode_channels: list[str],
                 layout: ElectrodeLayout | None = None, timeout_s: float = 1.0, blocks_per_write: int = 1,
                 trigger_latency_ms: float = 0.0, connect: bool = True,
                 open_socket: Callable[[tuple[str, int], float], socket.socket] = socket.create_connection):
        """`open_socket((host, port), timeout_s)` makes the command and waveform connections (TCP by
        default; the device-reply fuzzer hands over socketpair ends to drive this code in-process)."""
        self.host = host
        self._open_socket = open_socket
        self.command_port = command_port
        self.names = [c.upper() for c in electrode_channels]
        for c in self.names:
            if not rw.is_channel_name(c):
                raise DeviceError(f"{c!r} is not an RHX amplifier channel; allowed: names like A-000 .. H-127")
        if len(set(self.names)) != len(self.names):
            raise DeviceError("an RHX channel is mapped to two electrodes")
        if layout is None:
            n = len(self.names)
            layout = ElectrodeLayout.grid(n // 8, 8, 200.0) if n % 8 == 0 and n else \
                ElectrodeLayout(np.zeros((n, 2)), tuple(self.names))
        self._layout = layout
        self.timeout_s = timeout_s
        self.blocks_per_write = blocks_per_write
        self.trigger_latency_ms = trigger_latency_ms
        self._frame_order = sorted(range(len(self.names)), key=lambda i: rw.channel_order_key(self.names[i]))
        self._to_electrode = np.argsort(self._frame_order)  # frame column -> electrode order
        self._cmd: socket.socket | None = None
        self._wave: socket.socket | None = None
        self._rx = bytearray()
        self._wbuf = bytearray()
        self._lock = threading.RLock()
        self._next_ts: int | None = None
        self._queue: list[StimCommand] = []
        self._armed: list[_Armed] = []
        self._cache: dict[str, dict[str, str]] = {}  # channel -> item -> value RHX holds (uploaded)
        self.clock = 0  # one past the last sample returned by read()
        self.fs = 0.0
        self.step_uA = 0.0
        self.controller_type = ""
        self.version = ""
        self.garbage_bytes = 0
        self.triggers_sent = 0
        self.faulted: str | None = None
        self.running = False
        self._maybe_enabled: set[str] = set()  # sent an enable, not yet read back disabled (kept over reconnects)
        self._stale_gets = 0  # `get <ch>.StimEnabled` sent on this connection and not answered yet
        self.safe_state_verified = True
        self.unverified_channels: tuple[str, ...] = ()
        self.safe_state_problem = ""
        if connect:
            self.connect()

    # ---- command port ------------------------------------------------------------------------------------
    def _fault(self, what: str) -> DeviceError:
        self.faulted = what
        return DeviceError(f"Intan RHX at {self.host}:{self.command_port}: {what}")

    def connect(self) -> None:
        """Connect to the command port and read the controller's identity, sample rate and step size."""
        with self._lock:
            self._close_sockets()
            try:
                self._cmd = self._open_socket((self.host, self.command_port), self.timeout_s)
            except OSError as exc:
                raise self._fault(f"cannot connect to the command port ({exc}); in RHX, press Connect under "
                                  "Network > Remote TCP Control (it stops listening after each client)") from exc
            self._cmd.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._rx.clear()
            self._stale_gets = 0
            self._cache = {}
            self._armed = []
            try:
                self._identify()
            except DeviceError:
                self.safe_state()
                raise
            if self._maybe_enabled:  # left enabled when an earlier connection died: disable them first
                self.abort()
            self.faulted = None

    def _identify(self) -> None:
        self.controller_type = self._value("Type", lambda t: rw.parse_choice("Type", t, rw.CONTROLLER_TYPES))
        self.fs = self._value("SampleRateHertz", lambda t: rw.parse_sample_rate(t, self.controller_type))
        self.step_uA = self._value("StimStepSizeMicroAmps", rw.parse_step_size)
        version = self._get_optional("Version")
        self.version = self._parsed("Version", version, rw.parse_version) if version else ""
        if self._value("RunMode", self._run_mode) != "Stop":
            mode = self._parsed("RunMode", self.command(["set runmode stop"], confirm="RunMode"), self._run_mode)
            if mode != "Stop":
                raise self._fault(f"still in RunMode {mode} after `set runmode stop`")

    @staticmethod
    def _run_mode(text: str) -> str:
        return rw.parse_choice("RunMode", text, rw.RUN_MODES)

    def _parsed(self, name: str, text: str, parse):
        """`parse(text)`, or DeviceError naming the item: a reply RHX cannot send is a fault."""
        try:
            return parse(text)
        except rw.ReplyError as exc:
            raise self._fault(f"impossible reply: {exc}") from exc

    def _value(self, name: str, parse):
        return self._parsed(name, self.get(name), parse)

    def reconnect(self) -> None:
        """After a fault: reconnect where RHX allows (its command port must be listening again)."""
        with self._lock:
            self._queue = []
            self.running = False
            self.connect()

    def _close_sockets(self) -> None:
        for s in (self._cmd, self._wave):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._cmd = self._wave = None

    def _send(self, commands: list[str]) -> None:
        if self._cmd is None:
            raise self._fault("not connected")
        try:
            # one write per batch (RHX splits each TCP read on ';'); the trailing ';' keeps two writes that
            # arrive in one read from fusing into one broken command
            self._cmd.sendall((";".join(commands) + ";").encode("latin-1"))
        except OSError as exc:
            raise self._fault(f"command port closed ({exc})") from exc

    def _read_reply(self, pattern: re.Pattern) -> tuple[re.Match, str]:
        """Read until `pattern` matches a complete `Return:` line; returns it and any text before it."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            text = self._rx.decode("latin-1")
            m = pattern.search(text)
            if m and m.end() == len(text):
                # replies are unterminated: make sure the value is not still arriving
                ready, _, _ = select.select([self._cmd], [], [], 0.001)
                if not ready:
                    before = text[:m.start()]
                    self._rx.clear()
                    return m, before
            left = deadline - time.monotonic()
            if left <= 0:
                got = f": got {text[-120:]!r}" if text else ""
                raise self._fault(f"no reply within {self.timeout_s} s{got} (RHX not answering)")
            ready, _, _ = select.select([self._cmd], [], [], left)
            if not ready:
                continue
            try:
                data = self._cmd.recv(65536)
            except OSError as exc:
                raise self._fault(f"command port closed ({exc})") from exc
            if not data:
                raise self._fault("command port closed by RHX")
            self._rx.extend(data)
            if len(self._rx) > rw.MAX_REPLY_BYTES:
                self._rx.clear()
                raise self._fault(f"more than {rw.MAX_REPLY_BYTES} bytes without the awaited `Return:` "
                                  "(garbage on the command port)")

    def command(self, commands: list[str], confirm: str) -> str:
        """Send `commands` + `get <confirm>` in one write; DeviceError with RHX's text if anything failed."""
        with self._lock:
            self._send(commands + [f"get {confirm}"])
            name = confirm.split(".")[-1]
            m, before = self._read_reply(re.compile(rf"Return: {re.escape(name)} (\S+)$", re.IGNORECASE))
            if before.strip():
                raise self._fault(f"RHX refused {'; '.join(commands)[:200]!r}: {before.strip()}")
            return m.group(1)

    def get(self, name: str) -> str:
        return self.command([], name)

    def _get_optional(self, name: str) -> str:
        try:
            return self.get(name)
        except DeviceError:
            self.faulted = None
            return ""

    @property
    def stream_clock(self) -> int | None:
        """The controller timestamp one past the last sample read (None before the first read): what an
        emulated controller on loopback paces itself to."""
        return self._next_ts

    def current_timestamp(self) -> int:
        """The last sample index the controller produced (-1 when stopped)."""
        with self._lock:
            self._send(["get currenttimestamp"])
            m, before = self._read_reply(re.compile(r"Return: (-?[0-9]+)$"))
            if before.strip():
                raise self._fault(f"get CurrentTimestamp: {before.strip()}")
            return self._parsed("CurrentTimestamp", m.group(1),
                                lambda t: rw.parse_int("CurrentTimestamp", t, -1, rw.TIMESTAMP_MAX))

    # ---- Amplifier ------------------------------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self.fs

    @property
    def n_channels(self) -> int:
        return len(self.names)

    @property
    def layout(self) -> ElectrodeLayout:
        return self._layout

    @property
    def uV_per_bit(self) -> float:
        return rw.UV_PER_BIT

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            if self.faulted:
                raise self._fault(f"in a fault state ({self.faulted}); reconnect first")
            per_write = self._parsed("TCPNumberDataBlocksPerWrite", self.command(
                ["execute clearalldataoutputs"] + [f"set {c}.tcpdataoutputenabled true" for c in self.names]
                + [f"set tcpnumberdatablocksperwrite {self.blocks_per_write}"], confirm="TCPNumberDataBlocksPerWrite"),
                lambda t: rw.parse_int("TCPNumberDataBlocksPerWrite", t, *rw.BLOCKS_PER_WRITE_RANGE))
            if per_write != self.blocks_per_write:
                raise self._fault(f"TCPNumberDataBlocksPerWrite is {per_write} after setting {self.blocks_per_write}")
            # drop any data connection left from an earlier client, then listen for ours
            port = self._parsed("TCPWaveformDataOutputPort", self.command(
                ["execute disconnecttcpwaveformdataoutput", "execute connecttcpwaveformdataoutput"],
                confirm="TCPWaveformDataOutputPort"), lambda t: rw.parse_int("TCPWaveformDataOutputPort", t, 1, 65535))
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    self._wave = self._open_socket((self.host, port), self.timeout_s)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise self._fault(f"cannot connect to the waveform port {port} ({exc})") from exc
                    time.sleep(0.01)
            # a receive buffer of ~50 ms of data keeps acquisition latency (and an accelerated emulator's
            # run-ahead) bounded, well inside the loop's look-ahead
            frame = 4 + 2 * len(self.names)
            self._wave.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                  max(8192, int(0.05 * self.fs) * frame,
                                      2 * self.blocks_per_write * rw.block_bytes(len(self.names))))
            self._wbuf.clear()
            # alone, and confirmed by the data it starts, not by a `get`: RHX executes whatever follows in the
            # same TCP read only after the run stops, and two writes can arrive in one read
            self._send(["set runmode run"])
            ready, _, _ = select.select([self._wave], [], [], max(self.timeout_s, START_TIMEOUT_S))
            if not ready:
                raise self._fault(f"no data within {max(self.timeout_s, START_TIMEOUT_S)} s of `set runmode run` "
                                  "(did it start?)")
            self.running = True
            self._next_ts = None

    def stop(self) -> None:
        with self._lock:
            if self._cmd is not None and self.running:
                try:
                    self.command(["set runmode stop"], confirm="RunMode")
                except DeviceError:
                    pass
            self.running = False
            if self._wave is not None:
                try:
                    self._wave.close()
                except OSError:
                    pass
                self._wave = None

    def read(self) -> Chunk:
        if self._wave is None:
            raise self._fault("read() before start()")
        n = len(self.names)
        deadline = time.monotonic() + self.timeout_s
        while True:
            stamps, words, skipped = rw.parse_blocks(self._wbuf, n)
            self.garbage_bytes += skipped
            if len(stamps):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fault(f"no waveform data for {self.timeout_s} s (RHX stopped sending)")
            ready, _, _ = select.select([self._wave], [], [], left)
            if not ready:
                continue
            try:
                data = self._wave.recv(1 << 20)
            except OSError as exc:
                raise self._fault(f"waveform port failed ({exc})") from exc
            if not data:
                partial = f" ({len(self._wbuf)} bytes of a partial block dropped)" if self._wbuf else ""
                raise self._fault(f"waveform connection closed by RHX{partial}")
            self._wbuf.extend(data)
        expected = self._next_ts if self._next_ts is not None else int(stamps[0])
        if stamps[0] != expected or np.any(np.diff(stamps) != 1):
            bad = int(stamps[0]) if stamps[0] != expected else int(stamps[np.argmax(np.diff(stamps) != 1) + 1])
            raise self._fault(f"waveform timestamps jumped (expected {expected}, got {bad}): corrupt or lost data")
        self._next_ts = int(stamps[-1]) + 1
        samples = (words.astype(np.int32) - rw.RAW_OFFSET).astype(np.int16)[:, self._to_electrode]
        chunk = Chunk(int(stamps[0]), np.ascontiguousarray(samples), rw.UV_PER_BIT, self.fs)
        self.clock = chunk.end_sample
        return chunk

    # ---- Stimulator ------------------------------------------------------------------------------------------
    def check_deliverable(self, command: StimCommand) -> None:
        """A current pulse on the RHS step grid, on channels of this controller (before anything is sent)."""
        self.channel_items(command.pulse)
        self._channels(command.electrodes)

    def channel_items(self, pulse: BiphasicPulse) -> dict[str, str]:
        """RHX stimulation items for `pulse`, or DeviceError if an RHS channel cannot produce it."""
        if not self.controller_type.lower() in STIM_TYPES:
            raise DeviceError(f"controller type {self.controller_type!r} cannot stimulate; allowed: an RHS "
                              "stim/record controller (ControllerStimRecord)")
        if pulse.unit != "uA":
            raise DeviceError(f"RHS channels deliver current; pulse unit {pulse.unit!r}, allowed: 'uA'")
        top = rw.MAX_STEPS * self.step_uA
        items: dict[str, str] = {}
        for name, amp in (("firstphaseamplitudemicroamps", abs(pulse.phase1_amplitude)),
                          ("secondphaseamplitudemicroamps", abs(pulse.phase2_amplitude))):
            steps = amp / self.step_uA
            if amp > top + 1e-9 or abs(steps - round(steps)) > 1e-6:
                raise DeviceError(f"amplitude {amp:g} µA; allowed: 0 to {top:g} µA in steps of {self.step_uA:g} µA "
                                  "(255 x StimStepSizeMicroAmps)")
            items[name] = rw.format_double(round(steps) * self.step_uA)
        period_us = 1e6 / self.fs
        for name, us in (("firstphasedurationmicroseconds", pulse.phase1_us),
                         ("secondphasedurationmicroseconds", pulse.phase2_us),
                         ("interphasedelaymicroseconds", pulse.interphase_us)):
            k = us / period_us
            if abs(k - round(k)) > 1e-6 or not 0 <= us <= 5000:
                raise DeviceError(f"{name}={us:g} µs; allowed: 0 to 5000 µs in whole sample periods "
                                  f"({period_us:g} µs at {self.fs:g} Hz)")
            items[name] = rw.format_double(us)
        if pulse.phase1_amplitude > 0 and pulse.phase2_amplitude > 0 or pulse.phase1_amplitude < 0 and pulse.phase2_amplitude < 0:
            raise DeviceError("both phases have the same sign; allowed: biphasic pulses")
        items["polarity"] = "negativefirst" if pulse.phase1_amplitude < 0 else "positivefirst"
        items["shape"] = "biphasicwithinterphasedelay" if pulse.interphase_us > 0 else "biphasic"
        items["pulseortrain"] = "singlepulse"
        items["stimenabled"] = "true"
        return items

    def _channels(self, electrodes: tuple[int, ...]) -> tuple[str, ...]:
        bad = [e for e in electrodes if not 0 <= e < len(self.names)]
        if bad:
            raise DeviceError(f"electrode(s) {bad} have no RHX channel; allowed: 0..{len(self.names) - 1}")
        return tuple(self.names[e] for e in electrodes)

    def schedule(self, command: StimCommand) -> None:
        with self._lock:
            if self.faulted:
                raise DeviceError(f"Intan RHX is in a fault state ({self.faulted}); reconnect first")
            self.channel_items(command.pulse)
            self._channels(command.electrodes)
            if command.sample < self.clock:
                raise DeviceError(f"pulse at sample {command.sample} is already past (amplifier at {self.clock})")
            self._queue.append(command)
            self._queue.sort(key=lambda c: c.sample)
            if self.running:
                self._arm_due()

    def on_chunk(self, end_sample: int) -> None:
        with self._lock:
            self._armed = [a for a in self._armed if a.done_sample > end_sample]
            if self._queue and self.running and not self.faulted:
                self._arm_due()

    def _arm_due(self) -> None:
        try:
            while self._queue:
                cmd = self._queue[0]
                channels = self._channels(cmd.electrodes)
                busy = [a for a in self._armed if set(a.channels) & set(channels)]
                if busy:
                    if cmd.sample <= busy[0].done_sample:
                        raise self._fault(f"pulse at sample {cmd.sample} overlaps the pulse at sample "
                                          f"{busy[0].command.sample} on the same channel(s)")
                    return  # armed when the earlier pulse is done
                used = {a.key for a in self._armed}
                free = [k for k in rw.KEYS if k not in used]
                if not free:
                    return
                if not self._arm(cmd, channels, free[0]):
                    return
                self._queue.pop(0)
        except DeviceError:
            self.safe_state()
            raise

    def _arm(self, cmd: StimCommand, channels: tuple[str, ...], key: str) -> bool:
        """Program, upload and fire `cmd` on `key`; False if it is still beyond the longest delay."""
        now = self.current_timestamp() + 1  # the controller holds this clock until our next batch (emulator)
        if now == 0:
            raise self._fault("the controller is stopped (CurrentTimestamp -1) while the driver runs")
        latency = int(round(self.trigger_latency_ms * 1e-3 * self.fs))
        delay = cmd.sample - now - latency
        delay_us = delay * 1e6 / self.fs
        if delay < 0:
            raise self._fault(f"pulse at sample {cmd.sample} is already past on the controller (at {now})")
        if delay_us > rw.POST_TRIGGER_DELAY_MAX_US:
            self._send(["get uploadinprogress"])  # release the held clock; arm on a later chunk
            m, _ = self._read_reply(re.compile(r"Return: UploadInProgress (\S+)$", re.IGNORECASE))
            self._parsed("UploadInProgress", m.group(1), lambda t: rw.parse_bool("UploadInProgress", t))
            return False
        items = self.channel_items(cmd.pulse)
        items["source"] = f"keypress{key.lower()}"
        items["posttriggerdelaymicroseconds"] = rw.format_double(delay_us) if delay_us == int(delay_us) \
            else f"{delay_us:.3f}"
        batch: list[str] = []
        changed: list[str] = []
        for ch in channels:
            cache = self._cache.setdefault(ch, {})
            diff = [f"set {ch}.{k} {v}" for k, v in items.items() if cache.get(k) != v]
            if diff:
                batch += diff
                changed.append(ch)
        for ch, cache in self._cache.items():  # no other channel may answer this key
            if ch not in channels and cache.get("source") == items["source"] and cache.get("stimenabled") == "true":
                batch.append(f"set {ch}.stimenabled false")
                changed.append(ch)
        batch += [f"execute uploadstimparameters {ch}" for ch in changed]
        batch.append(f"execute manualstimtriggerpulse {key.lower()}")
        self._maybe_enabled.update(channels)  # before the bytes go out: a lost reply must not hide an enable
        self._parsed("UploadInProgress", self.command(batch, confirm="UploadInProgress"),
                     lambda t: rw.parse_bool("UploadInProgress", t))
        for ch in channels:
            self._cache[ch].update(items)
        for ch in changed:
            if ch not in channels:
                self._cache[ch]["stimenabled"] = "false"
        length = int(round(cmd.pulse.duration_us * self.fs / 1e6))
        self._armed.append(_Armed(cmd, key, channels, cmd.sample + length + 1))
        self.triggers_sent += 1
        return True

    def abort(self) -> None:
        """Drop queued commands and disable (read back) every channel this driver may have enabled;
        DeviceError if RHX does not confirm it."""
        with self._lock:
            self._queue = []
            self._armed = []
            self._record(self._disable(verify=True))
            if not self.safe_state_verified:
                raise self._fault(f"stimulation not confirmed off on {list(self.unverified_channels)}: "
                                  f"{self.safe_state_problem}")

    def safe_state(self) -> None:
        """Abort without raising; see the module docstring for what is guaranteed."""
        locked = self._lock.acquire(timeout=self.timeout_s)
        try:
            self._queue = []
            self._armed = []
            # without the lock another thread is mid-exchange on the socket: send, but leave its replies alone
            self._record(self._disable(verify=locked))
        except Exception as exc:  # the safe state must never raise into a fault handler
            self._record((False, f"safe state failed: {type(exc).__name__}: {exc}"))
        finally:
            if locked:
                self._lock.release()

    def _record(self, outcome: tuple[bool, str]) -> None:
        self.safe_state_verified, self.safe_state_problem = outcome

    def _disable(self, verify: bool) -> tuple[bool, str]:
        """One write disabling + uploading every channel in `_maybe_enabled`, each read back with `get`.

        -> (verified, why not). Replies are matched by counting `Return: StimEnabled` answers in order
        (RHX names no channel in them), after skipping answers still owed to an earlier read-back that
        timed out; any other text (stale replies, error sentences) is ignored.
        """
        targets = sorted(self._maybe_enabled)
        self.unverified_channels = tuple(targets)
        if not targets:
            return True, ""
        sock = self._cmd
        if sock is None:
            return False, "not connected"
        answer = re.compile(r"Return: StimEnabled (True|False)", re.IGNORECASE)
        if verify:  # the reader's buffer is ours only under the lock
            self._stale_gets = max(0, self._stale_gets - len(answer.findall(self._rx.decode("latin-1"))))
            self._rx.clear()
        batch: list[str] = []
        for ch in targets:
            batch += [f"set {ch}.stimenabled false", f"execute uploadstimparameters {ch}", f"get {ch}.stimenabled"]
        try:
            sock.sendall((";".join(batch) + ";").encode("latin-1"))
        except OSError as exc:
            return False, f"command port closed ({exc})"
        skip, self._stale_gets = self._stale_gets, self._stale_gets + len(targets)
        if not verify:
            return False, "sent without read-back (another thread held the connection)"
        answers: list[bool] = []
        text, deadline, why = "", time.monotonic() + self.timeout_s, ""
        while len(answers) < skip + len(targets):
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"no read-back within {self.timeout_s} s"
                break
            try:
                ready, _, _ = select.select([sock], [], [], left)
                data = sock.recv(65536) if ready else None
            except (OSError, ValueError) as exc:  # ValueError: the socket was closed under us
                why = f"command port failed during read-back ({exc})"
                break
            if data is None:
                continue
            if not data:
                why = "command port closed by RHX during read-back"
                break
            text += data.decode("latin-1")
            end = 0
            for m in answer.finditer(text):
                answers.append(m.group(1).lower() == "true")
                end = m.end()
            text = text[end:]
            if len(text) > rw.MAX_REPLY_BYTES:
                why = "garbage on the command port during read-back"
                break
        self._stale_gets = max(0, skip + len(targets) - len(answers))
        ours = answers[skip:]
        for ch, on in zip(targets, ours):
            if not on:
                self._maybe_enabled.discard(ch)
                self._cache.setdefault(ch, {})["stimenabled"] = "false"
        still_on = [ch for ch, on in zip(targets, ours) if on]
        self.unverified_channels = tuple(still_on + targets[len(ours):])
        if still_on:
            why = f"{still_on} still read back StimEnabled True"
        return not self.unverified_channels, why

    def close(self) -> None:
        with self._lock:
            self.safe_state()
            self.stop()
            self._close_sockets()

    @property
    def pending(self) -> int:
        return len(self._queue)
