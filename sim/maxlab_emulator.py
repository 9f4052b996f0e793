"""MaxWell MaxLab Live's server as a remote client sees it, serving a simulated culture.

Modelled on ../shared/spec/devices.md section 4 (the `maxlab` package's command strings, checked in
vendored public copies; the ZMQ stream as community code reads it):
- command port: TCP, one request per connection (more are served in order if a client sends them),
  request and reply end in `\\r\\n###`; `Error` for anything it cannot do; queries answer their value
  (`system_query_dac_lsb_mv` -> `2.9`, `sequence_new` -> a token, `..._query_stimulation_at_electrode` ->
  a unit or nothing); other commands answer `Ok` [assumption: the real acknowledgement text is not public];
- stimulation: 32 units (power, connect, voltage/current mode, DAC source), three DACs, the routed array
  (`online`): an electrode of the culture gets the lowest free unit on `connect_electrode_to_stimulation`,
  effective after `mea_array_download`; sequences (`sequence_new/append/send/delete/reset`) run from the
  frame "now" with `system_delay_samples` timing. A DAC excursion of two opposite phases (optionally with a
  gap at 512) is one biphasic pulse on every unit that is powered, connected, in voltage mode and sourcing
  that DAC when it starts; (512 - code) x LSB mV. Other waveforms, current mode and DC levels are refused
  into `errors`, never faked;
- data [community]: ZMQ PUB of [uint64 frame number, float32 x columns, b""] where the culture's electrode
  i appears in stream column `columns[i]` (µV) and every other column carries seeded noise;
  `frames_per_message` frames per message (1 = what MaxLab is seen to send). No spike events (rigctl
  detects spikes itself).

MaxTwo: `backend` may be a list, one culture per well (well w's electrode i = stream column
w * channels_per_well + columns[i], each well its own chip: 32 units, three DACs, its own `online` array).
`system_set_activated_wells 0,2` (maxlab.util.activate, [verified] command string) picks the wells that
later chip commands and `sequence_send` act on; queries answer for the lowest activated well
[assumption: how a real MaxTwo addresses one well's units is not public; verify on the bench]. Every well
is activated at start.

Time: accelerated (default) publishes with back-pressure (XPUB, no drops) once a subscriber is there;
with `clock` (the reading driver's frame position, in-process rigs) it also stays at most `lead_s` ahead
of it, and "now" for `sequence_send` is that clock, so a pulse lands on the sample the driver aimed at.
Without `clock`, "now" is the first frame the culture can still be stimulated at. `realtime=True` paces frames to the wall clock and
drops for slow subscribers like a PUB socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from rigctl.drivers import _maxlab_wire as mw
from rigctl.types import BiphasicPulse, StimCommand

OK = "Ok"


@dataclass
class MaxLabFaults:
    """Fault injection on the server side."""

    hung: bool = False  # commands are read and never answered; connections stay open
    refuse_connections: bool = False  # the command port closes every connection at once (server gone)
    error_on: str | None = None  # the next command containing this text answers `Error` (and is not run)
    rewrite_reply: Callable[[str, str], bytes] | None = None  # (command, reply) -> bytes sent instead
    stalled: bool = False  # the stream stops (the server keeps answering commands)
    skip_frames_next: int = 0  # frames left out of the stream once (what a PUB drop looks like)
    garbage_next: list[bytes] | None = None  # published instead of the next data message
    nan_next: bool = False  # the next message's first culture sample is NaN (a corrupt value)
    extra: dict = field(default_factory=dict)


@dataclass
class _Unit:
    power: bool = False
    connect: bool = False
    current_mode: bool = False
    large_range: bool = False
    dac: int = 0
    external_ref: bool = False


@dataclass(order=True)
class _Event:
    sample: int
    order: int
    kind: str = field(compare=False)  # "unit" or "pulse"
    args: tuple = field(compare=False, default=())


@dataclass
class _Chip:
    """One well: the culture behind its stream columns, its 32 stimulation units, three DACs, arrays and the
    pulses laid out for it; `clock` is its reader's frame position (in-process rigs) or None."""

    backend: object
    columns: list[int]  # absolute stream columns of the culture's electrodes
    index_of_mea: dict[int, int]
    clock: Callable[[], int | None] | None
    frontier: int  # pulses before this frame can no longer reach the culture
    units: list[_Unit] = field(default_factory=lambda: [_Unit() for _ in range(mw.N_STIM_UNITS)])
    dacs: list[int] = field(default_factory=lambda: [mw.DAC_ZERO] * 3)
    arrays: dict[str, dict[int, int]] = field(default_factory=lambda: {"online": {}})  # token -> MEA -> unit
    downloaded: dict[int, int] = field(default_factory=dict)  # unit -> MEA electrode, as on the chip
    events: list[_Event] = field(default_factory=list)
    delivered: list[StimCommand] = field(default_factory=list)
    buf: np.ndarray | None = None  # culture frames read, not yet published


class MaxLabEmulator:
    """`backend` is the culture (or a StimulusBus). Culture electrode i = stream column `columns[i]` and MEA
    electrode `electrodes[i]`."""

    def __init__(self, backend, *, columns: list[int] | None = None, electrodes: list[int] | None = None,
                 wells: int = 1, channels_per_well: int = mw.CHANNELS_PER_WELL, frames_per_message: int = 1,
                 lsb_mV: float = 2.9, seed: int = 0, noise_uV: float = 5.0, host: str = "127.0.0.1",
                 command_port: int = 0, data_port: int = 0, realtime: bool = False,
                 clock: Callable[[], int | None] | list | None = None, lead_s: float = 0.05,
                 horizon_s: float = 0.05, subscribers: int = 1):
        if wells not in mw.WELLS:
            raise ValueError(f"wells={wells}; allowed: {mw.WELLS}")
        per_well = isinstance(backend, (list, tuple))
        backends = list(backend) if per_well else [backend]
        if not backends or len(backends) > wells:
            raise ValueError(f"{len(backends)} cultures; allowed: 1 to {wells} (one per well)")
        clocks = list(clock) if isinstance(clock, (list, tuple)) else [clock] * len(backends)
        self.backend = backends[0]
        self.fs = float(self.backend.sample_rate_hz)
        n = int(self.backend.n_channels)
        for b in backends:
            if float(b.sample_rate_hz) != mw.SAMPLE_RATE_HZ:
                raise ValueError(f"the culture runs at {float(b.sample_rate_hz):g} Hz; MaxLab streams at "
                                 f"{mw.SAMPLE_RATE_HZ:g} Hz")
            if int(b.n_channels) != n:
                raise ValueError(f"cultures of {int(b.n_channels)} and {n} electrodes; allowed: the same in every well")
        self.n_stream = wells * channels_per_well
        self.columns = list(range(n)) if columns is None else [int(c) for c in columns]
        self.electrodes = default_electrodes(n) if electrodes is None else [int(e) for e in electrodes]
        if len(self.columns) != n or len(self.electrodes) != n:
            raise ValueError(f"{len(self.columns)} columns and {len(self.electrodes)} MEA electrodes for {n} "
                             "culture electrodes; allowed: one each per electrode")
        top = channels_per_well if per_well else self.n_stream
        if len(set(self.columns)) != n or not all(0 <= c < top for c in self.columns):
            raise ValueError(f"columns must be distinct, 0..{top - 1}" + (" (within a well)" if per_well else ""))
        if len(set(self.electrodes)) != n or not all(0 <= e < mw.n_electrodes() for e in self.electrodes):
            raise ValueError(f"MEA electrodes must be distinct, 0..{mw.n_electrodes() - 1}")
        self.wells, self.channels_per_well = wells, channels_per_well
        self.frames_per_message = int(frames_per_message)
        self.lsb_mV = lsb_mV
        self.host = host
        self.realtime = realtime
        self.lead = int(round(lead_s * self.fs))
        self.subscribers = subscribers  # accelerated: publish once this many readers subscribed (one per well)
        self.horizon = int(round(horizon_s * self.fs))
        self.faults = MaxLabFaults()
        self.lock = threading.RLock()
        self.frame = int(self.backend.now_sample)  # next frame to publish
        index_of_mea = {e: i for i, e in enumerate(self.electrodes)}
        self.chips = [_Chip(b, [w * channels_per_well * per_well + c for c in self.columns], index_of_mea, clocks[w],
                            self.frame) for w, b in enumerate(backends)]
        self.activated = list(range(len(self.chips)))
        self.sequences: dict[str, list[str]] = {}
        self._seq_count = 0
        self._order = 0
        self.delivered: list[StimCommand] = []  # every well's pulses (each chip keeps its own too)
        self.commands: deque[str] = deque(maxlen=10000)  # every command received (tests, `rigctl emulate`)
        self.errors: list[str] = []
        self.on_pulse: Callable[[StimCommand], None] | None = None
        rng = np.random.default_rng(seed)
        rows = max(256, min(2000, 4_000_000 // self.n_stream))  # a repeating block: a few MB at most
        self._noise = (rng.standard_normal((rows, self.n_stream), dtype=np.float32) * np.float32(noise_uV))
        for chip in self.chips:
            self._noise[:, chip.columns] = 0.0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, command_port))
        self._listener.listen(16)
        self.command_port = self._listener.getsockname()[1]
        self.ctx = zmq.Context.instance()
        self.pub = self.ctx.socket(zmq.PUB if realtime else zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if not realtime:
            self.pub.setsockopt(zmq.XPUB_NODROP, 1)  # back-pressure instead of drops
            if subscribers > 1:  # every reader's subscription counts (a plate: one per well)
                self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            self.pub.setsockopt(zmq.SNDHWM, max(2, 400 // self.frames_per_message))
            self.pub.setsockopt(zmq.SNDBUF, 256 * 1024)
            self.pub.setsockopt(zmq.SNDTIMEO, 50)  # a blocked send wakes up to check for close()
        if data_port:
            self.pub.bind(f"tcp://{host}:{data_port}")
            self.data_port = data_port
        else:
            self.data_port = self.pub.bind_to_random_port(f"tcp://{host}", min_port=20000, max_port=60000)
        self._threads = [threading.Thread(target=self._serve_commands, name="maxlab-commands", daemon=True),
                         threading.Thread(target=self._stream, name="maxlab-stream", daemon=True)]

    @property
    def units(self) -> list["_Unit"]:
        """The first well's stimulation units (a MaxOne's only chip)."""
        return self.chips[0].units

    @property
    def dacs(self) -> list[int]:
        return self.chips[0].dacs

    def _active(self) -> list["_Chip"]:
        return [self.chips[w] for w in self.activated]

    def start(self) -> "MaxLabEmulator":
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop both threads. The stream thread owns the ZMQ socket and closes it as it ends: a socket closed by
        another thread while a slow step (a first numba compile, a loaded machine) keeps the stream thread past
        the join's timeout can abort the process inside libzmq."""
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=2.0)
        if self._threads[1].ident is None:  # never started; once started, the stream thread closes `pub`
            self.pub.close(0)

    # ---- command port ------------------------------------------------------------------------------------------
    def _serve_commands(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                if self.faults.refuse_connections:
                    continue
                self._serve_client(client)
            except OSError:
                pass
            finally:
                client.close()

    def _serve_client(self, client: socket.socket) -> None:
        client.settimeout(0.1)
        buf = bytearray()
        while not self._stop.is_set():
            at = buf.find(mw.END_MARKER)
            if at >= 0:
                text = bytes(buf[:at]).decode("latin-1")
                del buf[:at + len(mw.END_MARKER)]
                if self.faults.hung:
                    continue
                with self.lock:
                    reply = self.handle(text)
                out = reply.encode("latin-1") + mw.END_MARKER
                if self.faults.rewrite_reply is not None:
                    out = self.faults.rewrite_reply(text, reply)
                client.sendall(out)
                continue
            try:
                data = client.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            buf += data

    def handle(self, text: str) -> str:
        """One command -> its reply (under the lock)."""
        self.commands.append(text)
        f = self.faults
        if f.error_on is not None and f.error_on in text:
            f.error_on = None
            return mw.ERROR_REPLY
        head, _, rest = text.partition("\n")
        words = head.split()
        if not words:
            return mw.ERROR_REPLY
        verb, args = words[0], words[1:]
        try:
            if verb == "mea_array_command":
                return self._array(args, rest)
            if verb.startswith("sequence_"):
                return self._sequence(verb, args, rest)
            if rest:
                return mw.ERROR_REPLY
            return self._direct(verb, args)
        except (ValueError, IndexError):
            return mw.ERROR_REPLY

    def _direct(self, verb: str, args: list[str]) -> str:
        if verb == "system_query_dac_lsb_mv":
            return f"{self.lsb_mV:g}"
        if verb == "system_set_activated_wells":
            wells = [int(w) for w in self._one(args).split(",")]
            if not wells or not all(0 <= w < len(self.chips) for w in wells):
                return mw.ERROR_REPLY
            self.activated = sorted(set(wells))
            return OK
        for chip in self._active():
            if verb == "mea_set_stimulation_unit":
                self._set_unit(chip, args)
            elif verb == "mea_set_dac":
                self._set_dac(chip, args, at=None)
            elif verb == "mea_array_new":
                chip.arrays.setdefault(self._one(args), {})
            elif verb == "mea_array_delete" and self._one(args) != "online":
                chip.arrays.pop(args[0], None)
        if verb in ("mea_set_stimulation_unit", "mea_set_dac", "mea_array_new", "mea_array_delete"):
            return OK
        if verb in ("system_delay_samples",):
            return OK  # outside a sequence: nothing to wait for
        if verb in ("mea_set_core", "mea_set_amplifier", "system_initialize", "system_offset", "system_gain",
                    "system_initialize_wells", "system_set_reference_stimulation_high",
                    "system_set_reference_stimulation_low", "system_set_reference_stimulation_middle",
                    "system_trigger_event", "system_set_status_led", "stream_set_event_threshold"):
            return OK  # accepted, no effect on the simulated culture
        return mw.ERROR_REPLY

    @staticmethod
    def _one(args: list[str]) -> str:
        if len(args) != 1:
            raise ValueError(f"{len(args)} arguments; allowed: 1")
        return args[0]

    @staticmethod
    def _ints(args: list[str], n: int) -> list[int]:
        if len(args) != n:
            raise ValueError(f"{len(args)} arguments; allowed: {n}")
        return [int(a) for a in args]

    def _set_unit(self, chip: _Chip, args: list[str], at: int | None = None) -> None:
        u, power, connect, current, large, dac, ext = self._ints(args, 7)
        if not -1 <= u < mw.N_STIM_UNITS or not 0 <= dac <= 2:
            raise ValueError("unit or dac out of range")
        if at is not None:  # inside a sequence: takes effect at its sample
            self._push(chip, at, "unit", (u, power, connect, current, large, dac, ext))
            return
        self._apply_unit(chip, (u, power, connect, current, large, dac, ext))

    @staticmethod
    def _apply_unit(chip: _Chip, a: tuple) -> None:
        u, power, connect, current, large, dac, ext = a
        for k in (range(mw.N_STIM_UNITS) if u == -1 else (u,)):
            chip.units[k] = _Unit(bool(power), bool(connect), bool(current), bool(large), dac, bool(ext))

    def _set_dac(self, chip: _Chip, args: list[str], at: int | None) -> tuple[int, int, int]:
        n, code, code2 = self._ints(args, 3)
        if not 0 <= n <= 3 or not (0 <= code <= mw.DAC_MAX and 0 <= code2 <= mw.DAC_MAX):
            raise ValueError("dac or code out of range")
        if at is None:
            for d, c in self._dac_targets(n, code, code2):
                chip.dacs[d] = c
                if c != mw.DAC_ZERO and any(x.power and x.connect and x.dac == d for x in chip.units):
                    self.errors.append(f"mea_set_dac {n} {code} outside a sequence on powered units: a DC level "
                                       "is not emulated")
        return n, code, code2

    @staticmethod
    def _dac_targets(n: int, code: int, code2: int) -> list[tuple[int, int]]:
        return [(0, code), (1, code2)] if n == 3 else [(n, code)]

    def _array(self, args: list[str], sub: str) -> str:
        """An array sub-command on every activated well; the reply is the lowest well's."""
        replies = [self._chip_array(chip, args, sub) for chip in self._active()]
        return mw.ERROR_REPLY if mw.ERROR_REPLY in replies else replies[0]

    def _chip_array(self, chip: _Chip, args: list[str], sub: str) -> str:
        token = args[0]
        if token not in chip.arrays:
            return mw.ERROR_REPLY
        conn = chip.arrays[token]
        words = sub.split()
        if not words:
            return mw.ERROR_REPLY
        verb, a = words[0], words[1:]
        if verb == "mea_array_connect_electrode_to_stimulation":
            e = int(a[0])
            if e not in chip.index_of_mea:
                return mw.ERROR_REPLY  # not routed in this configuration
            if e not in conn:
                free = sorted(set(range(mw.N_STIM_UNITS)) - set(conn.values()))
                if not free:
                    return mw.ERROR_REPLY
                conn[e] = free[0]
            return OK
        if verb == "mea_array_query_stimulation_at_electrode":
            unit = conn.get(int(a[0]))
            return "" if unit is None else str(unit)
        if verb == "mea_array_disconnect_electrode_from_stimulation":
            conn.pop(int(a[0]), None)
            return OK
        if verb == "mea_array_download":
            chip.downloaded = {u: e for e, u in conn.items()}
            return OK
        if verb in ("mea_array_reset", "mea_array_clear_selected_electrodes"):
            conn.clear()
            return OK
        if verb in ("mea_array_select_electrodes", "mea_array_route", "mea_array_select_stimulation_electrodes"):
            return OK  # the routing is the culture's fixed map
        return mw.ERROR_REPLY

    def _sequence(self, verb: str, args: list[str], body: str) -> str:
        if verb == "sequence_new":
            if args:
                token = args[0]
            else:
                self._seq_count += 1
                token = f"seq{self._seq_count}"
            self.sequences[token] = []
            return token
        token = args[0]
        if token not in self.sequences:
            return mw.ERROR_REPLY
        if verb == "sequence_append":
            words = body.split()
            if not words or words[0] not in ("mea_set_dac", "system_delay_samples", "mea_set_stimulation_unit",
                                             "system_trigger_event"):
                return mw.ERROR_REPLY
            self.sequences[token].append(body)
            return OK
        if verb == "sequence_send":
            for chip in self._active():
                self._run(chip, token)
            return OK
        if verb == "sequence_reset":
            self.sequences[token] = []
            return OK
        if verb == "sequence_delete":
            del self.sequences[token]
            return OK
        return mw.ERROR_REPLY

    # ---- stimulation ---------------------------------------------------------------------------------------------
    def now(self, chip: "_Chip | None" = None) -> int:
        """The frame a sequence sent now starts at: the client's clock if given, else the earliest frame the
        culture can still be stimulated at (the next frame to publish, or later if the culture has already
        simulated past it)."""
        chip = chip or self.chips[0]
        if chip.clock is not None:
            c = chip.clock()
            if c is not None:
                return int(c)
        return max(self.frame, chip.frontier)

    def _push(self, chip: _Chip, sample: int, kind: str, args: tuple) -> None:
        self._order += 1
        chip.events.append(_Event(sample, self._order, kind, args))

    def _run(self, chip: _Chip, token: str) -> None:
        """Lay a sequence's commands out in time from the well's now; DAC steps become pulses."""
        t = self.now(chip)
        levels: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
        for cmd in self.sequences[token]:
            words = cmd.split()
            if words[0] == "system_delay_samples":
                n = int(words[1])
                if n < 0:
                    raise ValueError("negative delay")
                t += n
            elif words[0] == "mea_set_dac":
                for d, c in self._dac_targets(*self._set_dac(chip, words[1:], at=t)):
                    levels[d].append((t, c))
            elif words[0] == "mea_set_stimulation_unit":
                self._set_unit(chip, words[1:], at=t)
        for d, steps in levels.items():
            self._pulses(chip, d, steps, token)

    def _pulses(self, chip: _Chip, dac: int, steps: list[tuple[int, int]], token: str) -> None:
        """Biphasic excursions of one DAC -> pulse events; anything else goes to `errors`."""
        i, level = 0, chip.dacs[dac]
        while i < len(steps):
            t0, c1 = steps[i]
            if c1 == level or c1 == mw.DAC_ZERO:
                level = c1
                i += 1
                continue
            shape = [c for _, c in steps[i:i + 4]]
            times = [s for s, _ in steps[i:i + 4]]
            if len(shape) >= 3 and shape[1] != mw.DAC_ZERO and shape[2] == mw.DAC_ZERO \
                    and (shape[1] - mw.DAC_ZERO) * (c1 - mw.DAC_ZERO) < 0:
                n1, gap, n2, used = times[1] - t0, 0, times[2] - times[1], 3
            elif len(shape) == 4 and shape[1] == mw.DAC_ZERO and shape[2] != mw.DAC_ZERO and shape[3] == mw.DAC_ZERO \
                    and (shape[2] - mw.DAC_ZERO) * (c1 - mw.DAC_ZERO) < 0:
                n1, gap, n2, used = times[1] - t0, times[2] - times[1], times[3] - times[2], 4
            else:
                self.errors.append(f"sequence {token}: DAC{dac} waveform from sample {t0} {shape} is not one biphasic "
                                   "pulse; not delivered (not emulated)")
                return
            v1 = (mw.DAC_ZERO - c1) * self.lsb_mV
            v2 = (mw.DAC_ZERO - shape[used - 2]) * self.lsb_mV
            us = 1e6 / self.fs
            pulse = BiphasicPulse(v1, n1 * us, v2, n2 * us, gap * us, "mV")
            self._push(chip, t0, "pulse", (dac, pulse))
            level = mw.DAC_ZERO
            i += used

    def deliver(self, chip: _Chip, until: int) -> None:
        """Hand a well's culture every pulse starting before `until` (unit states as they are at its onset)."""
        chip.frontier = max(chip.frontier, until)
        due = sorted(e for e in chip.events if e.sample < until)
        if not due:
            return
        chip.events = [e for e in chip.events if e.sample >= until]
        for ev in due:
            if ev.kind == "unit":
                self._apply_unit(chip, ev.args)
                continue
            dac, pulse = ev.args
            targets = []
            for u, st in enumerate(chip.units):
                if st.power and st.connect and st.dac == dac and not st.external_ref and u in chip.downloaded:
                    if st.current_mode:
                        self.errors.append(f"unit {u} in current mode at sample {ev.sample}: not emulated")
                        continue
                    targets.append(chip.index_of_mea[chip.downloaded[u]])
            if not targets:
                continue  # the DAC moved with no unit on it: nothing reaches the culture
            cmd = StimCommand(ev.sample, tuple(sorted(targets)), pulse)
            self.delivered.append(cmd)
            chip.delivered.append(cmd)
            try:
                chip.backend.schedule(cmd)
            except Exception as exc:
                self.errors.append(f"culture refused pulse at sample {ev.sample}: {exc}")
                continue
            if self.on_pulse is not None:
                self.on_pulse(cmd)

    # ---- data stream ---------------------------------------------------------------------------------------------
    def _wait_for_subscriber(self) -> bool:
        subscribers = 0
        while not self._stop.is_set():
            while self.pub.poll(0, zmq.POLLIN):
                msg = self.pub.recv()
                subscribers += 1 if msg[:1] == b"\x01" else -1
            if subscribers >= self.subscribers:
                return True
            self.pub.poll(20, zmq.POLLIN)
        return False

    def _stream(self) -> None:
        try:
            self._stream_frames()
        finally:
            self.pub.close(0)

    def _stream_frames(self) -> None:
        if not self.realtime and not self._wait_for_subscriber():
            return
        for chip in self.chips:
            chip.backend.start()
            chip.buf = np.empty((0, len(self.columns)), np.float32)
        k = self.frames_per_message
        wall0, first0 = time.monotonic(), self.frame
        while not self._stop.is_set():
            if self.faults.stalled:
                self._stop.wait(0.005)
                wall0, first0 = time.monotonic(), self.frame
                continue
            if self.realtime:
                if self._stop.wait(max(0.0, wall0 + (self.frame + k - first0) / self.fs - time.monotonic())):
                    return
            else:
                clocks = [c for c in (chip.clock() for chip in self.chips if chip.clock is not None) if c is not None]
                if clocks and self.frame + k > min(clocks) + self.lead:
                    self._stop.wait(0.0002)  # a reader is behind: an accelerated server stays near the slowest
                    continue
            with self.lock:
                frames = self._noise_frames(self.frame, k)
                for chip in self.chips:
                    if not self._fill(chip, k):
                        return
                    frames[:, chip.columns] = chip.buf[:k]
                    chip.buf = chip.buf[k:]
                if self.faults.nan_next:
                    self.faults.nan_next = False
                    frames[0, self.chips[0].columns[0]] = np.nan
                first = self.frame
                self.frame += k
            if not self._publish(mw.frame_message(first, frames)):
                return

    def _noise_frames(self, first: int, k: int) -> np.ndarray:
        """k frames of the seeded noise from frame `first` (every culture column 0, to be filled)."""
        return self._noise[np.arange(first, first + k) % len(self._noise)]

    def _fill(self, chip: _Chip, k: int) -> bool:
        """Read a well's culture (pulses delivered a horizon ahead) until `k` frames are buffered."""
        backend = chip.backend
        chunk_len = int(getattr(backend, "chunk_samples", k))
        while len(chip.buf) < k:
            self.deliver(chip, backend.now_sample + chunk_len + self.horizon)
            data = backend.read().samples
            if data.shape[1] != len(self.columns):
                self.errors.append("the culture serves no voltage traces (events mode)")
                return False
            chip.buf = np.concatenate([chip.buf, data.astype(np.float32) * np.float32(backend.uV_per_bit)])
        return True

    def _publish(self, parts: list[bytes]) -> bool:
        f = self.faults
        if f.skip_frames_next > 0:
            f.skip_frames_next -= 1
            return True
        if f.garbage_next is not None:
            parts, f.garbage_next = f.garbage_next, None
        while not self._stop.is_set():
            try:  # realtime: PUB never blocks, a slow subscriber loses the message; accelerated: NODROP blocks
                self.pub.send_multipart(parts, flags=zmq.NOBLOCK if self.realtime else 0)
                return True
            except zmq.Again:
                if self.realtime:
                    return True
            except zmq.ZMQError:
                return False
        return False


def default_electrodes(n: int, pitch: int = 12, origin: tuple[int, int] = (20, 20)) -> list[int]:
    """MEA electrode numbers of an 8-wide grid of `n` electrodes, `pitch` electrodes (12 x 17.5 = 210 µm)
    apart, from (column, row) `origin`: where the simulated culture sits on the MaxOne array."""
    return [(origin[1] + (i // 8) * pitch) * mw.MEA_COLUMNS + origin[0] + (i % 8) * pitch for i in range(n)]
