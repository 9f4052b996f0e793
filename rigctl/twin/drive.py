"""Drive a simulated culture through one released culture's stimulus sequence (spec 1.2-1.4) and count
per-electrode evoked events, in the released data's column order.

The protocol (stimulating electrodes, pulse, 1-s ISI, 244-s rest, 10-30 ms window) is read from the
library protocol `isomura2023_bss`, as `rigctl run` uses it; the loop is the one of bench/bss_insilico.py:
stimulate, advance to the end of the window, count detectable electrode events (`ElectrodeProjection`)
10-30 ms after the pulse, advance to the next step; `fast_forward` through the rest between sessions.

Column mapping (spec 1.4): data columns 33-64 (0-based 32..63) are o1..o32 -> the protocol's stimulating
electrodes in order (group A = o1..o16, group B = o17..o32); data columns 1-32 (0-based 0..31) are the 32
record-only electrodes in row-major order. The true positions of the culture's record-only electrodes are
unknown, so the scoring compares them without position (`rigctl.model.twin_score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.layout import ElectrodeLayout
from rigctl.protocol import BssProtocol, load_protocol
from rigctl.sim.culture import Culture, CultureConfig
from rigctl.sim.projection import ElectrodeProjection
from rigctl.types import BiphasicPulse

PROTOCOL = "isomura2023_bss"
PITCH_UM = 200.0  # as bench/bss_insilico.py and the simulated rig's default grid
SAMPLE_RATE_HZ = 25000.0
#: Released condition tag -> the simulated culture's drug (spec 1.5).
DRUG_BY_CONDITION = {"bic": "bicuculline", "dzp": "diazepam", "mix0": "none", "mix50": "none"}


@dataclass(frozen=True)
class Setup:
    """The fixed part of the experiment: protocol constants and the electrode <-> data-column map."""

    stim: np.ndarray  # [32] electrode of o1..o32 (= data columns 33..64)
    record: np.ndarray  # [32] record-only electrodes, row-major (= data columns 1..32)
    pulse: BiphasicPulse
    isi_s: float
    rest_s: float
    window_ms: tuple[float, float]
    first_trial_s: float

    @property
    def column_electrode(self) -> np.ndarray:
        """Electrode of each data column (0-based columns 0..63)."""
        return np.concatenate([self.record, self.stim])


def default_setup() -> Setup:
    proto = load_protocol(PROTOCOL)
    assert isinstance(proto, BssProtocol)
    stim = np.array(proto.stim_electrodes, dtype=np.int64)
    record = np.array([e for e in range(64) if e not in set(stim.tolist())], dtype=np.int64)
    return Setup(stim, record, proto.pulse, proto.isi_s, proto.rest_s, tuple(proto.response_window_ms),
               proto.first_trial_s)


def scaled(pulse: BiphasicPulse, factor: float) -> BiphasicPulse:
    return BiphasicPulse(pulse.phase1_amplitude * factor, pulse.phase1_us, pulse.phase2_amplitude * factor,
                         pulse.phase2_us, pulse.interphase_us, pulse.unit)


def simulate(o_session: np.ndarray, sessions: int, drug: str, config: CultureConfig | None,
             efficacy: tuple[float, float] = (1.0, 1.0), seed: int = 0, setup: Setup | None = None,
             sample_rate_hz: float = SAMPLE_RATE_HZ) -> np.ndarray:
    """Counts uint8-range int32 [sessions * n, 64] in data-column order for the n-step stimulus sequence
    `o_session` [n, 32] repeated `sessions` times. Group A pulses are scaled by efficacy[0], group B by
    efficacy[1] (one `stimulate` call per group at the same sample; the culture merges them)."""
    rig = setup or default_setup()
    layout = ElectrodeLayout.grid(8, 8, PITCH_UM)
    culture = Culture(layout, sample_rate_hz, seed, drug=drug, config=config)
    proj = ElectrodeProjection(layout, culture.neuron_positions_um, seed)
    half = len(rig.stim) // 2
    groups = [(rig.stim[:half], scaled(rig.pulse, efficacy[0]), slice(0, half)),
              (rig.stim[half:], scaled(rig.pulse, efficacy[1]), slice(half, None))]
    fs = float(sample_rate_hz)
    w0, w1 = int(round(rig.window_ms[0] * 1e-3 * fs)), int(round(rig.window_ms[1] * 1e-3 * fs))
    isi, rest = int(round(rig.isi_s * fs)), int(round(rig.rest_s * fs))
    col_of_electrode = np.empty(64, np.int64)
    col_of_electrode[rig.column_electrode] = np.arange(64)
    o_session = np.asarray(o_session).astype(bool)
    n = o_session.shape[0]
    r = np.zeros((sessions * n, 64), np.int32)
    t = int(round(rig.first_trial_s * fs))
    for k in range(sessions):
        for i in range(n):
            for electrodes, pulse, sl in groups:
                el = electrodes[o_session[i, sl]]
                if el.size:
                    culture.stimulate(t, el.tolist(), pulse)
            sp, nr = culture.advance(t + w1)
            sel = sp >= t + w0
            ev = proj.detectable_events(sp[sel], nr[sel])
            r[k * n + i, col_of_electrode] = np.bincount(ev.channel, minlength=64)[:64]
            t += isi
            culture.advance(t)
        t += rest
        culture.fast_forward(t)
    return r
