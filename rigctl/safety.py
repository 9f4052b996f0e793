"""Safety limits, checked in the core for every driver: a command is accepted whole or rejected whole.

`GuardedStimulator` is the only way the loop reaches a Stimulator; on any fault it leaves the
device in its safe state. `check_plan` checks a whole precomputed plan (amplitude, charge, rate,
electrodes, and what the device can deliver) before the first pulse is sent. `Watchdog` stops
stimulation when the loop stalls (wall-clock runs only).

Every number is checked to be finite first: a comparison with NaN is never "within limits"
(each check is written `not (value <= limit)`, which NaN fails).
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydantic import BaseModel, Field, ValidationError, model_validator

from rigctl.config import STRICT, Problem, first_problem, refusal
from rigctl.drivers.base import Stimulator
from rigctl.errors import DeviceError, RigctlError, SafetyViolation
from rigctl.types import BiphasicPulse, StimCommand


class SafetyConfigError(RigctlError):
    """A safety limit is not a finite number within its hard range (rig file or code)."""


@dataclass(frozen=True)
class HardRange:
    """The range a limit must lie in, whatever a rig file says, and where the bound comes from."""

    low: float
    high: float
    source: str
    low_inclusive: bool = True

    def allows(self, value: float) -> bool:
        above_low = value >= self.low if self.low_inclusive else value > self.low
        return bool(above_low and value <= self.high)

    def describe(self) -> str:
        return f"{'>=' if self.low_inclusive else '>'} {self.low:g} and <= {self.high:g}"


# Hard ranges per limit (docs/safety.md). A rig file narrows a limit within its range, never widens it.
HARD_RANGES: dict[str, HardRange] = {
    "max_amplitude_uA": HardRange(
        0.0, 100.0, "rigctl's choice: twice the default; at 200 us per phase it meets the 20 nC charge "
                    "ceiling (an Intan RHS can source 2.55 mA, so the device does not bound it)"),
    "max_amplitude_mV": HardRange(
        0.0, 2000.0, "rigctl's choice: twice the reference protocol's ~1 V; MCS MEA manual: voltage pulses "
                     "charge TiN electrodes and positive charge electrolyses them (a Pulse Pal reaches 10 V)"),
    "max_charge_per_phase_nC": HardRange(
        0.0, 20.0, "MCS MEA manual: safe charge injection of TiN 23 mC/cm^2 (163 nC on a 30 um electrode), "
                   "Pt 0.4 mC/cm^2 (2.8 nC): 20 nC keeps TiN 8x below its limit; Pt rigs must narrow it"),
    "charge_balance_tolerance": HardRange(
        0.0, 0.10, "net DC charge drives electrolysis (MCS MEA manual); 10 % residual at most"),
    "min_phase_us": HardRange(1.0, 1000.0, "below one sample period no device delivers a phase"),
    "max_phase_us": HardRange(1.0, 1000.0, "longer phases raise charge per phase beyond what MEA "
                                           "stimulation uses (0.1-0.5 ms)"),
    "max_rate_hz": HardRange(0.0, 200.0, "Cortical Labs CL API: 200 Hz per electrode", low_inclusive=False),
    "max_electrodes_per_command": HardRange(1.0, 4096.0, "largest stimulation array rigctl addresses"),
    "n_electrodes": HardRange(1.0, 65536.0, "largest electrode count rigctl addresses (MaxOne: 26,400)"),
}
INTEGER_LIMITS = ("max_electrodes_per_command", "n_electrodes")  # the rest are numbers (an int becomes a float)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _within(name: str, default: float) -> Any:
    """A limit's field: its default and its hard range, taken from HARD_RANGES (the one place they live)."""
    hard = HARD_RANGES[name]
    low = {"ge": hard.low} if hard.low_inclusive else {"gt": hard.low}
    return Field(default, le=hard.high, **low)


class SafetyLimits(BaseModel):
    """Per-rig limits. Defaults are conservative values for planar MEAs; a rig file narrows them.

    Declared, and validated once at construction: no rig file and no caller can make a limit NaN,
    infinite, zero where it divides, or wider than its ceiling in `HARD_RANGES`; a bad value raises
    SafetyConfigError naming the limit. Instances are frozen, so the per-command checks read plain,
    already-valid attributes.
    """

    model_config = STRICT

    max_amplitude_uA: float = _within("max_amplitude_uA", 50.0)
    max_amplitude_mV: float = _within("max_amplitude_mV", 1500.0)
    max_charge_per_phase_nC: float = _within("max_charge_per_phase_nC", 10.0)
    charge_balance_tolerance: float = _within("charge_balance_tolerance", 0.05)  # |q1 + q2| / max(|q1|, |q2|)
    min_phase_us: float = _within("min_phase_us", 20.0)
    max_phase_us: float = _within("max_phase_us", 1000.0)
    max_rate_hz: float = _within("max_rate_hz", 50.0)  # per electrode
    max_electrodes_per_command: int = _within("max_electrodes_per_command", 64)
    allowed_electrodes: frozenset[int] | None = None
    n_electrodes: int = _within("n_electrodes", 64)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SafetyConfigError(_limit_line(first_problem(SafetyLimits, exc))) from None

    @model_validator(mode="after")
    def _consistent(self) -> "SafetyLimits":
        if not self.min_phase_us <= self.max_phase_us:
            raise refusal("", line=f"safety.min_phase_us={self.min_phase_us} exceeds safety.max_phase_us="
                                   f"{self.max_phase_us}; allowed: min_phase_us <= max_phase_us")
        if self.allowed_electrodes is not None:
            bad = sorted(e for e in self.allowed_electrodes if not 0 <= e < self.n_electrodes)
            if bad:
                raise refusal("", line=f"safety.allowed_electrodes has {_short(bad)}; allowed: integers "
                                       f"0..{self.n_electrodes - 1}")
        return self

    @staticmethod
    def from_dict(values: dict) -> "SafetyLimits":
        """From a rig file's `safety:` mapping; raises SafetyConfigError naming the field."""
        known = list(SafetyLimits.model_fields)
        unknown = sorted(str(k) for k in set(values) - set(known))
        if unknown:
            raise SafetyConfigError(f"unknown safety limit(s) {unknown}; allowed: {sorted(known)}")
        values = dict(values)
        allowed = values.get("allowed_electrodes")
        if allowed is not None:
            if not isinstance(allowed, (list, tuple)) or not all(
                    isinstance(e, int) and not isinstance(e, bool) for e in allowed):
                raise SafetyConfigError(f"safety.allowed_electrodes={_short(allowed)}; allowed: a list of "
                                        "electrode indices (integers)")
            values["allowed_electrodes"] = frozenset(allowed)
        return SafetyLimits(**values)

    def to_dict(self) -> dict:
        d = self.model_dump()
        if self.allowed_electrodes is not None:
            d["allowed_electrodes"] = sorted(self.allowed_electrodes)
        return d

    def check_pulse(self, pulse: BiphasicPulse) -> None:
        """Raise SafetyViolation if the pulse shape itself breaks a limit (or is not finite)."""
        if pulse.unit not in ("uA", "mV"):
            raise SafetyViolation(f"pulse unit {_short(pulse.unit)}; allowed: uA, mV")
        for name in ("phase1_amplitude", "phase1_us", "phase2_amplitude", "phase2_us", "interphase_us"):
            if not _finite(getattr(pulse, name)):
                raise SafetyViolation(f"pulse {name}={_short(getattr(pulse, name))}; allowed: a finite number")
        for name, us in (("phase1_us", pulse.phase1_us), ("phase2_us", pulse.phase2_us)):
            if not (self.min_phase_us <= us <= self.max_phase_us):
                raise SafetyViolation(f"pulse {name}={us} outside safety.min_phase_us..max_phase_us "
                                      f"[{self.min_phase_us}, {self.max_phase_us}] µs")
        if not pulse.interphase_us >= 0:
            raise SafetyViolation(f"pulse interphase_us={pulse.interphase_us} must be >= 0")
        a1, a2 = pulse.phase1_amplitude, pulse.phase2_amplitude
        if not ((a1 < 0 < a2) or (a2 < 0 < a1) or (a1 == 0 and a2 == 0)):
            raise SafetyViolation("pulse phases must have opposite polarity (biphasic)")
        name = "max_amplitude_uA" if pulse.unit == "uA" else "max_amplitude_mV"
        limit = getattr(self, name)
        if not pulse.peak_amplitude <= limit:
            raise SafetyViolation(f"pulse amplitude {pulse.peak_amplitude} {pulse.unit} exceeds the limit "
                                  f"safety.{name} = {limit} {pulse.unit}")
        q1 = a1 * pulse.phase1_us
        q2 = a2 * pulse.phase2_us
        biggest = max(abs(q1), abs(q2))
        if biggest > 0 and not abs(q1 + q2) / biggest <= self.charge_balance_tolerance:
            raise SafetyViolation(f"pulse charge imbalance {abs(q1 + q2) / biggest:.3f} exceeds "
                                  f"safety.charge_balance_tolerance = {self.charge_balance_tolerance}")
        if pulse.unit == "uA":
            worst = max(abs(q) for q in pulse.phase_charges_nC())
            if not worst <= self.max_charge_per_phase_nC:
                raise SafetyViolation(f"pulse charge per phase {worst:.3f} nC exceeds the limit "
                                      f"safety.max_charge_per_phase_nC = {self.max_charge_per_phase_nC} nC")

    def min_interval_samples(self, sample_rate_hz: float) -> int:
        """The fewest samples allowed between two pulses on one electrode (rounded up: never faster)."""
        return int(math.ceil(sample_rate_hz / self.max_rate_hz - 1e-9))


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _limit_line(p: Problem) -> str:
    """A refused limit as one line: `safety.max_rate_hz=0; allowed: a finite number > 0 and <= 200 (hard
    range: ...)`."""
    if p.line:
        return p.line
    if p.kind in ("unknown", "key"):
        return f"unknown safety limit(s) {[str(p.key)]}; allowed: {sorted(SafetyLimits.model_fields)}"
    name = p.field.partition(".")[0]
    hard = HARD_RANGES.get(name)
    if name == "allowed_electrodes":
        allowed = "a set of electrode indices (integers)"
    elif hard is None:
        allowed = p.allowed
    elif p.kind == "type" and name in INTEGER_LIMITS and isinstance(p.raw, float):
        allowed = f"an integer {hard.describe()}"
    elif p.kind == "type":
        allowed = "a number"
    else:
        allowed = f"a finite number {hard.describe()} (hard range: {hard.source})"
    return f"safety.{name}={_short(p.raw)}; allowed: {allowed}"


@dataclass
class RateTracker:
    """Remembers each electrode's last pulse to enforce the per-electrode rate limit."""

    last_sample: dict[int, int] = field(default_factory=dict)

    def violations(self, electrodes: Iterable[int], sample: int, min_interval_samples: int) -> list[int]:
        return [e for e in electrodes
                if e in self.last_sample and abs(sample - self.last_sample[e]) < min_interval_samples]

    def record(self, electrodes: Iterable[int], sample: int) -> None:
        for e in electrodes:
            self.last_sample[e] = sample


class GuardedStimulator(Stimulator):
    """Checks every command against `limits` before the wrapped driver sees it; faults go safe."""

    def __init__(self, inner: Stimulator, limits: SafetyLimits, sample_rate_hz: float):
        self.inner = inner
        self.limits = limits
        if not _finite(sample_rate_hz) or not sample_rate_hz > 0:
            raise SafetyConfigError(f"sample rate {_short(sample_rate_hz)}; allowed: a finite number > 0")
        self.sample_rate_hz = sample_rate_hz
        self.min_interval = limits.min_interval_samples(sample_rate_hz)
        self.rates = RateTracker()
        self.rejected = 0
        self.delivered = 0

    def check(self, command: StimCommand, rates: "RateTracker | None" = None) -> None:
        """Raise SafetyViolation (nothing sent) if any part of the command breaks a limit."""
        lim = self.limits
        electrodes = command.electrodes
        if not _is_integer(command.sample) or command.sample < 0:
            raise SafetyViolation(f"command sample {_short(command.sample)}; allowed: an integer >= 0")
        if len(electrodes) == 0:
            raise SafetyViolation("command names no electrode")
        if not all(_is_integer(e) for e in electrodes):
            raise SafetyViolation(f"command electrodes {_short(electrodes)}; allowed: integers")
        if len(set(electrodes)) != len(electrodes):
            raise SafetyViolation(f"command repeats an electrode: {_short(electrodes)}")
        if len(electrodes) > lim.max_electrodes_per_command:
            raise SafetyViolation(f"{len(electrodes)} electrodes in one command exceeds "
                                  f"safety.max_electrodes_per_command = {lim.max_electrodes_per_command}")
        bad = [e for e in electrodes if not (0 <= e < lim.n_electrodes)]
        if bad:
            raise SafetyViolation(f"electrode(s) {_short(bad)} outside 0..{lim.n_electrodes - 1}")
        if lim.allowed_electrodes is not None:
            bad = [e for e in electrodes if e not in lim.allowed_electrodes]
            if bad:
                raise SafetyViolation(f"electrode(s) {_short(bad)} are not in the rig's "
                                      "safety.allowed_electrodes")
        lim.check_pulse(command.pulse)
        delivered = getattr(self.inner, "delivered_pulse", None)
        if delivered is not None:
            try:
                actual = delivered(command.pulse)
            except DeviceError as exc:
                raise SafetyViolation(f"the stimulator cannot deliver the pulse: {exc}") from exc
            if actual != command.pulse:
                try:
                    lim.check_pulse(actual)
                except SafetyViolation as exc:
                    raise SafetyViolation(f"as the device delivers it ({actual}): {exc}") from exc
        too_fast = (rates or self.rates).violations(electrodes, command.sample, self.min_interval)
        if too_fast:
            raise SafetyViolation(f"electrode(s) {_short(too_fast)} would be pulsed faster than "
                                  f"safety.max_rate_hz = {lim.max_rate_hz} Hz (at sample {command.sample})")

    def check_plan(self, commands: Iterable[StimCommand]) -> int:
        """Check a whole plan before anything is sent: every limit, the rate across the plan (from this
        guard's own history), and whether the device can deliver each command. Returns the count."""
        rates = RateTracker(dict(self.rates.last_sample))
        deliverable = getattr(self.inner, "check_deliverable", None)
        n = 0
        for n, command in enumerate(commands, start=1):
            try:
                self.check(command, rates)
                if deliverable is not None:
                    deliverable(command)
            except RigctlError as exc:
                raise SafetyViolation(f"command {n} of the plan (sample {command.sample}): {exc}") from exc
            rates.record(command.electrodes, command.sample)
        return n

    def schedule(self, command: StimCommand) -> None:
        try:
            self.check(command)
        except SafetyViolation:
            self.rejected += 1
            raise
        try:
            self.inner.schedule(command)
        except Exception:
            self.safe_state()
            raise
        self.rates.record(command.electrodes, command.sample)
        self.delivered += 1

    def on_chunk(self, end_sample: int) -> None:
        """Forward the clock to the driver (software-triggered devices fire here); a fault goes safe."""
        try:
            self.inner.on_chunk(end_sample)
        except Exception:
            self.safe_state()
            raise

    def abort(self) -> None:
        self.inner.abort()

    def safe_state(self) -> None:
        try:
            self.inner.safe_state()
        except Exception:  # the safe state must never raise into a fault handler
            pass

    def close(self) -> None:
        self.inner.close()


class Watchdog:
    """Calls `on_stall` once if `kick` is not called for `timeout_s` of wall time."""

    def __init__(self, timeout_s: float, on_stall):
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self._last = time.monotonic()
        self._stop = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="rigctl-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._last = time.monotonic()
        self._thread.start()
        return self

    def kick(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        period = min(0.05, self.timeout_s / 4)
        while not self._stop.wait(period):
            if time.monotonic() - self._last > self.timeout_s:
                self.fired = True
                self.on_stall()
                return
