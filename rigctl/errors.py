"""The named error hierarchy: callers catch the family they can handle, never bare Exception."""


class RigctlError(Exception):
    """Base of every error rigctl raises on purpose."""


class SafetyViolation(RigctlError):
    """A stimulation command broke a safety limit; it was rejected whole, nothing was sent."""


class DeviceError(RigctlError):
    """A device (or its emulator) failed: disconnect, timeout, garbage, or a refused command."""


class ProtocolError(RigctlError):
    """A protocol file or protocol state is invalid (names file, field, value and what is allowed)."""


class StoreError(RigctlError):
    """The session store is missing, corrupt, or would be overwritten."""


class ModelInputError(RigctlError):
    """Input to the free-energy model has the wrong shape, culture, or content."""


class LoopOverrun(RigctlError):
    """The real-time loop fell behind its budget in a mode where that is fatal."""


class SignalConfigError(RigctlError, ValueError):
    """A signal-path parameter is out of range (a ValueError too, as the path raised before it was declared)."""
