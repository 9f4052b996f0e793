"""A Sanworks Pulse Pal 2 on a pseudo-terminal: the firmware's byte protocol, its output trains, and
its failure modes, with every output pulse handed to a simulated culture at the sample it would reach
the electrodes wired to that output.

Modelled on firmware 2.0.1 (sanworks/PulsePal `Firmware/PulsePal_2_0_1/PulsePal_2_0_1.ino`):
- parser: one `0xD5` then an op code; anything else between messages is discarded; each further byte
  must arrive within 500 ms, otherwise the message is completed with zeros, executed, and the device
  shows COMM. FAILURE and ignores the host until the joystick is clicked (`click_joystick`), which
  reloads the default parameters;
- acks (`0x01`) only for ops 73, 74, 75, 76, 79, 82; handshake reply `K` + uint32 firmware version;
- timing: a soft trigger takes effect on the tick after it is parsed, and a DAC value computed in a
  tick is written at the start of the next, so the first phase starts 2 ticks (100 µs) + the train
  delay after the trigger was parsed; a trigger for a channel that is still playing is remembered and
  starts the channel again the tick after its train ends (the firmware only clears the flag when idle);
- the train is killed at `pulseTrainDuration` after onset even mid-pulse; a pulse is not started if
  its first phase cannot finish inside the current burst;
- outputs: a phase's 16-bit voltage code reaches the electrodes through the 12-bit DAC (its top 12
  bits, `_pulsepal_wire.code_to_volts`), so the culture gets the DAC level, e.g. -1.00098 V for -1 V.
Time is the culture's sample clock (`clock()`), not the wall clock: in accelerated runs the device is
"at" the sample the loop has read up to.
"""

from __future__ import annotations

import os
import select
import struct
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Callable

from rigctl.drivers import _pulsepal_wire as w
from rigctl.types import BiphasicPulse, StimCommand

FOREVER = 1 << 62


def default_channel_params() -> dict[str, int]:
    """Firmware defaults (also restored after a comm failure), in wire units (ticks, voltage codes)."""
    return {"is_biphasic": 0, "phase1_v": w.volts_to_code(5.0), "phase2_v": w.volts_to_code(-5.0),
            "resting_v": w.volts_to_code(0.0), "phase1_dur": 2, "interphase": 2, "phase2_dur": 2,
            "interpulse": 20, "burst_dur": 0, "interburst": 0, "train_dur": 20000, "train_delay": 0,
            "link1": 1, "link2": 0, "custom_id": 0, "custom_target": 0, "custom_loop": 0}


PARAM_NAME = {w.P_IS_BIPHASIC: "is_biphasic", w.P_PHASE1_V: "phase1_v", w.P_PHASE2_V: "phase2_v",
              w.P_PHASE1_DUR: "phase1_dur", w.P_INTERPHASE: "interphase", w.P_PHASE2_DUR: "phase2_dur",
              w.P_INTERPULSE: "interpulse", w.P_BURST_DUR: "burst_dur", w.P_INTERBURST: "interburst",
              w.P_TRAIN_DUR: "train_dur", w.P_TRAIN_DELAY: "train_delay", w.P_LINK_TRIG1: "link1",
              w.P_LINK_TRIG2: "link2", w.P_CUSTOM_ID: "custom_id", w.P_CUSTOM_TARGET: "custom_target",
              w.P_CUSTOM_LOOP: "custom_loop", w.P_RESTING_V: "resting_v"}


class _CommTimeout(Exception):
    pass


class _Unplugged(Exception):
    pass


@dataclass
class _Train:
    """One output's running train, in device ticks relative to the emulator's tick origin."""

    channel: int
    params: dict[str, int]
    onset_tick: int
    end_tick: int  # the train is killed here
    next_pulse_tick: int
    custom: tuple[tuple[int, int], ...] = ()  # (onset tick offset, voltage code) for custom trains
    custom_index: int = 0
    pending_retrigger: bool = False
    free_tick: int = 0  # the output is idle again from this tick (the train was killed)


@dataclass
class FaultSwitches:
    """Fault injection, applied to what the device writes back to the host."""

    hung: bool = False  # the firmware stopped: bytes are swallowed, nothing is answered
    reply_delay_s: float = 0.0  # every reply is held back this long
    garbage_before_next_reply: bytes = b""
    truncate_next_reply_to: int | None = None  # write only this many bytes of the next reply
    extra: dict = field(default_factory=dict)


class PulsePalEmulator:
    """Pulse Pal 2 on a pty. `port` is a stable path (a symlink re-pointed on `replug`).

    `channel_electrodes[k]` are the MEA electrodes wired to output k (1..4); `bus` receives the pulses
    (`schedule(StimCommand)`) and may call `advance(until_sample)` before it reads; `clock()` is the
    sample the device is at (default: `bus.now_sample`).
    """

    def __init__(self, bus, channel_electrodes: dict[int, tuple[int, ...]], *, sample_rate_hz: float,
                 firmware_version: int = 21, clock: Callable[[], int] | None = None, mV_per_volt: float = 1000.0):
        if firmware_version < w.MIN_V2_FIRMWARE:
            raise ValueError("only Pulse Pal 2 firmware (>= 20) is emulated")
        self.bus = bus
        self.channel_electrodes = {int(k): tuple(int(e) for e in v) for k, v in channel_electrodes.items()}
        self.fs = float(sample_rate_hz)
        self.firmware_version = firmware_version
        self.mV_per_volt = float(mV_per_volt)  # electrode mV per output volt (1000: wired directly)
        self.clock = clock or (lambda: int(bus.now_sample))
        self.faults = FaultSwitches()
        self.lock = threading.RLock()
        self._dir = tempfile.mkdtemp(prefix="rigctl-pulsepal-")
        self.port = os.path.join(self._dir, "ttyPulsePal")
        self._master = self._slave = -1
        self._buf = bytearray()
        self._timed_out = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._power_on()
        self.delivered: list[StimCommand] = []  # every pulse handed to the culture
        self.ops: list[int] = []  # op codes parsed, in order (tests and `rigctl emulate` logs)
        self.errors: list[str] = []
        self.on_pulse: Callable[[StimCommand], None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------
    def _power_on(self) -> None:
        self.params = {ch: default_channel_params() for ch in range(1, w.N_OUTPUTS + 1)}
        self.trigger_modes = [0, 0]
        self.continuous = {ch: False for ch in self.params}
        self.custom_trains: dict[int, tuple[tuple[int, int], ...]] = {1: (), 2: ()}
        self.trains: dict[int, _Train] = {}
        self.connected = False
        self.comm_failure = False
        self.client_id = ""
        self.fixed_voltage = {ch: w.volts_to_code(0.0) for ch in self.params}

    def start(self) -> "PulsePalEmulator":
        self._open_pty()
        if hasattr(self.bus, "add_hook"):
            self.bus.add_hook(self.advance)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="pulsepal-emulator", daemon=True)
        self._thread.start()
        return self

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: bytes pass unchanged
        tmp = self.port + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(self._slave), tmp)
        os.replace(tmp, self.port)
        self._buf.clear()

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_pty()
        if hasattr(self.bus, "remove_hook"):
            self.bus.remove_hook(self.advance)
        for path in (self.port,):
            if os.path.lexists(path):
                os.unlink(path)
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    # ---- fault switches ------------------------------------------------------------------------------
    def unplug(self) -> None:
        """The USB cable is pulled: the host's port reports a disconnect; the device loses power."""
        with self.lock:
            self._kill_all()
            old = self._master
            self._master = -1
            self._close_fds(old, self._slave)
            self._slave = -1

    @staticmethod
    def _close_fds(*fds: int) -> None:
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def replug(self) -> None:
        """Plug the device back in: power-on defaults, the same `port` path."""
        with self.lock:
            self._power_on()
            self._open_pty()

    def click_joystick(self) -> None:
        """The operator clicks: aborts trains; after a comm failure, defaults are reloaded."""
        with self.lock:
            self._kill_all()
            if self.comm_failure:
                keep = self.connected
                self._power_on()
                self.connected = keep

    # ---- wire ------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:  # on close, bytes already written by the host are still processed
            try:
                b = self._read_byte(0.05 if not self._stop.is_set() else 0.0)
            except _Unplugged:
                if self._stop.is_set():
                    break
                time.sleep(0.01)  # cable out: nothing to read until replug
                continue
            if b is None:
                if self._stop.is_set():
                    break
                continue
            with self.lock:
                if self.faults.hung or self.comm_failure:
                    continue  # firmware stuck: bytes are swallowed
            if b != w.OP_MENU:
                continue  # stray byte between messages: ignored, as in the firmware
            self._timed_out = False
            try:
                self._dispatch()
            except _Unplugged:
                continue
            if self._timed_out:
                with self.lock:
                    self._kill_all()
                    self.comm_failure = True
                    self.errors.append("COMM. FAILURE: message byte later than 500 ms")

    def _read_byte(self, timeout_s: float) -> int | None:
        if self._buf:
            return self._buf.pop(0)
        fd = self._master
        if fd < 0:
            raise _Unplugged()
        try:
            ready, _, _ = select.select([fd], [], [], timeout_s)
        except (OSError, ValueError):
            raise _Unplugged()
        if not ready:
            return None
        try:
            data = os.read(fd, 4096)
        except OSError:
            # EIO: no client has the port open right now; wait for one
            time.sleep(0.005)
            return None
        if not data:
            return None
        self._buf.extend(data)
        return self._buf.pop(0)

    def _need(self, n: int) -> bytes:
        """Read n message bytes with the firmware's per-byte timeout; after a timeout, zeros."""
        out = bytearray()
        for _ in range(n):
            if self._timed_out:
                out.append(0)
                continue
            deadline = time.monotonic() + w.BYTE_TIMEOUT_S
            b = None
            while b is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                b = self._read_byte(left)
            if b is None:
                self._timed_out = True
                out.append(0)
            else:
                out.append(b)
        return bytes(out)

    def _reply(self, data: bytes) -> None:
        f = self.faults
        if f.hung:
            return
        if f.reply_delay_s:
            time.sleep(f.reply_delay_s)  # fault injection: a device that answers late
        if f.garbage_before_next_reply:
            data = f.garbage_before_next_reply + data
            f.garbage_before_next_reply = b""
        if f.truncate_next_reply_to is not None:
            data = data[:f.truncate_next_reply_to]
            f.truncate_next_reply_to = None
        if self._master >= 0 and data:
            try:
                os.write(self._master, data)
            except OSError:
                pass

    def _dispatch(self) -> None:
        op = self._need(1)[0]
        self.ops.append(op)
        if op == w.OP_HANDSHAKE:
            self.connected = True
            self._reply(bytes((w.HANDSHAKE_REPLY,)) + struct.pack("<I", self.firmware_version))
        elif op == w.OP_PROGRAM_ALL:
            self._program_all(self._need(w.PROGRAM_ALL_PAYLOAD))
            self._reply(bytes((w.ACK,)))
        elif op == w.OP_PROGRAM_ONE:
            param, channel = self._need(2)
            fmt = w.PARAM_FORMAT.get(param)
            value = struct.unpack(fmt, self._need(struct.calcsize(fmt)))[0] if fmt else 0
            self._program_one(param, channel, value)
            self._reply(bytes((w.ACK,)))
        elif op in (w.OP_CUSTOM_TRAIN_1, w.OP_CUSTOM_TRAIN_2):
            n = struct.unpack("<I", self._need(4))[0]
            n_read = min(n, w.CUSTOM_MAX_PULSES)
            times = struct.unpack(f"<{n_read}I", self._need(4 * n_read))
            volts = struct.unpack(f"<{n_read}H", self._need(2 * n_read))
            with self.lock:
                self.custom_trains[op - w.OP_CUSTOM_TRAIN_1 + 1] = tuple(zip(times, volts))
            self._reply(bytes((w.ACK,)))
        elif op == w.OP_SOFT_TRIGGER:
            mask = self._need(1)[0]
            self.soft_trigger(mask)
        elif op == w.OP_DISPLAY:
            n = self._need(1)[0]
            self.display = self._need(n).replace(b"\xfe", b"\n").decode("latin-1")
        elif op == w.OP_SET_VOLTAGE:
            channel = self._need(1)[0]
            code = struct.unpack("<H", self._need(2))[0]
            with self.lock:
                if 1 <= channel <= w.N_OUTPUTS:
                    self.fixed_voltage[channel] = code
            self._reply(bytes((w.ACK,)))
        elif op == w.OP_ABORT:
            with self.lock:
                self._kill_all()
        elif op == w.OP_DISCONNECT:
            with self.lock:
                self._kill_all()
                self.connected = False
        elif op == w.OP_CONTINUOUS_LOOP:
            channel, state = self._need(2)
            with self.lock:
                if 1 <= channel <= w.N_OUTPUTS:
                    self.continuous[channel] = bool(state)
                    if state:
                        self._start_train(channel, self._now_tick() + 1)
                    else:
                        self.trains.pop(channel, None)
            self._reply(bytes((w.ACK,)))
        elif op == w.OP_CLIENT_ID:
            self.client_id = self._need(6).decode("latin-1")
        elif op == 85:  # v2: current settings image
            self._reply(bytes(178))
        # any other op code: ignored without a reply, as in the firmware

    def _program_all(self, payload: bytes) -> None:
        times = struct.unpack_from("<32I", payload, 0)
        volts = struct.unpack_from("<12H", payload, 128)
        bytes8 = payload[152:168]
        links = payload[168:176]
        modes = payload[176:178]
        with self.lock:
            for i, ch in enumerate(range(1, w.N_OUTPUTS + 1)):
                p = self.params[ch]
                for j, name in enumerate(w.TIME_PARAMS):
                    p[name] = times[i * 8 + j]
                for j, name in enumerate(w.VOLT_PARAMS):
                    p[name] = volts[i * 3 + j]
                for j, name in enumerate(w.BYTE_PARAMS):
                    p[name] = bytes8[i * 4 + j]
                p["link1"], p["link2"] = links[i], links[4 + i]
            self.trigger_modes = [modes[0], modes[1]]

    def _program_one(self, param: int, channel: int, value: int) -> None:
        with self.lock:
            if param == w.P_TRIGGER_MODE:
                if 1 <= channel <= w.N_TRIGGERS:
                    self.trigger_modes[channel - 1] = value
                return
            name = PARAM_NAME.get(param)
            if name is not None and 1 <= channel <= w.N_OUTPUTS:
                self.params[channel][name] = value

    # ---- outputs ----------------------------------------------------------------------------------------
    def _now_tick(self) -> int:
        return int(self.clock() * w.CYCLE_HZ // self.fs)

    def _tick_to_sample(self, tick: int) -> int:
        return int(round(tick * self.fs / w.CYCLE_HZ))

    def _kill_all(self) -> None:
        self.trains.clear()

    def soft_trigger(self, mask: int) -> None:
        """Op 77: outputs in `mask` start on the next tick (or after their running train ends)."""
        now = self.clock()
        self.advance(now)  # everything before the trigger has reached the culture
        with self.lock:
            start = self._now_tick() + 1
            for bit in range(w.N_OUTPUTS):
                if not mask & (1 << bit):
                    continue
                ch = bit + 1
                running = self.trains.get(ch)
                if running is not None and running.free_tick > start:
                    running.pending_retrigger = True
                else:
                    self._start_train(ch, start)
        horizon = getattr(self.bus, "commit_horizon", None)
        self.advance(horizon() if horizon is not None else now + int(0.05 * self.fs))

    def _start_train(self, ch: int, trigger_tick: int) -> None:
        p = dict(self.params[ch])
        onset = trigger_tick + p["train_delay"]
        end = FOREVER if self.continuous[ch] else onset + p["train_dur"]
        custom: tuple[tuple[int, int], ...] = ()
        if p["custom_id"] in (1, 2):
            if p["custom_target"] != 0:
                self.errors.append(f"output {ch}: custom burst trains are not emulated; nothing delivered")
                return
            custom = self.custom_trains[p["custom_id"]]
            if not custom:
                return
            length = p["phase1_dur"] + ((p["interphase"] + p["phase2_dur"]) if p["is_biphasic"] else 0)
            if not p["custom_loop"]:
                end = min(end, onset + custom[-1][0] + length)
        self.trains[ch] = _Train(ch, p, onset, end, onset + (custom[0][0] if custom else 0), custom,
                                 free_tick=end)

    def advance(self, until_sample: int) -> None:
        """Hand the culture every pulse whose first phase reaches the DAC before `until_sample`."""
        out: dict[tuple[int, BiphasicPulse], list[int]] = {}
        with self.lock:
            now_tick = self._now_tick()
            for ch in sorted(self.trains):
                train = self.trains[ch]
                while True:
                    pulse = self._next_pulse(train)
                    if pulse is None:
                        if train.pending_retrigger:  # the remembered trigger starts the output again
                            train.pending_retrigger = False
                            self._start_train(ch, train.free_tick + 1)
                            if self.trains.get(ch) is not train and ch in self.trains:
                                train = self.trains[ch]
                                continue
                        elif train.free_tick <= now_tick:
                            del self.trains[ch]
                        break
                    tick, shape = pulse
                    sample = self._tick_to_sample(tick + 1)  # written to the DAC at the next tick
                    if sample >= until_sample:
                        break
                    self._consume_pulse(train)
                    out.setdefault((sample, shape), []).extend(self.channel_electrodes.get(ch, ()))
            commands = [StimCommand(sample, tuple(sorted(set(els))), shape)
                        for (sample, shape), els in sorted(out.items(), key=lambda kv: kv[0][0]) if els]
            for cmd in commands:
                self.delivered.append(cmd)
                try:
                    self.bus.schedule(cmd)
                except Exception as exc:  # the culture refused (e.g. a pulse already in its past)
                    self.errors.append(f"culture refused pulse at sample {cmd.sample}: {exc}")
                if self.on_pulse is not None:
                    self.on_pulse(cmd)

    def _next_pulse(self, t: _Train) -> tuple[int, BiphasicPulse] | None:
        """The next pulse of the train as (onset tick, shape), cut at the train end; None when done."""
        p = t.params
        start = t.next_pulse_tick
        if start >= t.end_tick:
            return None
        if t.custom:
            if t.custom_index >= len(t.custom):
                return None
            start = t.onset_tick + t.custom[t.custom_index][0]
            if start >= t.end_tick:
                return None
            code1 = t.custom[t.custom_index][1]
            code2 = 65536 - code1 if code1 != 32768 else 32768  # second phase mirrored around 0 V
            p = dict(p, phase1_v=code1, phase2_v=min(65535, code2))
        else:
            burst, gap = p["burst_dur"], p["interburst"]
            if burst and gap:
                period = burst + gap
                rel = (start - t.onset_tick) % period
                if rel + p["phase1_dur"] >= burst:  # cannot finish phase 1 inside this burst: next burst
                    start = start - rel + period
                    t.next_pulse_tick = start
                    if start >= t.end_tick:
                        return None
        return start, self._shape(p, start, t.end_tick)

    def _consume_pulse(self, t: _Train) -> None:
        p = t.params
        if t.custom:
            t.custom_index += 1
            t.next_pulse_tick = (t.onset_tick + t.custom[t.custom_index][0]) if t.custom_index < len(t.custom) else FOREVER
            return
        length = p["phase1_dur"] + ((p["interphase"] + p["phase2_dur"]) if p["is_biphasic"] else 0)
        t.next_pulse_tick += length + p["interpulse"]

    def _shape(self, p: dict[str, int], start: int, end: int) -> BiphasicPulse:
        """Phase voltages relative to rest, phase lengths cut where the train is killed.

        Voltages are DAC levels, unrounded: a level is -10 + 20 k / 4096 V, so (level - rest) x 1000 is
        exact in floating point and the culture gets exactly what `PulsePal.output_pulse` predicts
        (rounding to 1 nV would give -1000.976562 mV for the -1000.9765625 mV level).
        """
        rest = w.code_to_volts(p["resting_v"])
        left = end - start
        ph1 = min(p["phase1_dur"], left)
        left -= ph1
        if p["is_biphasic"]:
            ipi = min(p["interphase"], left)
            left -= ipi
            ph2 = min(p["phase2_dur"], left)
            v2 = (w.code_to_volts(p["phase2_v"]) - rest) * self.mV_per_volt
        else:
            ipi, ph2, v2 = 0, 0, 0.0
        v1 = (w.code_to_volts(p["phase1_v"]) - rest) * self.mV_per_volt
        return BiphasicPulse(v1, ph1 * w.CYCLE_US, v2, ph2 * w.CYCLE_US,
                             ipi * w.CYCLE_US if ph2 else 0.0, unit="mV")

    def channel_busy(self, ch: int) -> bool:
        with self.lock:
            return ch in self.trains
