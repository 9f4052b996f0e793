"""Signal path: filter, artifact blanking, spike detection."""

from rigctl.signal.path import SignalConfig, SignalPath

__all__ = ["SignalConfig", "SignalPath"]
