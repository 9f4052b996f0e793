"""Shared hardware-in-the-loop harness: the same protocol on the direct simulated rig and through a rig
file's drivers and emulators (both over the fake culture), for tests to compare."""

from __future__ import annotations

from pathlib import Path

from fakes import fake_sim_rig
from rigctl.rigs import Rig, open_rig
from rigctl.safety import SafetyLimits
from rigctl.session import RunOptions, start_run
from rigctl.store import read_stims, read_trials

RIGS = Path(__file__).resolve().parents[1] / "rigs"


class NoSkip:
    """The direct rig, but reading through the rests like a real amplifier must."""

    def __init__(self, rig):
        self.rig = rig

    def __getattr__(self, name):
        return getattr(self.rig, name)

    @property
    def can_skip(self) -> bool:
        return False


def fake_backend(*, sample_rate_hz, seed, mode, drug, chunk_ms, realtime):  # noqa: ARG001
    return fake_sim_rig(seed, mode, chunk_ms)


def run_direct_and_via_rig_file(protocol: Path, rig_file: str, seed: int, tmp_path: Path, limits: SafetyLimits):
    """Returns (direct trials, HIL trials, direct stims, HIL stims, the rig files' opened Rig objects)."""

    def direct_factory(spec, *, seed, drug="none", realtime=False, chunk_ms=None):  # noqa: ARG001
        rig = fake_sim_rig(seed, "voltage", chunk_ms)
        return Rig(NoSkip(rig), rig, limits, {"kind": "sim", "mode": "voltage"}, closers=[rig.stop])

    direct = start_run(str(protocol), RunOptions(rig="sim", seed=seed, progress=False), tmp_path / "direct",
                       rig_factory=direct_factory)
    opened = []

    def via_wire(spec, **kw):
        rig = open_rig(spec, backend_factory=fake_backend, **kw)
        opened.append(rig)
        return rig

    hil = start_run(str(protocol), RunOptions(rig=str(RIGS / rig_file), seed=seed, progress=False),
                    tmp_path / "hil", rig_factory=via_wire)
    return read_trials(direct), read_trials(hil), read_stims(direct), read_stims(hil), opened
