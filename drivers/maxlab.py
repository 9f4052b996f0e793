"""MaxWell MaxLab Live (MaxOne: 1 well; MaxTwo: 6 wells) as a rigctl Amplifier and Stimulator.

Data [community]: the server's raw ZMQ stream (PUB, port 7204): per message a uint64 frame number and
float32 samples of every routed channel (wells one after another, `channels_per_well` each). The driver
keeps the channels the rig maps to electrodes, checks frame numbers for continuity (a PUB socket drops
for slow readers: a gap is a DeviceError, not silently spliced data) and returns `chunk_ms` chunks.
Sample 0 is the first frame received after `start()`; `frame0` is its MaxLab frame number.

Stimulation: the operator's configuration (MaxLab Live's `online` array) routes the electrodes; the driver
connects each stimulated electrode to a stimulation unit (`mea_array_connect_electrode_to_stimulation`,
`..._query_stimulation_at_electrode`, `mea_array_download`), powers the command's units up (voltage mode,
one of DAC0-2), and sends a sequence `system_delay_samples <lead>` + the pulse as DAC steps (code
512 - amplitude/LSB: voltage mode inverts), all on MaxLab's 20 kHz sample grid. The lead is the commanded
sample minus the amplifier clock when the sequence is sent (`trigger_latency_ms` subtracts the stream's
latency on a real rig). Units go down again once the pulse is over. The chip has 32 units and one DAC drives
every unit it sources: a command needing more units than are free is refused before anything is sent,
and commands are armed at most three at a time (one DAC each) on disjoint units.

MaxTwo: with `well`, the driver drives one well of the plate: it reads that well's columns and sends
`system_set_activated_wells <well>` (maxlab.util.activate) before its commands whenever another well was
activated last by a driver of this process, so the units, array and sequences it commands are that well's
[assumption: per-well addressing of a real MaxTwo is not public; the emulator implements this reading].

Every command is one TCP connection with one deadline (`timeout_s`) for connect, request and the whole
reply; `Error`, a malformed reply, a closed connection or silence is a DeviceError. Safe state (every
fault while stimulating, `abort`, `close`): queued commands dropped, every unit powered down
(`mea_set_stimulation_unit -1 0 ...`, which also neutralises a sequence already on the hub: its DAC steps
reach no electrode) and the DACs set to 512. It never raises; `safe_state_verified` says whether MaxLab
acknowledged it. Wire facts: ../shared/spec/devices.md section 4, drivers/_maxlab_wire.py.
"""

from __future__ import annotations

import math
import socket
from collections import deque
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from rigctl.drivers import _maxlab_wire as mw
from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.errors import DeviceError
from rigctl.layout import ElectrodeLayout
from rigctl.types import BiphasicPulse, Chunk, StimCommand

START_TIMEOUT_S = 10.0  # the first frame after subscribing (ZMQ join, server start-up)
MIN_LEAD_SAMPLES = 100  # maxlab.Sequence's default initial delay: the hub buffers the sequence first
ARRAY_TOKEN = "online"  # the array MaxLab Live shows (the operator's routed configuration)
N_DACS = 3
_ACTIVATED: dict[tuple[str, int], int] = {}  # server -> the well this process's drivers activated last


@dataclass
class _Armed:
    command: StimCommand
    dac: int
    units: tuple[int, ...]
    end_sample: int  # one past the pulse's last sample


class MaxLab(Amplifier, Stimulator):
    """One MaxLab server. Electrode i of the rig = stream column `channels[i]` (well * channels_per_well +
    channel) and, for stimulation, MEA electrode `electrodes[i]` (0..26399)."""

    def __init__(self, host: str = "127.0.0.1", command_port: int = mw.COMMAND_PORT, *, channels: list[int],
                 electrodes: list[int] | None = None, wells: int = 1, channels_per_well: int = mw.CHANNELS_PER_WELL,
                 data_port: int = mw.RAW_PORT, data_url: str | None = None, uV_per_unit: float = 1.0,
                 uV_per_bit: float = 0.195, chunk_ms: float = 10.0, timeout_s: float = 1.0,
                 arm_ahead_ms: float = 200.0, trigger_latency_ms: float = 0.0, layout: ElectrodeLayout | None = None,
                 well: int | None = None, connect: bool = True):
        if wells not in mw.WELLS:
            raise DeviceError(f"MaxLab wells={wells}; allowed: {mw.WELLS}")
        if well is not None and not 0 <= well < wells:
            raise DeviceError(f"MaxLab well={well}; allowed: 0..{wells - 1} ({wells} well(s))")
        self.well = well
        self.host, self.command_port, self.data_port, self.data_url = host, command_port, data_port, data_url
        self.wells, self.channels_per_well = wells, channels_per_well
        self.stream_channels = wells * channels_per_well
        self.channels = [int(c) for c in channels]
        bad = [c for c in self.channels if not 0 <= c < self.stream_channels]
        if bad or not self.channels:
            raise DeviceError(f"MaxLab channels {bad[:8] or '[]'}; allowed: a non-empty list of stream columns "
                              f"0..{self.stream_channels - 1} ({wells} well(s) x {channels_per_well})")
        if len(set(self.channels)) != len(self.channels):
            raise DeviceError("MaxLab: a channel is mapped to two electrodes")
        self.electrodes = None if electrodes is None else [int(e) for e in electrodes]
        if self.electrodes is not None:
            if len(self.electrodes) != len(self.channels):
                raise DeviceError(f"MaxLab: {len(self.electrodes)} MEA electrodes for {len(self.channels)} channels; "
                                  "allowed: one MEA electrode per channel")
            wrong = [e for e in self.electrodes if not 0 <= e < mw.n_electrodes()]
            if wrong:
                raise DeviceError(f"MaxLab MEA electrodes {wrong[:8]}; allowed: 0..{mw.n_electrodes() - 1}")
        self._layout = layout or self._default_layout()
        self.uV_per_unit = float(uV_per_unit)
        self._uV_per_bit = float(uV_per_bit)
        self.fs = mw.SAMPLE_RATE_HZ
        self.chunk_samples = max(1, int(round(chunk_ms * 1e-3 * self.fs)))
        self.timeout_s = timeout_s
        self.arm_ahead = int(round(arm_ahead_ms * 1e-3 * self.fs))
        self.latency = int(round(trigger_latency_ms * 1e-3 * self.fs))
        self.lsb_mV = 0.0
        self.ctx = zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self._parts: list[np.ndarray] = []  # kept columns of frames received, not yet returned
        self._n_buffered = 0
        self._next_frame: int | None = None
        self.frame0: int | None = None
        self.clock = 0  # one past the last sample returned by read()
        self.clipped_samples = 0
        self._lock = threading.RLock()
        self._queue: list[StimCommand] = []
        self._armed: list[_Armed] = []
        self._unit_of: dict[int, int] = {}  # rig electrode -> stimulation unit it is connected to
        self._powered: set[int] = set()  # units sent a power-up and not yet confirmed down
        self.commands_sent: deque[str] = deque(maxlen=1000)  # the latest commands (tests, diagnostics)
        self.triggers_sent = 0
        self.faulted: str | None = None
        self.safe_state_verified = True
        self.safe_state_problem = ""
        self._generation = 0  # bumped by every safe state: an arming interrupted by one stops sending
        if connect:
            self.connect()

    def _default_layout(self) -> ElectrodeLayout:
        n = len(self.channels)
        if self.electrodes is not None:
            pos = np.array([mw.electrode_position_um(e) for e in self.electrodes], dtype=np.float64)
            return ElectrodeLayout(pos, tuple(f"E{e}" for e in self.electrodes))
        if n % 8 == 0:
            return ElectrodeLayout.grid(n // 8, 8, 200.0)
        return ElectrodeLayout(np.zeros((n, 2)), tuple(f"CH{c}" for c in self.channels))

    def _fault(self, what: str) -> DeviceError:
        self.faulted = what
        return DeviceError(f"MaxLab at {self.host}:{self.command_port}: {what}")

    # ---- command API ----------------------------------------------------------------------------------------
    def command(self, text: str) -> str:
        """One command on its own connection -> the reply text; DeviceError for `Error`, garbage, silence."""
        reply = self._exchange(text)
        if reply == mw.ERROR_REPLY:
            raise self._fault(f"MaxLab refused {text.splitlines()[-1][:120]!r} (reply 'Error')")
        return reply

    def _exchange(self, text: str) -> str:
        key = (self.host, self.command_port)
        if self.well is not None and _ACTIVATED.get(key) != self.well:
            _ACTIVATED.pop(key, None)  # unknown until acknowledged
            activate = f"system_set_activated_wells {self.well}"
            reply = self._round_trip(activate)
            if reply != "Ok" and reply.strip() == mw.ERROR_REPLY:
                raise self._fault(f"MaxLab refused {activate!r} (reply 'Error'): no well {self.well}?")
            _ACTIVATED[key] = self.well
        return self._round_trip(text)

    def _round_trip(self, text: str) -> str:
        self.commands_sent.append(text)
        deadline = time.monotonic() + self.timeout_s
        first = text.splitlines()[0][:60] if text else ""
        try:
            sock = socket.create_connection((self.host, self.command_port), timeout=self.timeout_s)
        except OSError as exc:
            raise self._fault(f"cannot connect to the command port ({exc}); is MaxLab Live (mxwserver) "
                              "running?") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(mw.request(text))
            buf = bytearray()
            while True:
                reply = mw.split_reply(buf)
                if reply is not None:
                    return reply
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise self._fault(f"{first!r}: the server closed the connection before the reply's end "
                                      "marker (disconnected?)")
                buf += data
                if len(buf) > mw.MAX_REPLY_BYTES:
                    raise self._fault(f"{first!r}: more than {mw.MAX_REPLY_BYTES} bytes without the end marker "
                                      "(garbage on the command port)")
        except socket.timeout:
            raise self._fault(f"{first!r}: no complete reply within {self.timeout_s} s (MaxLab not answering)") \
                from None
        except OSError as exc:
            raise self._fault(f"{first!r}: command connection failed ({exc})") from exc
        finally:
            sock.close()

    def _parsed(self, parse, *args):
        try:
            return parse(*args)
        except mw.WireError as exc:
            raise self._fault(f"impossible reply: {exc}") from exc

    def connect(self) -> None:
        """Read the DAC step, open the routed array, and put every stimulation unit down."""
        with self._lock:
            _ACTIVATED.pop((self.host, self.command_port), None)  # a (re)started server: activate again
            self.lsb_mV = self._parsed(mw.parse_lsb_mV, self.command("system_query_dac_lsb_mv"))
            self.command(f"mea_array_new {ARRAY_TOKEN}")
            self._unit_of = {}
            self._powered = set(range(mw.N_STIM_UNITS))  # unknown until the power-down is acknowledged
            self.safe_state()
            if not self.safe_state_verified:
                raise self._fault(f"stimulation units not confirmed down: {self.safe_state_problem}")
            self.faulted = None

    def reconnect(self) -> None:
        with self._lock:
            self.stop()
            self.connect()

    # ---- Amplifier -------------------------------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self.fs

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def layout(self) -> ElectrodeLayout:
        return self._layout

    @property
    def uV_per_bit(self) -> float:
        return self._uV_per_bit

    @property
    def frame_clock(self) -> int | None:
        """The MaxLab frame number one past the last sample read (None before the first frame and once stopped:
        an emulator pacing itself to its readers must not wait for one that left)."""
        return None if self.frame0 is None or self._sub is None else self.frame0 + self.clock

    def start(self) -> None:
        if self._sub is not None:
            return
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 4)  # bounded latency: a few messages queued
        sub.setsockopt(zmq.RCVBUF, 256 * 1024)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        url = self.data_url or f"tcp://{self.host}:{self.data_port}"
        try:
            sub.connect(url)
        except zmq.ZMQError as exc:
            sub.close(0)
            raise self._fault(f"cannot subscribe to {url} ({exc})") from exc
        self._sub = sub
        self._parts, self._n_buffered = [], 0
        self._next_frame = None
        self.frame0 = None
        self.clock = 0

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None

    def _receive(self, deadline: float, wait_s: float) -> None:
        """Take one message (waiting at most until `deadline`) into the buffer of kept columns."""
        try:
            try:
                parts = self._sub.recv_multipart(zmq.NOBLOCK)  # at 20 kHz a message is usually waiting
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sub.poll(max(1, math.ceil(left * 1000)), zmq.POLLIN):
                    raise self._fault(f"no data for {wait_s} s on the raw stream (MaxLab stopped or not "
                                      "streaming)") from None
                parts = self._sub.recv_multipart()
        except zmq.ZMQError as exc:
            raise self._fault(f"data socket failed ({exc})") from exc
        try:
            first, frames = mw.parse_frames(parts, self.stream_channels)
        except mw.WireError as exc:
            raise self._fault(f"malformed data message: {exc}") from exc
        if self._next_frame is not None and first != self._next_frame:
            lost = first - self._next_frame
            raise self._fault(f"frame number jumped from {self._next_frame} to {first}"
                              + (f": {lost} frame(s) lost (a slow reader loses frames)" if lost > 0 else ""))
        if self.frame0 is None:
            self.frame0 = first
        self._next_frame = first + len(frames)
        self._parts.append(frames[:, self.channels])
        self._n_buffered += len(frames)

    def read(self) -> Chunk:
        if self._sub is None:
            raise self._fault("read() before start()")
        wait_s = self.timeout_s if self.frame0 is not None else max(self.timeout_s, START_TIMEOUT_S)
        deadline = time.monotonic() + wait_s
        while self._n_buffered < self.chunk_samples:
            self._receive(deadline, wait_s)
        kept = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        out, rest = kept[:self.chunk_samples], kept[self.chunk_samples:]
        self._parts = [rest] if len(rest) else []
        self._n_buffered = len(rest)
        if not np.all(np.isfinite(out)):
            row, col = np.argwhere(~np.isfinite(out))[0]
            raise self._fault(f"channel {self.channels[col]} frame {self.frame0 + self.clock + row} is "
                              f"{out[row, col]} (not a finite value)")
        scale = self.uV_per_unit / self._uV_per_bit
        raw = np.rint(out.astype(np.float64) * scale)
        clipped = (raw > 32767) | (raw < -32768)
        self.clipped_samples += int(clipped.sum())
        first = self.clock
        self.clock += len(out)
        return Chunk(first, np.clip(raw, -32768, 32767).astype(np.int16), self._uV_per_bit, self.fs)

    # ---- Stimulator ------------------------------------------------------------------------------------------
    def _steps(self, amplitude_mV: float) -> int:
        return int(round(amplitude_mV / self.lsb_mV))

    def _samples(self, us: float) -> int:
        return int(round(us * 1e-6 * self.fs))

    def check_deliverable(self, command: StimCommand) -> None:
        p = command.pulse
        if p.unit != "mV":
            raise DeviceError(f"MaxLab stimulates in voltage mode: pulse unit {p.unit!r}; allowed: 'mV'")
        for name, us in (("phase1_us", p.phase1_us), ("phase2_us", p.phase2_us), ("interphase_us", p.interphase_us)):
            n = us * 1e-6 * self.fs
            if abs(n - round(n)) > 1e-9 or (name != "interphase_us" and round(n) < 1):
                raise DeviceError(f"MaxLab {name}={us:g}; allowed: whole samples of 50 µs (system_delay_samples)"
                                  + ("" if name == "interphase_us" else ", at least one"))
        if not self.lsb_mV:
            raise DeviceError("MaxLab: not connected (the DAC step is read on connect)")
        top = mw.DAC_ZERO - 1
        for name, a in (("phase1_amplitude", p.phase1_amplitude), ("phase2_amplitude", p.phase2_amplitude)):
            if abs(self._steps(a)) > top:
                raise DeviceError(f"MaxLab {name}={a:g} mV; allowed: -{top * self.lsb_mV:g} to {top * self.lsb_mV:g} "
                                  f"mV ({top} DAC steps of {self.lsb_mV:g} mV)")
        s1, s2 = self._steps(p.phase1_amplitude), self._steps(p.phase2_amplitude)
        if s1 * s2 >= 0:
            raise DeviceError(f"MaxLab phases {p.phase1_amplitude:g}/{p.phase2_amplitude:g} mV; allowed: two phases of "
                              f"opposite sign, each at least one DAC step ({self.lsb_mV:g} mV)")
        if len(command.electrodes) > mw.N_STIM_UNITS:
            raise DeviceError(f"MaxLab: {len(command.electrodes)} electrodes in one command; allowed: at most "
                              f"{mw.N_STIM_UNITS} (stimulation units on the chip)")
        if self.electrodes is None:
            raise DeviceError("MaxLab: no MEA electrode numbers given for the rig's electrodes (rig file: "
                              "amplifier.electrodes); cannot connect stimulation units")
        bad = [e for e in command.electrodes if not 0 <= e < len(self.electrodes)]
        if bad:
            raise DeviceError(f"MaxLab: electrode(s) {bad}; allowed: 0..{len(self.electrodes) - 1}")

    def delivered_pulse(self, pulse: BiphasicPulse) -> BiphasicPulse:
        """Amplitudes on the DAC grid: whole steps of the queried LSB."""
        if pulse.unit != "mV" or not self.lsb_mV:
            return pulse
        return BiphasicPulse(self._steps(pulse.phase1_amplitude) * self.lsb_mV, pulse.phase1_us,
                             self._steps(pulse.phase2_amplitude) * self.lsb_mV, pulse.phase2_us,
                             pulse.interphase_us, "mV")

    def _end(self, command: StimCommand) -> int:
        return command.sample + self._samples(command.pulse.duration_us) + 1

    def schedule(self, command: StimCommand) -> None:
        self.check_deliverable(command)
        with self._lock:
            busy = {u for a in self._armed for u in a.units}
            free = mw.N_STIM_UNITS - len(busy)
            if len(command.electrodes) > free:
                raise DeviceError(f"MaxLab: {len(command.electrodes)} electrodes at sample {command.sample}; allowed: "
                                  f"at most {free} (free stimulation units; {len(busy)} busy with armed pulses)")
            for other in [a.command for a in self._armed] + self._queue:
                if command.sample < self._end(other) and other.sample < self._end(command) and \
                        set(other.electrodes) & set(command.electrodes):
                    raise DeviceError(f"MaxLab: the pulse at sample {command.sample} overlaps the one at sample "
                                      f"{other.sample} on the same electrode")
            self._queue.append(command)
            self._queue.sort(key=lambda c: c.sample)
            self._service(self.clock)

    def on_chunk(self, end_sample: int) -> None:
        with self._lock:
            self._service(end_sample)

    def _service(self, now: int) -> None:
        """Power down finished pulses' units, then arm every queued command that is due (faults: safe state)."""
        try:
            done = [a for a in self._armed if a.end_sample <= now]
            if done:
                self._armed = [a for a in self._armed if a.end_sample > now]
                self._power_down({u for a in done for u in a.units})
            while self.frame0 is not None and self._queue and self._queue[0].sample - now <= self.arm_ahead:
                # (before the first frame the stream's clock is unknown: nothing can be aimed)
                cmd = self._queue[0]
                if not self._arm(cmd, now):
                    break
                self._queue.pop(0)
        except DeviceError:
            self.safe_state()
            raise

    def _power_down(self, units: set[int]) -> None:
        if not self._armed:
            self.command(mw.power_down_all())
            self._powered.clear()
            return
        for u in sorted(units):
            self.command(mw.set_stimulation_unit(u, False, False))
            self._powered.discard(u)

    def _connect_units(self, electrodes: tuple[int, ...]) -> tuple[int, ...]:
        """Each electrode's stimulation unit, connecting (and downloading) those not connected yet."""
        new = [e for e in electrodes if e not in self._unit_of]
        if new:
            keep = set(electrodes) | {e for a in self._armed for e in a.command.electrodes}
            if len(self._unit_of) + len(new) > mw.N_STIM_UNITS:
                for e in [e for e in self._unit_of if e not in keep]:
                    self.command(mw.array_command(
                        ARRAY_TOKEN, f"mea_array_disconnect_electrode_from_stimulation {self.electrodes[e]}"))
                    del self._unit_of[e]
            for e in new:
                mea = self.electrodes[e]
                self.command(mw.array_command(ARRAY_TOKEN, f"mea_array_connect_electrode_to_stimulation {mea}"))
                unit = self._parsed(mw.parse_unit, self.command(
                    mw.array_command(ARRAY_TOKEN, f"mea_array_query_stimulation_at_electrode {mea}")), mea)
                if unit is None:
                    raise self._fault(f"MEA electrode {mea} (rig electrode {e}) got no stimulation unit; route a "
                                      "configuration in which it can reach one")
                if unit in self._unit_of.values():
                    raise self._fault(f"MEA electrode {mea} shares stimulation unit {unit} with another electrode")
                self._unit_of[e] = unit
            self.command(mw.array_command(ARRAY_TOKEN, "mea_array_download"))
        return tuple(self._unit_of[e] for e in electrodes)

    def _arm(self, cmd: StimCommand, now: int) -> bool:
        """Send `cmd` as a sequence; False if it must wait (no free DAC, or its units are armed already)."""
        busy_units = {u for a in self._armed for u in a.units}
        busy_els = {e for a in self._armed for e in a.command.electrodes}
        dacs = [d for d in range(N_DACS) if d not in {a.dac for a in self._armed}]
        if not dacs or busy_els & set(cmd.electrodes):
            return False
        lead = cmd.sample - now - self.latency
        if lead < MIN_LEAD_SAMPLES:
            raise self._fault(f"pulse at sample {cmd.sample} is {lead} samples ahead of the stream; allowed: at least "
                              f"{MIN_LEAD_SAMPLES} (arm earlier: arm_ahead_ms, or fewer overlapping pulses)")
        units = self._connect_units(cmd.electrodes)
        if busy_units & set(units):
            raise self._fault(f"stimulation unit(s) {sorted(busy_units & set(units))} already drive another pulse")
        dac = dacs[0]
        p = cmd.pulse
        generation = self._generation

        def send(text: str) -> str:  # a safe state from another thread meanwhile ends this arming
            if self._generation != generation:
                raise self._fault(f"the pulse at sample {cmd.sample} was aborted while it was being armed")
            return self.command(text)

        self._powered.update(units)  # before the bytes go out: a lost reply must not hide a power-up
        for u in units:
            send(mw.set_stimulation_unit(u, True, True, dac=dac))
        token = self._parsed(mw.parse_token, send("sequence_new"))
        steps = [mw.delay_samples(lead),
                 mw.set_dac(dac, mw.DAC_ZERO - self._steps(p.phase1_amplitude)),
                 mw.delay_samples(self._samples(p.phase1_us))]
        if self._samples(p.interphase_us):
            steps += [mw.set_dac(dac, mw.DAC_ZERO), mw.delay_samples(self._samples(p.interphase_us))]
        steps += [mw.set_dac(dac, mw.DAC_ZERO - self._steps(p.phase2_amplitude)),
                  mw.delay_samples(self._samples(p.phase2_us)), mw.set_dac(dac, mw.DAC_ZERO)]
        for s in steps:
            send(mw.sequence_append(token, s))
        send(f"sequence_send {token}")
        self.command(f"sequence_delete {token}")
        self._armed.append(_Armed(cmd, dac, units, self._end(cmd)))
        self.triggers_sent += 1
        return True

    def abort(self) -> None:
        with self._lock:
            self.safe_state()
            if not self.safe_state_verified:
                raise self._fault(f"stimulation not confirmed off: {self.safe_state_problem}")

    def safe_state(self) -> None:
        """Drop queued and armed pulses, power every unit down and the DACs to 512. Never raises."""
        self._generation += 1
        locked = self._lock.acquire(timeout=self.timeout_s)
        try:
            self._generation += 1
            self._queue = []
            self._armed = []
            problems = []
            for text in (mw.power_down_all(), mw.set_dac(3, mw.DAC_ZERO, mw.DAC_ZERO), mw.set_dac(2, mw.DAC_ZERO)):
                try:
                    if self._exchange(text) == mw.ERROR_REPLY:
                        problems.append(f"{text!r} answered 'Error'")
                    elif text == mw.power_down_all():
                        self._powered.clear()
                except DeviceError as exc:
                    problems.append(str(exc))
                    break  # unreachable or silent: the next command would only wait as long again
                except Exception as exc:  # never raise into a fault handler
                    problems.append(f"{type(exc).__name__}: {exc}")
            self.safe_state_verified = not problems
            self.safe_state_problem = "; ".join(problems)
        finally:
            if locked:
                self._lock.release()

    def close(self) -> None:
        self.safe_state()
        self.stop()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def powered_units(self) -> tuple[int, ...]:
        return tuple(sorted(self._powered))
