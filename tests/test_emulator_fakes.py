"""Shared by the emulator and driver tests (no tests here): deterministic backends with a hand-moved clock."""

from __future__ import annotations

import numpy as np

from rigctl.layout import ElectrodeLayout
from rigctl.types import Chunk, StimCommand


class ClockBackend:
    """A culture stand-in: `now_sample` moves only when a test reads; pulses are recorded, not simulated.

    Chunks hold a deterministic ramp per channel (value = (sample * 7 + channel * 131) % 2001 - 1000) so a
    test can check every sample that crosses a wire; `spikes_every` adds one spike event per channel at
    samples that are multiples of it (events mode, `n_channels_data=0`).
    """

    def __init__(self, sample_rate_hz: float = 25000.0, chunk_samples: int = 1250, n_electrodes: int = 16,
                 n_channels_data: int | None = None, spikes_every: int = 0):
        self.sample_rate_hz = sample_rate_hz
        self.chunk_samples = chunk_samples
        self.layout = ElectrodeLayout.grid(4, n_electrodes // 4, 200.0)
        self.n_channels = n_electrodes
        self.n_data = n_electrodes if n_channels_data is None else n_channels_data
        self.uV_per_bit = 0.195
        self.now_sample = 0
        self.got: list[StimCommand] = []
        self.spikes_every = spikes_every
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def schedule(self, command: StimCommand) -> None:
        if command.sample < self.now_sample:
            raise ValueError(f"pulse at {command.sample} is in the past (now {self.now_sample})")
        self.got.append(command)

    @staticmethod
    def ramp(first: int, n: int, n_channels: int) -> np.ndarray:
        t = np.arange(first, first + n, dtype=np.int64)[:, None]
        ch = np.arange(n_channels, dtype=np.int64)[None, :]
        return ((t * 7 + ch * 131) % 2001 - 1000).astype(np.int16)

    def read(self) -> Chunk:
        first, n = self.now_sample, self.chunk_samples
        self.now_sample += n
        spikes = None
        if self.spikes_every:
            from rigctl.types import SpikeEvents
            s = np.arange(((first + self.spikes_every - 1) // self.spikes_every) * self.spikes_every,
                          first + n, self.spikes_every, dtype=np.int64)
            ss = np.repeat(s, self.n_channels)
            cc = np.tile(np.arange(self.n_channels, dtype=np.int32), len(s))
            spikes = SpikeEvents(ss, cc, np.full(len(ss), -50.0, np.float32))
        return Chunk(first, self.ramp(first, n, self.n_data), self.uV_per_bit, self.sample_rate_hz, spikes=spikes)
