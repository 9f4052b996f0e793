"""Safety limits, checked in the core for every driver: a command is accepted whole or rejected whole.

`GuardedStimulator` is the only way the loop reaches a Stimulator; on any fault it leaves the
device in its safe state. `Watchdog` stops stimulation when the loop stalls (wall-clock runs only).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from rigctl.drivers.base import Stimulator
from rigctl.errors import SafetyViolation
from rigctl.types import BiphasicPulse, StimCommand


@dataclass(frozen=True)
class SafetyLimits:
    """Per-rig limits. Defaults are conservative values for planar MEAs; a rig file narrows them."""

    max_amplitude_uA: float = 50.0
    max_amplitude_mV: float = 1500.0
    max_charge_per_phase_nC: float = 10.0
    charge_balance_tolerance: float = 0.05  # |q1 + q2| / max(|q1|, |q2|)
    min_phase_us: float = 20.0
    max_phase_us: float = 1000.0
    max_rate_hz: float = 50.0  # per electrode
    max_electrodes_per_command: int = 64
    allowed_electrodes: frozenset[int] | None = None
    n_electrodes: int = 64

    @staticmethod
    def from_dict(values: dict) -> "SafetyLimits":
        known = {f for f in SafetyLimits.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown safety limit(s) {sorted(unknown)}; allowed: {sorted(known)}")
        values = dict(values)
        if values.get("allowed_electrodes") is not None:
            values["allowed_electrodes"] = frozenset(int(e) for e in values["allowed_electrodes"])
        return SafetyLimits(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.allowed_electrodes is not None:
            d["allowed_electrodes"] = sorted(self.allowed_electrodes)
        return d

    def check_pulse(self, pulse: BiphasicPulse) -> None:
        """Raise SafetyViolation if the pulse shape itself breaks a limit."""
        for name, us in (("phase1_us", pulse.phase1_us), ("phase2_us", pulse.phase2_us)):
            if not (self.min_phase_us <= us <= self.max_phase_us):
                raise SafetyViolation(f"{name}={us} outside [{self.min_phase_us}, {self.max_phase_us}] µs")
        if pulse.interphase_us < 0:
            raise SafetyViolation(f"interphase_us={pulse.interphase_us} must be >= 0")
        if np.sign(pulse.phase1_amplitude) == np.sign(pulse.phase2_amplitude) and pulse.phase1_amplitude != 0:
            raise SafetyViolation("phases must have opposite polarity (biphasic)")
        limit = self.max_amplitude_uA if pulse.unit == "uA" else self.max_amplitude_mV
        if pulse.peak_amplitude > limit:
            raise SafetyViolation(f"amplitude {pulse.peak_amplitude} {pulse.unit} exceeds the limit {limit} {pulse.unit}")
        q1 = pulse.phase1_amplitude * pulse.phase1_us
        q2 = pulse.phase2_amplitude * pulse.phase2_us
        biggest = max(abs(q1), abs(q2))
        if biggest > 0 and abs(q1 + q2) / biggest > self.charge_balance_tolerance:
            raise SafetyViolation(
                f"charge imbalance {abs(q1 + q2) / biggest:.3f} exceeds tolerance {self.charge_balance_tolerance}")
        if pulse.unit == "uA":
            worst = max(abs(q) for q in pulse.phase_charges_nC())
            if worst > self.max_charge_per_phase_nC:
                raise SafetyViolation(
                    f"charge per phase {worst:.3f} nC exceeds the limit {self.max_charge_per_phase_nC} nC")


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
        self.sample_rate_hz = sample_rate_hz
        self.rates = RateTracker()
        self.rejected = 0
        self.delivered = 0

    def check(self, command: StimCommand) -> None:
        """Raise SafetyViolation (nothing sent) if any part of the command breaks a limit."""
        lim = self.limits
        electrodes = command.electrodes
        if len(electrodes) == 0:
            raise SafetyViolation("command names no electrode")
        if len(set(electrodes)) != len(electrodes):
            raise SafetyViolation(f"command repeats an electrode: {electrodes}")
        if len(electrodes) > lim.max_electrodes_per_command:
            raise SafetyViolation(
                f"{len(electrodes)} electrodes in one command exceeds {lim.max_electrodes_per_command}")
        bad = [e for e in electrodes if not (0 <= e < lim.n_electrodes)]
        if bad:
            raise SafetyViolation(f"electrode(s) {bad} outside 0..{lim.n_electrodes - 1}")
        if lim.allowed_electrodes is not None:
            bad = [e for e in electrodes if e not in lim.allowed_electrodes]
            if bad:
                raise SafetyViolation(f"electrode(s) {bad} are not in the rig's allowed stimulation electrodes")
        lim.check_pulse(command.pulse)
        min_interval = int(round(self.sample_rate_hz / lim.max_rate_hz))
        too_fast = self.rates.violations(electrodes, command.sample, min_interval)
        if too_fast:
            raise SafetyViolation(
                f"electrode(s) {too_fast} would be pulsed faster than {lim.max_rate_hz} Hz")

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
