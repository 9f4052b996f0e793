"""The spike shape the matched filter looks for (and the simulated rig draws, `rigctl.sim.waveforms`)."""

from __future__ import annotations

import numpy as np

SPIKE_PRE_MS = 0.6
SPIKE_POST_MS = 1.4


def spike_template(sample_rate_hz: float) -> tuple[np.ndarray, int]:
    """Extracellular action potential, trough normalised to -1; returns (waveform, trough index).

    A narrow negative trough (Na+ influx, ~0.15 ms half-width) followed by a broader positive
    repolarisation bump at ~+0.45 ms of 30 % of the trough, the typical shape on planar MEAs.
    """
    dt_ms = 1000.0 / sample_rate_hz
    n_pre = int(round(SPIKE_PRE_MS / dt_ms))
    n_post = int(round(SPIKE_POST_MS / dt_ms))
    t = (np.arange(-n_pre, n_post + 1)) * dt_ms
    trough = -np.exp(-0.5 * (t / 0.12) ** 2)
    bump = 0.30 * np.exp(-0.5 * ((t - 0.45) / 0.25) ** 2)
    wave = trough + bump
    wave -= np.linspace(wave[0], wave[-1], len(wave))  # start and end at zero
    wave /= -wave.min()
    return wave.astype(np.float32), n_pre
