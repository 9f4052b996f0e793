"""The two interfaces every rig implements. Drivers translate; they hold no protocol logic or DSP.

Safety is not the driver's job: the core wraps every Stimulator in `rigctl.safety.GuardedStimulator`,
which checks each command against the rig's limits before the driver sees it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from rigctl.layout import ElectrodeLayout
from rigctl.types import BiphasicPulse, Chunk, StimCommand


class Amplifier(ABC):
    """A source of sample chunks stamped with the amplifier's own sample index."""

    @property
    @abstractmethod
    def sample_rate_hz(self) -> float: ...

    @property
    @abstractmethod
    def n_channels(self) -> int: ...

    @property
    @abstractmethod
    def layout(self) -> ElectrodeLayout: ...

    @property
    def uV_per_bit(self) -> float:
        return 0.195

    @abstractmethod
    def start(self) -> None:
        """Begin acquisition (idempotent)."""

    @abstractmethod
    def stop(self) -> None:
        """End acquisition and release the device (idempotent)."""

    @abstractmethod
    def read(self) -> Chunk:
        """Block until the next chunk is available and return it. Chunks are contiguous."""

    @property
    def can_skip(self) -> bool:
        """True if `skip_to` may jump over samples nobody records (simulated rigs only)."""
        return False

    def skip_to(self, sample: int) -> None:
        """Advance the source to `sample` without producing chunks. Only where `can_skip`."""
        raise NotImplementedError(f"{type(self).__name__} cannot skip samples")

    @property
    def can_batch(self) -> bool:
        """True if `read_samples` may return a chunk of any length (simulated rigs: no device latency, and a
        chunk's fixed cost is what bounds their speed)."""
        return False

    def read_samples(self, n_samples: int) -> Chunk:
        """The next `n_samples` samples as one chunk. Only where `can_batch`."""
        raise NotImplementedError(f"{type(self).__name__} reads chunks of its own size")


class Stimulator(ABC):
    """A device that delivers biphasic pulses at amplifier sample indices."""

    @abstractmethod
    def schedule(self, command: StimCommand) -> None:
        """Queue `command` for delivery at `command.sample` (already checked by the safety layer)."""

    def on_chunk(self, end_sample: int) -> None:
        """Called by the loop after every chunk with the amplifier clock (one past the last sample read).

        Drivers whose device cannot schedule by sample index fire due commands here (or arm the device's
        own delay, e.g. a train delay, from `command.sample - end_sample`). Default: nothing.
        """

    def check_deliverable(self, command: StimCommand) -> None:
        """Raise DeviceError if the device cannot deliver `command` as given (unit, timing grid, wiring).

        The safety layer calls this for every command of a plan before the first pulse is sent, so an
        undeliverable protocol is refused before anything is stored or stimulated. Default: any command."""

    def delivered_pulse(self, pulse: BiphasicPulse) -> BiphasicPulse:
        """What reaches the electrodes when `pulse` is commanded (a DAC may round it); the safety limits
        are checked on both. Default: the pulse as commanded."""
        return pulse

    @abstractmethod
    def abort(self) -> None:
        """Cancel every queued and running pulse."""

    @abstractmethod
    def safe_state(self) -> None:
        """Abort and leave outputs at rest (0 V / 0 µA, disconnected where possible). Never raises."""

    def close(self) -> None:
        """Release the device; default: go to the safe state."""
        self.safe_state()
