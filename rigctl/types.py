"""Frozen value types shared by every layer. One clock: the amplifier's sample index (int64)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

PulseUnit = Literal["uA", "mV"]


@dataclass(frozen=True, eq=False)
class SpikeEvents:
    """Spikes as parallel arrays (cheap to concatenate and to store): sample, channel, amplitude."""

    sample: np.ndarray  # int64 [k], amplifier sample index
    channel: np.ndarray  # int32 [k], recording channel (= electrode index on the rig)
    amplitude_uV: np.ndarray  # float32 [k], signed peak amplitude

    def __post_init__(self) -> None:
        n = len(self.sample)
        if len(self.channel) != n or len(self.amplitude_uV) != n:
            raise ValueError("SpikeEvents arrays must have equal length")

    def __len__(self) -> int:
        return len(self.sample)

    @staticmethod
    def empty() -> "SpikeEvents":
        return SpikeEvents(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.float32))

    @staticmethod
    def concat(parts: list["SpikeEvents"]) -> "SpikeEvents":
        parts = [p for p in parts if len(p)]
        if not parts:
            return SpikeEvents.empty()
        return SpikeEvents(
            np.concatenate([p.sample for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.channel for p in parts]).astype(np.int32, copy=False),
            np.concatenate([p.amplitude_uV for p in parts]).astype(np.float32, copy=False),
        )

    def select(self, mask: np.ndarray) -> "SpikeEvents":
        return SpikeEvents(self.sample[mask], self.channel[mask], self.amplitude_uV[mask])


@dataclass(frozen=True, eq=False)
class Chunk:
    """A block of samples from an amplifier.

    `samples` is int16 [n_samples, n_channels]; an event-only rig (on-device detection, or the
    simulated rig's `sim-events` mode) sends shape [n_samples, 0] and puts its spikes in `spikes`.
    """

    first_sample: int
    samples: np.ndarray
    uV_per_bit: float
    sample_rate_hz: float
    spikes: SpikeEvents | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end_sample(self) -> int:
        """One past the last sample of this chunk."""
        return self.first_sample + self.n_samples


@dataclass(frozen=True)
class BiphasicPulse:
    """A (possibly asymmetric) biphasic pulse. Amplitudes are signed, in `unit` (µA or mV).

    Charge balance means phase1_amplitude * phase1_us == -phase2_amplitude * phase2_us.
    """

    phase1_amplitude: float
    phase1_us: float
    phase2_amplitude: float
    phase2_us: float
    interphase_us: float = 0.0
    unit: PulseUnit = "uA"

    @property
    def duration_us(self) -> float:
        return self.phase1_us + self.interphase_us + self.phase2_us

    @property
    def peak_amplitude(self) -> float:
        return max(abs(self.phase1_amplitude), abs(self.phase2_amplitude))

    def phase_charges_nC(self) -> tuple[float, float]:
        """Signed charge of each phase in nC (current pulses only: µA x µs = pC)."""
        if self.unit != "uA":
            raise ValueError("charge is defined for current pulses only")
        return (self.phase1_amplitude * self.phase1_us * 1e-3, self.phase2_amplitude * self.phase2_us * 1e-3)

    @staticmethod
    def symmetric(amplitude: float, phase_us: float, unit: PulseUnit = "uA", negative_first: bool = True,
                  interphase_us: float = 0.0) -> "BiphasicPulse":
        sign = -1.0 if negative_first else 1.0
        return BiphasicPulse(sign * amplitude, phase_us, -sign * amplitude, phase_us, interphase_us, unit)


@dataclass(frozen=True)
class StimCommand:
    """Deliver `pulse` on every electrode in `electrodes` at amplifier sample `sample`."""

    sample: int
    electrodes: tuple[int, ...]
    pulse: BiphasicPulse


class BssFieldAccess:
    """`sources` and `stimuli` of a BSS trial, read from its declared `fields`."""

    fields: dict

    @property
    def sources(self) -> np.ndarray:
        """BSS: hidden sources, uint8 [n_sources]."""
        return self.fields["sources"]

    @property
    def stimuli(self) -> np.ndarray:
        """BSS: the stimulus pattern, uint8 [n_stimuli], 0/1 per stimulus channel of the protocol."""
        return self.fields["stimuli"]


@dataclass(frozen=True, eq=False)
class TrialRecord(BssFieldAccess):
    """One trial of a protocol: where it sits, the protocol's own trial fields, and the evoked counts."""

    session: int  # 1-based
    trial: int  # 1-based within the session
    sample: int  # the pulse's sample index (nominal onset when nothing was stimulated)
    counts: np.ndarray  # int32 [n_recording_electrodes], evoked spikes in the response window
    fields: dict = field(default_factory=dict)  # the protocol's declared trial fields (BSS: sources, stimuli)

    @staticmethod
    def bss(session: int, trial: int, sample: int, sources: np.ndarray, stimuli: np.ndarray,
            counts: np.ndarray) -> "TrialRecord":
        return TrialRecord(session, trial, sample, counts, {"sources": sources, "stimuli": stimuli})


@dataclass(frozen=True)
class SessionRecord:
    """Summary of one finished session."""

    session: int
    n_trials: int
    first_sample: int
    end_sample: int
    mean_evoked_per_trial: float
    overruns: int = 0
    extra: dict = field(default_factory=dict)
