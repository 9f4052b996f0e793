"""A lab's own protocol, outside rigctl: paired-pulse stimulation (docs/protocols.md walks through it).

Each pair is two identical pulses on one electrode `interval_ms` apart, pairs `pair_isi_s` apart. Every
pulse is a trial (fields `pair` and `pulse_in_pair`), so the paired-pulse ratio of any electrode is its
mean count after pulse 2 over that after pulse 1: `rigctl export trials RUN_DIR` has both.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigctl.engine import PlannedTrial, Protocol, TrialField
from rigctl.types import BiphasicPulse, StimCommand


class PairedPulse(Protocol):
    @dataclass(frozen=True)
    class Params:
        """What the YAML's `params:` may say; a wrong name or type is reported at that line."""

        electrode: int = 9
        pairs: int = 20
        interval_ms: float = 50.0
        pair_isi_s: float = 2.0
        amplitude_mV: float = 800.0
        phase_us: float = 200.0

        def __post_init__(self):
            if not 0 <= self.electrode < 4096:
                raise ValueError(f"electrode={self.electrode}; allowed: 0 to 4095")
            if not 1 <= self.pairs <= 10000:
                raise ValueError(f"pairs={self.pairs}; allowed: 1 to 10000")
            if not 20.0 <= self.interval_ms <= 1000.0 * self.pair_isi_s / 2:
                raise ValueError(f"interval_ms={self.interval_ms}; allowed: 20 to half of pair_isi_s")

    def __init__(self, config, seed: int, sample_rate_hz: float):
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        self.params = config.params
        p = self.params
        self.pulse = BiphasicPulse.symmetric(p.amplitude_mV, p.phase_us, unit="mV")

    @property
    def n_trials(self) -> int:
        return 2 * self.params.pairs

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("pair", "<i4"), TrialField("pulse_in_pair", "u1"))

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial:
        p = self.params
        pair, second = divmod(index, 2)
        t = self.config.first_trial_s + pair * p.pair_isi_s + second * p.interval_ms / 1000.0
        sample = int(round(t * self.sample_rate_hz))
        return PlannedTrial(index, 1, index + 1, sample, StimCommand(sample, (p.electrode,), self.pulse),
                            {"pair": pair + 1, "pulse_in_pair": second + 1},
                            last_in_session=index + 1 == self.n_trials)
