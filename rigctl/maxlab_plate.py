"""A plate on a MaxTwo: one MaxLab server for the whole plate, one driver per well (`--rig rigs/maxtwo_sim.yaml`).

Plate well k (in the plate's well order: A1, B1, ...) is MaxTwo well k: its driver reads that well's stream
columns (k x channels_per_well + the rig file's `channels`) and addresses that well's 32 stimulation units.
A real MaxTwo holds a culture per well that the rig does not configure; with `host: emulate` the emulator
stands in for the plate, so it takes each well's culture (seed, drug) from the plate file: well k is the
simulated culture `sim_backend(seed, drug)` of plate well k, at MaxLab's 20 kHz. Part of the composition root
(it may start the emulator, which imports `rigctl.sim`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rigctl import rigfile
from rigctl.drivers import _maxlab_wire as mw
from rigctl.rig_schema import EMULATE, MaxLabAmplifier
from rigctl.rigs import Rig
from rigctl.yamlcheck import load_located

UNITS_PER_WELL = mw.N_STIM_UNITS  # each well's chip: at most this many electrodes in one pulse


def maxlab_wells(path: str | Path) -> int | None:
    """The wells of a rig file's MaxLab amplifier, None for any other rig file (one-line RigFileError if bad)."""
    doc = load_located(Path(path), error=rigfile.RigFileError)
    rig = rigfile.parse_rig(doc)
    return rig.amplifier.wells if isinstance(rig.amplifier, MaxLabAmplifier) else None


class MaxLabPlate:
    """The server (its emulator, with `host: emulate`, started here) and `open_well(k)` -> well k's Rig.

    `cultures[k]` = (seed, drug) of plate well k; `readers` = how many wells will subscribe to the stream (the
    accelerated emulator publishes once all have, so every well's sample 0 is the same frame)."""

    def __init__(self, path: str | Path, cultures: list[tuple[int, str]], *, readers: int, realtime: bool = False,
                 chunk_ms: float | None = None, backend_factory: Callable[..., Any] | None = None):
        doc = load_located(Path(path), error=rigfile.RigFileError)
        self.file = rigfile.parse_rig(doc)
        sec = self.file.amplifier
        assert isinstance(sec, MaxLabAmplifier), "maxlab_wells() says which rig files are MaxLab"
        self.sec = sec
        self.ctx = rigfile.Ctx(doc, cultures[0][0] if cultures else 0, "none", realtime, chunk_ms,
                               backend_factory or rigfile.sim_backend, emulators=[])
        rigfile.check_maxlab_channels(self.ctx, sec, sec.channels_per_well)
        self.electrodes = sec.electrodes
        self.address = (sec.host, sec.command_port, sec.data_port)
        self._drivers: dict[int, Any] = {}
        self.emulator = None
        if sec.host == EMULATE:
            self._emulate(cultures, readers)

    def _emulate(self, cultures: list[tuple[int, str]], readers: int) -> None:
        from rigctl.sim._emulator_backend import StimulusBus
        from rigctl.sim.maxlab_emulator import default_electrodes

        ctx = self.ctx
        buses = [StimulusBus(ctx.backend_factory(sample_rate_hz=mw.SAMPLE_RATE_HZ, seed=seed, mode="voltage",
                                                 drug=drug, chunk_ms=ctx.chunk_ms, realtime=ctx.realtime))
                 for seed, drug in cultures]
        n = buses[0].n_channels
        if len(self.sec.channels) != n:
            raise ctx.fail("amplifier.channels", f"{len(self.sec.channels)} channels",
                           f"{n}, one per electrode of the simulated culture")
        self.electrodes = self.electrodes or default_electrodes(n)

        def clock(k: int) -> Callable[[], int | None]:
            return lambda: self._drivers[k].frame_clock if k in self._drivers else None

        self.emulator = rigfile.start_maxlab_emulator(ctx, self.sec, buses, self.electrodes,
                                                      [clock(k) for k in range(len(buses))], subscribers=readers)
        self._buses = buses
        self.address = ("127.0.0.1", self.emulator.command_port, self.emulator.data_port)

    def open_well(self, k: int) -> Rig:
        """Well k's driver (amplifier and stimulator) with the rig file's limits; closing it leaves the server."""
        sec = self.sec
        columns = [k * sec.channels_per_well + c for c in sec.channels]
        drv, amp_desc = rigfile.open_maxlab_driver(self.ctx, sec, self.address, columns, self.electrodes, well=k)
        self._drivers[k] = drv
        limits = rigfile.rig_limits(self.ctx.doc, self.file, drv.n_channels)
        desc = {"kind": "rigfile", "path": str(self.ctx.doc.path), "name": self.file.name or self.ctx.doc.path.stem,
                "mode": "voltage", "sample_rate_hz": drv.sample_rate_hz, "well": k, "realtime": self.ctx.realtime,
                "amplifier": amp_desc, "stimulator": {"driver": "maxlab", "dac_lsb_mV": drv.lsb_mV},
                "layout": drv.layout.to_dict()}
        return Rig(drv, drv, limits, desc, closers=[drv.close], emulators=self.ctx.emulators)

    def close(self) -> None:
        for drv in self._drivers.values():
            drv.close()
        if self.emulator is not None:
            self.emulator.close()
            for bus in self._buses:
                bus.stop()
