"""Playback amplifier: replays a recording (int16 array or raw interleaved file) as chunks.

Like Intan RHX's playback mode: the same Amplifier interface as hardware, for benchmarks, offline
detection (`rigctl detect`) and rehearsing a loop on data a lab already has.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rigctl.drivers.base import Amplifier
from rigctl.errors import DeviceError
from rigctl.layout import ElectrodeLayout
from rigctl.types import Chunk


class PlaybackAmplifier(Amplifier):
    """Serves `samples` (int16 [n, channels]) in chunks of `chunk_samples`; loops if `loop`."""

    def __init__(self, samples: np.ndarray, sample_rate_hz: float, chunk_samples: int, uV_per_bit: float = 0.195,
                 loop: bool = False, realtime: bool = False, layout: ElectrodeLayout | None = None):
        if samples.ndim != 2 or samples.dtype != np.int16:
            raise DeviceError(f"playback needs int16 [n_samples, n_channels], got {samples.dtype} {samples.shape}")
        if chunk_samples < 1:
            raise DeviceError(f"chunk_samples must be >= 1, got {chunk_samples}")
        self._data = samples
        self._rate = float(sample_rate_hz)
        self._uV = float(uV_per_bit)
        self.chunk_samples = int(chunk_samples)
        self.loop = loop
        self.realtime = realtime
        n = samples.shape[1]
        side = int(np.ceil(np.sqrt(n)))
        self._layout = layout or ElectrodeLayout(ElectrodeLayout.grid(side, side).positions_um[:n],
                                                 tuple(f"ch{i}" for i in range(n)))
        self._now = 0
        self._wall0 = 0.0

    @staticmethod
    def from_file(path: Path, n_channels: int, sample_rate_hz: float, chunk_samples: int,
                  uV_per_bit: float = 0.195) -> "PlaybackAmplifier":
        path = Path(path)
        if not path.exists():
            raise DeviceError(f"{path}: no such file")
        size = path.stat().st_size
        if size % (2 * n_channels):
            raise DeviceError(f"{path}: {size} bytes is not a whole number of int16 frames of {n_channels} channels")
        data = np.memmap(path, dtype="<i2", mode="r").reshape(-1, n_channels)
        return PlaybackAmplifier(data, sample_rate_hz, chunk_samples, uV_per_bit)

    @property
    def sample_rate_hz(self) -> float:
        return self._rate

    @property
    def n_channels(self) -> int:
        return self._data.shape[1]

    @property
    def layout(self) -> ElectrodeLayout:
        return self._layout

    @property
    def uV_per_bit(self) -> float:
        return self._uV

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._now >= self._data.shape[0]

    def start(self) -> None:
        self._wall0 = time.monotonic() - self._now / self._rate

    def stop(self) -> None:
        pass

    def read(self) -> Chunk:
        total = self._data.shape[0]
        if self.exhausted:
            raise DeviceError("playback: end of recording")
        pos = self._now % total if self.loop else self._now
        n = self.chunk_samples if self.loop else min(self.chunk_samples, total - pos)
        if pos + n <= total:
            block = np.asarray(self._data[pos:pos + n])
        else:
            block = np.concatenate([self._data[pos:], self._data[:pos + n - total]])
        if self.realtime:
            delay = self._wall0 + (self._now + n) / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing to the wall clock is the point of real-time playback
        chunk = Chunk(self._now, block, self._uV, self._rate)
        self._now += n
        return chunk
