"""Data that labs can open: NWB export, SpikeInterface/probeinterface views of a run, foreign recordings.

Core layer (never imports `rigctl.sim` or the composition root). The optional libraries (pynwb,
spikeinterface, probeinterface) are imported only inside the modules that need them, through
`require`, so `import rigctl.interop` works without the extras and a missing extra is one line naming
the `pip install` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rigctl.errors import RigctlError

EXTRAS = {"pynwb": "nwb", "hdmf": "nwb", "nwbinspector": "nwb", "spikeinterface": "spikeinterface",
          "probeinterface": "spikeinterface"}


class MissingExtraError(RigctlError):
    """An optional library is not installed; the message names the extra that brings it."""


class InteropError(RigctlError):
    """A file to export, read or play back is missing, unreadable or in a format we do not read."""


def require(module: str) -> ModuleType:
    """Import an optional library, or raise MissingExtraError naming `pip install 'rigctl[EXTRA]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingExtraError(f"{top} is not installed ({exc}); run: pip install 'rigctl[{extra}]'") from None
