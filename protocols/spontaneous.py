"""`kind: spontaneous`: record for `duration_s` with no stimulation (no trials; every spike is kept).

`rigctl report` gives each electrode's firing rate and the network bursts found by the ISI_N method of
Bakkum et al., "Parameters for burst detection", Front. Comput. Neurosci. 7:193 (2014): on the spike
train of the whole array, a burst is a run in which every N consecutive spikes fall within `isi_n_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from rigctl.config import spec
from rigctl.engine import PlannedTrial, Protocol, ProtocolConfig, TrialField
from rigctl.protocol import common_values, parse_file
from rigctl.protocol_schema import ProtocolFile
from rigctl.yamlcheck import LocatedDoc

KIND = "spontaneous"


class SpontaneousFile(ProtocolFile):
    """What a `kind: spontaneous` file may say (no stimulation: every spike is kept)."""

    kind: Literal["spontaneous"] = KIND
    duration_s: float = spec(600.0, ge=1.0, le=7 * 86400.0, about="seconds recorded")
    raw: Literal["all", "none"] = "none"
    spikes: Literal["all"] = "all"
    burst_n: int = spec(50, ge=2, le=10000, about="N of ISI_N: spikes in a burst's window")
    burst_isi_n_ms: float = spec(25.0, ge=1.0, le=10000.0, about="ms within which N consecutive spikes fall in a "
                                                                 "burst")
    burst_min_electrodes: int = spec(8, ge=1, le=4096, about="electrodes a network burst must involve")


@dataclass(frozen=True)
class SpontaneousConfig(ProtocolConfig):
    KIND: ClassVar[str] = KIND
    NOT_IN_FILE: ClassVar[tuple[str, ...]] = ("source_file", "sessions")  # always one session

    duration_s: float
    burst_n: int
    burst_isi_n_ms: float
    burst_min_electrodes: int

    def make_protocol(self, seed: int, sample_rate_hz: float) -> "Spontaneous":
        return Spontaneous(self, sample_rate_hz)

    def describe(self, plan: "Spontaneous") -> list[str]:
        return [f"{self.name}: {self.duration_s:g} s of recording without stimulation (after a "
                f"{self.first_trial_s:g} s lead-in); raw: {self.raw}; bursts: ISI_N with N = {self.burst_n}, "
                f"{self.burst_isi_n_ms:g} ms, >= {self.burst_min_electrodes} electrodes"]


class Spontaneous(Protocol):
    """No trials: the loop records until `record_until`."""

    def __init__(self, config: SpontaneousConfig, sample_rate_hz: float):
        self.config = config
        self.sample_rate_hz = sample_rate_hz

    @property
    def n_trials(self) -> int:
        return 0

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return ()

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial | None:
        raise IndexError("a spontaneous recording has no trials")

    @property
    def record_until(self) -> int:
        return int(round((self.config.first_trial_s + self.config.duration_s) * self.sample_rate_hz))


def load(doc: LocatedDoc, path: Path) -> SpontaneousConfig:
    top = parse_file(SpontaneousFile, doc)
    common = common_values(doc, top, path, None)
    return SpontaneousConfig(**common, sessions=1, duration_s=top.duration_s, burst_n=top.burst_n,
                             burst_isi_n_ms=top.burst_isi_n_ms, burst_min_electrodes=top.burst_min_electrodes)
