"""Open a rig by name: the simulated rig (`sim`, `sim-events`) or a rig file (`rigs/<name>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.errors import RigctlError
from rigctl.safety import SafetyLimits

SIM_RIGS = {"sim": "voltage", "sim-events": "events"}


@dataclass
class Rig:
    """An amplifier, a stimulator, the rig's safety limits, and (simulated rigs) a checkpointable state."""

    amplifier: Amplifier
    stimulator: Stimulator
    limits: SafetyLimits
    description: dict[str, Any]
    state: Any = None  # has get_state/set_state when the whole rig can be checkpointed and restored
    closers: list = field(default_factory=list)
    emulators: list = field(default_factory=list)  # emulated devices behind a rig file (tests inspect them)

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                pass


def open_rig(spec: str, *, seed: int, drug: str = "none", realtime: bool = False,
             chunk_ms: float | None = None, sample_rate_hz: float = 25000.0) -> Rig:
    """`spec` is `sim`, `sim-events`, or the path of a rig YAML file."""
    if spec in SIM_RIGS:
        from rigctl.sim.rig import SimRig

        rig = SimRig(sample_rate_hz=sample_rate_hz, seed=seed, mode=SIM_RIGS[spec], drug=drug,
                     chunk_ms=chunk_ms, realtime=realtime)
        limits = SafetyLimits(n_electrodes=rig.n_channels)
        desc = {"kind": spec, "mode": rig.mode, "sample_rate_hz": rig.sample_rate_hz, "seed": seed,
                "drug": drug, "chunk_samples": rig.chunk_samples, "realtime": realtime,
                "layout": rig.layout.to_dict()}
        return Rig(rig, rig, limits, desc, state=rig, closers=[rig.stop])
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        try:
            from rigctl.rigfile import open_rig as open_rig_file
        except ImportError as exc:  # pragma: no cover - rig files arrive with the drivers
            raise RigctlError(f"rig files are not supported in this build ({exc})") from exc
        return open_rig_file(path, seed=seed, drug=drug, realtime=realtime, chunk_ms=chunk_ms)
    raise RigctlError(f"--rig {spec!r}: allowed: sim, sim-events, or a rig file (rigs/<name>.yaml)")
