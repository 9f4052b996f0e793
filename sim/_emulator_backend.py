"""What a device emulator needs from the simulated culture behind it, and the glue that lets a
stimulator emulator (which serves no data) hand its pulses to a culture that someone else reads.

`Backend` is satisfied by `rigctl.sim.rig.SimRig`. `StimulusBus` wraps a backend so that pulses a
device emulator produces are handed to the culture lazily, just before the read that reaches them:
an abort that arrives before then really cancels them, as on the device.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol, runtime_checkable

from rigctl.drivers.base import Amplifier
from rigctl.layout import ElectrodeLayout
from rigctl.types import Chunk, StimCommand


@runtime_checkable
class Backend(Protocol):
    """A simulated culture seen as an amplifier that also accepts pulses (SimRig is one)."""

    @property
    def sample_rate_hz(self) -> float: ...

    @property
    def n_channels(self) -> int: ...

    @property
    def layout(self) -> ElectrodeLayout: ...

    @property
    def uV_per_bit(self) -> float: ...

    @property
    def now_sample(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self) -> Chunk: ...

    def schedule(self, command: StimCommand) -> None: ...


class StimulusBus(Amplifier):
    """The culture's amplifier as the loop sees it, with device emulators' pulses delivered on time.

    Emulators register `advance(until_sample)` hooks; before each read the bus calls them with the end
    of the coming chunk plus `horizon_s` (the culture simulates a little past each chunk), and they hand
    the culture every pulse with an onset before that.
    """

    def __init__(self, backend: Backend, horizon_s: float = 0.05):
        self.backend = backend
        self.horizon_samples = max(0, int(round(horizon_s * backend.sample_rate_hz)))
        self._hooks: list[Callable[[int], None]] = []
        self.lock = threading.RLock()  # held while the backend reads or is stimulated

    def add_hook(self, advance: Callable[[int], None]) -> None:
        self._hooks.append(advance)

    def remove_hook(self, advance: Callable[[int], None]) -> None:
        if advance in self._hooks:
            self._hooks.remove(advance)

    def commit_horizon(self) -> int:
        """Pulses with an onset before this sample must be with the culture before its next read."""
        return self.backend.now_sample + self.chunk_samples + self.horizon_samples

    def deliver_until(self, until_sample: int) -> None:
        for hook in list(self._hooks):
            hook(until_sample)

    def schedule(self, command: StimCommand) -> None:
        with self.lock:
            self.backend.schedule(command)

    @property
    def now_sample(self) -> int:
        return self.backend.now_sample

    @property
    def chunk_samples(self) -> int:
        return int(getattr(self.backend, "chunk_samples", 0))

    # ---- Amplifier -----------------------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self.backend.sample_rate_hz

    @property
    def n_channels(self) -> int:
        return self.backend.n_channels

    @property
    def layout(self) -> ElectrodeLayout:
        return self.backend.layout

    @property
    def uV_per_bit(self) -> float:
        return self.backend.uV_per_bit

    def start(self) -> None:
        self.backend.start()

    def stop(self) -> None:
        self.backend.stop()

    def read(self) -> Chunk:
        self.deliver_until(self.commit_horizon())
        with self.lock:
            return self.backend.read()

    @property
    def can_skip(self) -> bool:
        return bool(getattr(self.backend, "can_skip", False))

    def skip_to(self, sample: int) -> None:
        self.deliver_until(sample)
        with self.lock:
            self.backend.skip_to(sample)
