"""Sanworks Pulse Pal 2 (firmware 2.0.0 / 2.0.1) as a rigctl Stimulator, over its USB serial protocol.

Each of the four outputs drives a fixed set of electrodes (the rig file's map). A command is delivered
by programming the outputs it needs (one biphasic pulse: the train lasts exactly one pulse) and
soft-triggering them with a train delay that lands the pulse on the commanded amplifier sample. The
device has no sample clock, so the driver arms a command from `on_chunk` (the amplifier clock) once it
is within two chunks; the device's own 50 µs timer does the rest. Each trigger is followed by an acked
no-op write, so a device that stopped answering is noticed at once, not at the next programming step.
Wire facts: ../shared/spec/devices.md section 1 (checked against the firmware source).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import serial

try:  # pyserial's POSIX backend lets termios errors through (e.g. tcdrain on a port whose device vanished)
    from termios import error as _TermiosError
except ImportError:  # pragma: no cover - Windows
    _TermiosError = OSError
_IO_ERRORS = (serial.SerialException, OSError, _TermiosError)

from rigctl.drivers import _pulsepal_wire as w
from rigctl.drivers.base import Stimulator
from rigctl.errors import DeviceError
from rigctl.types import BiphasicPulse, StimCommand

TRIGGER_LATENCY_TICKS = 2  # firmware 2.0.1: the trigger acts on the next tick, the DAC is written one later
MAX_UNIT_PULSE_GAP_TICKS = 20000 * 3600  # interPulseInterval of one hour: a train of one pulse


@dataclass(frozen=True)
class _Armed:
    command: StimCommand
    channels: tuple[int, ...]
    free_sample: int  # the outputs are idle again from this amplifier sample


class PulsePal(Stimulator):
    """Pulse Pal 2 on a serial port. `channel_electrodes[k]`: electrodes wired to output k (1..4)."""

    def __init__(self, port: str, channel_electrodes: dict[int, tuple[int, ...]], sample_rate_hz: float, *,
                 timeout_s: float = 0.5, trigger_latency_ms: float = 0.0, mV_per_volt: float = 1000.0,
                 arm_ahead_ms: float = 0.0, connect: bool = True):
        """`trigger_latency_ms`: how far the device's "now" runs ahead of the amplifier sample the loop has
        just read (acquisition latency of the amplifier; 0 for a simulated amplifier). `mV_per_volt`: the
        electrode voltage per volt of Pulse Pal output (1000: direct; less behind an attenuator).
        `arm_ahead_ms`: arm a command at least this long before it is due (default: two chunks), e.g. when
        the amplifier's data reaches the loop later than the device's clock runs."""
        self.port = port
        self.fs = float(sample_rate_hz)
        self.timeout_s = timeout_s
        self.latency_samples = int(round(trigger_latency_ms * 1e-3 * self.fs))
        self.mV_per_volt = float(mV_per_volt)
        self.arm_ahead_samples = int(round(arm_ahead_ms * 1e-3 * self.fs))
        self.channel_electrodes: dict[int, tuple[int, ...]] = {}
        for ch, electrodes in channel_electrodes.items():
            if not 1 <= int(ch) <= w.N_OUTPUTS:
                raise DeviceError(f"Pulse Pal output {ch}: allowed outputs 1..{w.N_OUTPUTS}")
            self.channel_electrodes[int(ch)] = tuple(sorted(int(e) for e in electrodes))
        owner: dict[int, int] = {}
        for ch, electrodes in self.channel_electrodes.items():
            for e in electrodes:
                if e in owner:
                    raise DeviceError(f"electrode {e} is wired to Pulse Pal outputs {owner[e]} and {ch}; "
                                      "allowed: each electrode on one output")
                owner[e] = ch
        self._owner = owner
        self._serial: serial.Serial | None = None
        self._lock = threading.RLock()
        self._queue: list[StimCommand] = []
        self._armed: list[_Armed] = []
        self._cache: dict[tuple[int, int], int] = {}  # (param, channel) -> value the device holds
        self._clock: int | None = None  # the amplifier sample the loop has read up to
        self._chunk = 0
        self.firmware_version = 0
        self.faulted: str | None = None
        self.triggers_sent = 0
        if connect:
            self.connect()

    # ---- connection ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the port, handshake, identify, and put every output at rest with one-pulse trains."""
        with self._lock:
            self._close_port()
            try:
                self._serial = serial.Serial(self.port, baudrate=115200, timeout=self.timeout_s,
                                             write_timeout=self.timeout_s)
            except _IO_ERRORS as exc:
                raise DeviceError(f"Pulse Pal at {self.port}: cannot open the port ({exc})") from exc
            try:
                self._handshake_and_rest()
            except DeviceError:
                # best effort (never raises): stop whatever the device may be doing, then let the port go
                # so a reconnect starts clean
                self.safe_state()
                self._close_port()
                raise
            self._cache = {}
            for ch in range(1, w.N_OUTPUTS + 1):
                for param, value in self._rest_values().items():
                    self._cache[(param, ch)] = value
            self._armed = []
            self.faulted = None

    def _handshake_and_rest(self) -> None:
        """Flush, handshake, identify and program every output at rest; any port failure is a DeviceError
        (pyserial lets termios.error / OSError through its flush when the device vanished just after open)."""
        try:
            self._serial.reset_input_buffer()
        except _IO_ERRORS as exc:
            raise self._fault(f"the port failed right after opening ({type(exc).__name__}: {exc}); "
                              "device unplugged?") from exc
        self._write(w.message(w.OP_HANDSHAKE))
        reply = self._read_exact(5, "handshake reply")
        try:
            self.firmware_version = w.parse_handshake(reply)
        except ValueError as exc:
            raise self._fault(str(exc)) from exc
        if self.firmware_version < w.MIN_V2_FIRMWARE:
            raise self._fault(f"firmware {self.firmware_version} is a Pulse Pal 1.x; "
                              f"allowed: Pulse Pal 2 (firmware >= {w.MIN_V2_FIRMWARE})")
        self._write(w.message(w.OP_CLIENT_ID, b"RIGCTL"))
        self._write(w.message(w.OP_PROGRAM_ALL, self._rest_program()))
        self._expect_ack("program all")

    def reconnect(self) -> None:
        """After a fault (e.g. the cable was replugged): reopen the same port; queued commands are dropped."""
        with self._lock:
            self._queue = []
            self.connect()

    @staticmethod
    def _rest_values() -> dict[int, int]:
        return {w.P_IS_BIPHASIC: 1, w.P_PHASE1_V: w.volts_to_code(0.0), w.P_PHASE2_V: w.volts_to_code(0.0),
                w.P_PHASE1_DUR: 1, w.P_INTERPHASE: 0, w.P_PHASE2_DUR: 1, w.P_INTERPULSE: MAX_UNIT_PULSE_GAP_TICKS,
                w.P_TRAIN_DUR: 2, w.P_TRAIN_DELAY: 0}

    def _rest_program(self) -> bytes:
        """Op 73 payload: 0 V everywhere, one-pulse trains, no hardware-trigger links, normal trigger mode."""
        r = self._rest_values()
        times = [r[w.P_PHASE1_DUR], r[w.P_INTERPHASE], r[w.P_PHASE2_DUR], r[w.P_INTERPULSE], 0, 0,
                 r[w.P_TRAIN_DUR], r[w.P_TRAIN_DELAY]] * w.N_OUTPUTS
        zero = w.volts_to_code(0.0)
        volts = [zero] * 12
        bytes8 = [1, 0, 0, 0] * w.N_OUTPUTS
        links = [0] * 8
        modes = [0, 0]
        return struct.pack("<32I12H16B8B2B", *times, *volts, *bytes8, *links, *modes)

    def _close_port(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
            self._serial = None

    # ---- wire helpers ------------------------------------------------------------------------------------
    def _fault(self, what: str) -> DeviceError:
        self.faulted = what
        return DeviceError(f"Pulse Pal at {self.port}: {what}")

    def _write(self, data: bytes) -> None:
        if self._serial is None:
            raise self._fault("not connected")
        try:
            self._serial.write(data)  # one write per message: the firmware times out on split messages
            self._serial.flush()
        except _IO_ERRORS as exc:
            raise self._fault(f"write failed, device disconnected? ({exc})") from exc

    def _read_exact(self, n: int, what: str) -> bytes:
        try:
            data = self._serial.read(n)
        except _IO_ERRORS as exc:
            raise self._fault(f"read failed while waiting for the {what}, device disconnected? ({exc})") from exc
        if len(data) < n:
            got = f"got {data.hex(' ')}" if data else "got nothing"
            raise self._fault(f"no complete {what} within {self.timeout_s} s ({got}): device not answering")
        return data

    def _expect_ack(self, what: str) -> None:
        b = self._read_exact(1, f"ack of {what}")
        if b[0] != w.ACK:
            try:
                extra = self._serial.read(self._serial.in_waiting or 0)
            except Exception:
                extra = b""
            raise self._fault(f"{what} answered {(b + extra).hex(' ')}, expected ack 01 (garbage on the line)")

    def _set(self, param: int, channel: int, value: int) -> None:
        if self._cache.get((param, channel)) == value:
            return
        self._write(w.program_one(param, channel, value))
        self._expect_ack(f"parameter {param} of output {channel}")
        self._cache[(param, channel)] = value

    # ---- translation --------------------------------------------------------------------------------------
    def channels_for(self, electrodes: tuple[int, ...]) -> tuple[int, ...]:
        """The outputs whose electrode sets together are exactly `electrodes`, or DeviceError."""
        unknown = sorted(e for e in electrodes if e not in self._owner)
        if unknown:
            raise DeviceError(f"electrode(s) {unknown} are not wired to any Pulse Pal output; allowed: "
                              f"{sorted(self._owner)}")
        channels = tuple(sorted({self._owner[e] for e in electrodes}))
        wanted = set(electrodes)
        for ch in channels:
            missing = set(self.channel_electrodes[ch]) - wanted
            if missing:
                raise DeviceError(f"output {ch} drives electrodes {list(self.channel_electrodes[ch])} together; "
                                  f"the command leaves out {sorted(missing)}; allowed: whole output groups "
                                  f"{ {k: list(v) for k, v in self.channel_electrodes.items()} }")
        return channels

    def check_deliverable(self, command: StimCommand) -> None:
        """Whole output groups, a voltage pulse within ±10 V at the outputs, phases on the 50-µs grid."""
        self.channels_for(command.electrodes)
        self.pulse_program(command.pulse)

    def delivered_pulse(self, pulse: BiphasicPulse) -> BiphasicPulse:
        return self.output_pulse(pulse)

    def pulse_program(self, pulse: BiphasicPulse) -> dict[int, int]:
        """Op-74 values for one biphasic pulse, or DeviceError if the device cannot produce it."""
        if pulse.unit != "mV":
            raise DeviceError(f"Pulse Pal outputs voltage; pulse unit {pulse.unit!r}, allowed: 'mV'")
        codes = {}
        for name, mv in (("phase1_amplitude", pulse.phase1_amplitude), ("phase2_amplitude", pulse.phase2_amplitude)):
            volts = mv / self.mV_per_volt
            if not (w.V_MIN <= volts <= w.V_MAX):
                raise DeviceError(f"{name}={mv} mV needs {volts:.3f} V at the Pulse Pal output; allowed: "
                                  f"[{w.V_MIN * self.mV_per_volt:g}, {w.V_MAX * self.mV_per_volt:g}] mV")
            codes[name] = w.volts_to_code(volts)
        ticks = {}
        for name, us in (("phase1_us", pulse.phase1_us), ("interphase_us", pulse.interphase_us),
                         ("phase2_us", pulse.phase2_us)):
            n = int(round(us / w.CYCLE_US))
            if abs(n * w.CYCLE_US - us) > 1e-6 or (n < 1 and name != "interphase_us"):
                raise DeviceError(f"{name}={us} µs; allowed: positive multiples of {w.CYCLE_US:g} µs "
                                  "(the Pulse Pal's 20 kHz clock)")
            ticks[name] = n
        length = ticks["phase1_us"] + ticks["interphase_us"] + ticks["phase2_us"]
        return {w.P_IS_BIPHASIC: 1, w.P_PHASE1_V: codes["phase1_amplitude"], w.P_PHASE2_V: codes["phase2_amplitude"],
                w.P_PHASE1_DUR: ticks["phase1_us"], w.P_INTERPHASE: ticks["interphase_us"],
                w.P_PHASE2_DUR: ticks["phase2_us"], w.P_INTERPULSE: MAX_UNIT_PULSE_GAP_TICKS,
                w.P_TRAIN_DUR: length}

    def output_pulse(self, pulse: BiphasicPulse) -> BiphasicPulse:
        """The pulse the outputs put on the electrodes when `pulse` is commanded, or DeviceError.

        Each phase voltage goes through the firmware's 16-bit code and the 12-bit DAC (4.9 mV steps over
        ±10 V), so an amplitude that is no DAC level arrives shifted by up to one step (±1 V → −1.00098 /
        +0.99609 V): the culture sees this pulse, not the commanded one, and a run through a Pulse Pal
        matches the directly driven simulated rig only when that rig is given this pulse.
        """
        program = self.pulse_program(pulse)
        rest = w.code_to_volts(w.volts_to_code(0.0))  # outputs rest at 0 V (op 73 on connect)

        def mv(code: int) -> float:
            return (w.code_to_volts(code) - rest) * self.mV_per_volt

        return BiphasicPulse(mv(program[w.P_PHASE1_V]), program[w.P_PHASE1_DUR] * w.CYCLE_US,
                             mv(program[w.P_PHASE2_V]), program[w.P_PHASE2_DUR] * w.CYCLE_US,
                             program[w.P_INTERPHASE] * w.CYCLE_US, unit="mV")

    # ---- Stimulator -----------------------------------------------------------------------------------------
    def schedule(self, command: StimCommand) -> None:
        with self._lock:
            if self.faulted:
                raise DeviceError(f"Pulse Pal at {self.port} is in a fault state ({self.faulted}); reconnect first")
            self.channels_for(command.electrodes)
            self.pulse_program(command.pulse)
            if self._clock is not None and command.sample < self._clock + self.latency_samples:
                raise DeviceError(f"pulse at sample {command.sample} is already past (amplifier at {self._clock})")
            self._queue.append(command)
            self._queue.sort(key=lambda c: c.sample)
            if self._clock is not None:
                self._arm_due()

    def on_chunk(self, end_sample: int) -> None:
        with self._lock:
            if self._clock is not None:
                self._chunk = max(self._chunk, end_sample - self._clock)
            else:
                self._chunk = max(self._chunk, end_sample)
            self._clock = end_sample
            self._armed = [a for a in self._armed if a.free_sample > end_sample]
            if self._queue and not self.faulted:
                self._arm_due()

    def _arm_due(self) -> None:
        """Arm every queued command that would be late by the next chunk; keep the rest queued."""
        horizon = self._clock + self.latency_samples + max(2 * max(self._chunk, 1), self.arm_ahead_samples)
        while self._queue and self._queue[0].sample < horizon:
            cmd = self._queue[0]
            channels = self.channels_for(cmd.electrodes)
            busy = [a for a in self._armed if set(a.channels) & set(channels)]
            if busy:
                if cmd.sample < horizon - max(self._chunk, 1):
                    self._queue.pop(0)
                    self.safe_state()
                    raise self._fault(f"pulse at sample {cmd.sample} needs output(s) {channels} still busy "
                                      f"with the pulse at sample {busy[0].command.sample}")
                return
            self._queue.pop(0)
            try:
                self._arm(cmd, channels)
            except DeviceError:
                self.safe_state()
                raise

    def _arm(self, cmd: StimCommand, channels: tuple[int, ...]) -> None:
        lead = cmd.sample - self._clock - self.latency_samples
        delay = int(round(lead * w.CYCLE_HZ / self.fs)) - TRIGGER_LATENCY_TICKS
        if delay < 0:
            raise self._fault(f"pulse at sample {cmd.sample} is too close to be delivered on time "
                              f"(amplifier at {self._clock}, device needs {TRIGGER_LATENCY_TICKS * w.CYCLE_US:g} µs)")
        program = self.pulse_program(cmd.pulse)
        program[w.P_TRAIN_DELAY] = delay
        for ch in channels:
            for param, value in program.items():
                self._set(param, ch, value)
        mask = sum(1 << (ch - 1) for ch in channels)
        # trigger, then an acked write that changes nothing, in one USB write: the ack proves the
        # firmware parsed the trigger (op 77 itself is silent)
        self._write(w.message(w.OP_SOFT_TRIGGER, bytes((mask,))) + w.program_one(w.P_TRIGGER_MODE, 1, 0))
        self._expect_ack("trigger confirmation")
        self.triggers_sent += 1
        length = program[w.P_TRAIN_DUR] + TRIGGER_LATENCY_TICKS + delay
        free = self._clock + self.latency_samples + int(round(length * self.fs / w.CYCLE_HZ)) + 1
        self._armed.append(_Armed(cmd, channels, free))

    def abort(self) -> None:
        """Drop queued commands and stop every output (op 80: trains killed, outputs to resting 0 V)."""
        with self._lock:
            self._queue = []
            self._armed = []
            self._write(w.message(w.OP_ABORT))

    def safe_state(self) -> None:
        with self._lock:
            self._queue = []
            self._armed = []
            try:
                if self._serial is not None:
                    self._serial.write(w.message(w.OP_ABORT))
                    self._serial.flush()
            except Exception:  # the safe state never raises; a dead device is not stimulating either
                pass

    def close(self) -> None:
        with self._lock:
            self.safe_state()
            try:
                if self._serial is not None:
                    self._serial.write(w.message(w.OP_DISCONNECT))
                    self._serial.flush()
            except Exception:
                pass
            self._close_port()

    @property
    def pending(self) -> int:
        return len(self._queue)
