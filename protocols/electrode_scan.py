"""`kind: electrode_scan`: every candidate electrode stimulated alone, N times, in a seeded random order.

How a lab picks stimulation groups: the evoked response of every recording electrode to each stimulated
electrode (`rigctl report` draws the map and lists the electrodes that respond reliably). Open loop:
the whole plan is known, and safety-checked, before the first pulse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import model_validator

from rigctl.config import refusal, spec
from rigctl.engine import PlannedTrial, Protocol, ProtocolConfig, TrialField
from rigctl.errors import ProtocolError
from rigctl.protocol import common_values, parse_file
from rigctl.protocol_schema import ProtocolFile, PulseFile, electrode_problem
from rigctl.types import BiphasicPulse, StimCommand
from rigctl.yamlcheck import LocatedDoc

KIND = "electrode_scan"
MAX_SCAN_TRIALS = 1_000_000


class ElectrodeScanFile(ProtocolFile):
    """What a `kind: electrode_scan` file may say."""

    kind: Literal["electrode_scan"] = KIND
    electrodes: list = spec(about="the candidate stimulation electrodes")
    repetitions: int = spec(20, ge=1, le=10000)
    isi_s: float = spec(0.5, ge=0.02, le=3600)
    pulse: PulseFile
    reliable_probability: float = spec(0.5, ge=0.0, le=1.0, about="P(at least one spike in the window) above "
                                                                  "which a response is reliable")

    @model_validator(mode="after")
    def _electrodes(self) -> "ElectrodeScanFile":
        """The electrodes' values, once every field is valid (as the file is read: the pulse first)."""
        problem = electrode_problem(self.electrodes)
        if problem:
            raise refusal(**problem, field="electrodes")
        return self


@dataclass(frozen=True)
class ElectrodeScanConfig(ProtocolConfig):
    KIND: ClassVar[str] = KIND
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("source_file", "sessions")  # always one session

    electrodes: tuple[int, ...]
    repetitions: int
    isi_s: float
    pulse: BiphasicPulse
    reliable_probability: float

    @property
    def n_trials(self) -> int:
        return len(self.electrodes) * self.repetitions

    def make_protocol(self, seed: int, sample_rate_hz: float) -> "ElectrodeScan":
        return ElectrodeScan(self, seed, sample_rate_hz)

    def describe(self, plan: "ElectrodeScan") -> list[str]:
        p = self.pulse
        minutes = (self.first_trial_s + self.n_trials * self.isi_s) / 60.0
        return [f"{self.name}: {len(self.electrodes)} electrodes x {self.repetitions} repetitions = "
                f"{self.n_trials} trials, isi {self.isi_s} s, about {minutes:.1f} min",
                f"pulse {p.phase1_amplitude:g}/{p.phase2_amplitude:g} {p.unit}, {p.phase1_us:g}/{p.phase2_us:g} us; "
                f"response window {self.response_window_ms} ms; reliable at P >= {self.reliable_probability}"]


class ElectrodeScan(Protocol):
    """The scan's plan: a seeded permutation of (electrode, repetition), one pulse per trial."""

    def __init__(self, config: ElectrodeScanConfig, seed: int, sample_rate_hz: float):
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CA9]))
        order = rng.permutation(np.repeat(np.arange(len(config.electrodes)), config.repetitions))
        self._electrode = np.asarray(config.electrodes, np.int64)[order]
        seen = np.zeros(len(config.electrodes), np.int64)
        self._repetition = np.empty(len(order), np.int64)
        for i, k in enumerate(order):
            seen[k] += 1
            self._repetition[i] = seen[k]

    @property
    def n_trials(self) -> int:
        return self.config.n_trials

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("stim_electrode", "<i4"), TrialField("repetition", "<i4"))

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial:
        cfg = self.config
        sample = int(round((cfg.first_trial_s + index * cfg.isi_s) * self.sample_rate_hz))
        electrode = int(self._electrode[index])
        return PlannedTrial(index, 1, index + 1, sample, StimCommand(sample, (electrode,), cfg.pulse),
                            {"stim_electrode": electrode, "repetition": int(self._repetition[index])},
                            last_in_session=index + 1 == self.n_trials)


def load(doc: LocatedDoc, path: Path) -> ElectrodeScanConfig:
    top = parse_file(ElectrodeScanFile, doc)
    pulse = top.pulse.to_pulse()
    if len(top.electrodes) * top.repetitions > MAX_SCAN_TRIALS:
        raise ProtocolError(f"{doc.where('repetitions')}: field 'repetitions' has value {top.repetitions}; "
                            f"allowed: at most {MAX_SCAN_TRIALS} trials in all ({len(top.electrodes)} electrodes)")
    common = common_values(doc, top, path, top.isi_s, pulse.duration_us)
    return ElectrodeScanConfig(**common, sessions=1, electrodes=tuple(top.electrodes), repetitions=top.repetitions,
                               isi_s=top.isi_s, pulse=pulse, reliable_probability=top.reliable_probability)
