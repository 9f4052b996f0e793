"""Open a rig by name: the simulated rig (`sim`, `sim-events`) or a rig file (`rigs/<name>.yaml`).

`Rig` and `open_rig` live here, the one entry point for every kind of rig; `rigctl.rigfile` builds the
parts of a rig file and never imports this module. Part of the composition root (it may import
`rigctl.sim`; the layers below may not: tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rigctl import rigfile
from rigctl.drivers.base import Amplifier, Stimulator
from rigctl.errors import RigctlError
from rigctl.safety import SafetyLimits

SIM_RIGS = {"sim": "voltage", "sim-events": "events"}
# `--rig sim` not paced to the wall clock reads 50-ms chunks unless `--chunk-ms` says otherwise, as `sim-events`
# does; paced (`--realtime`) it keeps the simulated rig's own 10 ms, a device's latency. Every data file of a run
# (trials, spikes, stimuli, raw samples) is the same for any chunk size (tests/test_cli_run.py); a chunk's fixed
# cost (the culture's step, the render and signal-path calls, the loop) made 10-ms chunks ~1.5x slower.
SIM_VOLTAGE_BATCH_CHUNK_MS = 50.0
AGENT_RIGS = ("canonical",)
RIG_CHOICES = "sim, sim-events, canonical (the CB22 agent, for kind: maze), or a rig file (rigs/<name>.yaml)"


@dataclass
class Rig:
    """An amplifier, a stimulator, the rig's safety limits, and (simulated rigs) a checkpointable state."""

    amplifier: Amplifier | None  # None: an agent rig (make_agent)
    stimulator: Stimulator | None
    limits: SafetyLimits
    description: dict[str, Any]
    state: Any = None  # has get_state/set_state when the whole rig can be checkpointed and restored
    closers: list = field(default_factory=list)
    emulators: list = field(default_factory=list)  # emulated devices behind a rig file (tests inspect them)
    # an agent rig (no MEA): make_agent(seed, parameters) -> rigctl.tasks.agent.EpisodeAgent
    make_agent: Callable[..., Any] | None = None

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                pass


def open_rig(spec: str | Path, *, seed: int, drug: str = "none", realtime: bool = False,
             chunk_ms: float | None = None, backend_factory: Callable[..., Any] | None = None,
             sample_rate_hz: float = 25000.0) -> Rig:
    """`spec` is `sim`, `sim-events`, or the path of a rig YAML file (`rigctl.rigfile`).

    `backend_factory(sample_rate_hz=, seed=, mode=, drug=, chunk_ms=, realtime=)` makes the simulated rig
    (`sim`, `sim-events`) or the culture behind a rig file's emulated devices; default
    `rigctl.rigfile.sim_backend` (SimRig). `sample_rate_hz` is the simulated rig's (a rig file names its own).
    `canonical` is an agent rig: no amplifier or stimulator, an agent that plays a task's episodes.
    """
    if isinstance(spec, str) and spec in AGENT_RIGS:
        from rigctl.sim.canonical_rig import DESCRIPTION, make_canonical_agent

        desc = {"kind": spec, "mode": "agent", "agent": DESCRIPTION, "seed": seed}
        return Rig(None, None, SafetyLimits(), desc, make_agent=make_canonical_agent)
    if isinstance(spec, str) and spec in SIM_RIGS:
        factory = backend_factory or rigfile.sim_backend
        if chunk_ms is None and SIM_RIGS[spec] == "voltage" and not realtime:
            chunk_ms = SIM_VOLTAGE_BATCH_CHUNK_MS
        rig = factory(sample_rate_hz=sample_rate_hz, seed=seed, mode=SIM_RIGS[spec], drug=drug,
                      chunk_ms=chunk_ms, realtime=realtime)
        limits = SafetyLimits(n_electrodes=rig.n_channels)
        desc = {"kind": spec, "mode": rig.mode, "sample_rate_hz": rig.sample_rate_hz, "seed": seed,
                "drug": drug, "chunk_samples": rig.chunk_samples, "realtime": realtime,
                "layout": rig.layout.to_dict()}
        return Rig(rig, rig, limits, desc, state=rig, closers=[rig.stop])
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        parts = rigfile.build_rig_file(path, seed=seed, drug=drug, realtime=realtime, chunk_ms=chunk_ms,
                                       backend_factory=backend_factory)
        return Rig(parts.amplifier, parts.stimulator, parts.limits, parts.description, state=None,
                   closers=parts.closers, emulators=parts.emulators)
    raise RigctlError(f"--rig {spec!r}: allowed: {RIG_CHOICES}")
