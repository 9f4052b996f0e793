"""Device drivers behind two small interfaces, `Amplifier` and `Stimulator`."""

from rigctl.drivers.base import Amplifier, Stimulator

__all__ = ["Amplifier", "Stimulator"]
