"""Shapes the simulated rig draws into voltage traces: extracellular spikes and stimulus artifacts.

Used by the rig's renderer and by the signal-path tests' ground-truth generator, so both agree. The spike
shape is the signal path's matched-filter template (`rigctl.signal.template`), re-exported here.
"""

from __future__ import annotations

import numpy as np

from rigctl.signal.template import SPIKE_POST_MS, SPIKE_PRE_MS, spike_template

__all__ = ["SPIKE_POST_MS", "SPIKE_PRE_MS", "artifact_waveform", "spike_template"]


def artifact_waveform(sample_rate_hz: float, pulse_duration_us: float, peak_uV: float,
                      saturate_uV: float) -> np.ndarray:
    """Voltage seen at an electrode after a pulse at t=0: clipped during the pulse, then recovering.

    Three parts: the pulse itself (flat at +/-`peak_uV`, clipped to `saturate_uV`, first phase
    negative), the amplifier's blocking during the pulse plus 100 µs, and an exponential recovery
    with a fast (0.2 ms) and a slow (1 ms) component of 10 % and 2 % of the peak.
    """
    dt_us = 1e6 / sample_rate_hz
    n_pulse = max(1, int(np.ceil((pulse_duration_us + 100.0) / dt_us)))
    n_tail = int(np.ceil(6000.0 / dt_us))
    half = max(1, n_pulse // 2)
    out = np.empty(n_pulse + n_tail, np.float32)
    peak = min(peak_uV, saturate_uV)
    out[:half] = -peak
    out[half:n_pulse] = peak
    t_ms = np.arange(1, n_tail + 1) * dt_us / 1000.0
    out[n_pulse:] = peak * (0.10 * np.exp(-t_ms / 0.2) + 0.02 * np.exp(-t_ms / 1.0))
    return out
