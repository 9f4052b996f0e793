"""Rig files (`rigs/<name>.yaml`): which amplifier and stimulator drivers a rig uses, where they are,
how device channels map to rigctl electrodes, and the rig's safety limits.

A device address of `emulate` starts that device's emulator in this process, wired to one simulated
culture (SimRig) shared by every emulated device of the rig, so the same rig file runs
hardware-in-the-loop on a laptop and, with real ports filled in, on the bench. Errors name the file,
line, field, value and what is allowed.

`build_rig_file` builds the parts (`RigParts`); `rigctl.rigs.open_rig` puts them into a `Rig`. This module
never imports `rigctl.rigs` (tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from rigctl.config import located, parse
from rigctl.errors import RigctlError
from rigctl.rig_schema import (EMULATE, MaxLabAmplifier, MaxLabStimulator, OpenEphysAmplifier, PlaybackAmplifier, PulsePalStimulator, RhxAmplifier,
                               RhxStimulator, RigFile, SimAmplifier, rig_line)
from rigctl.safety import SafetyConfigError, SafetyLimits
from rigctl.yamlcheck import LocatedDoc, load_located


class RigFileError(RigctlError):
    """A rig file is missing, malformed, or names something this build or the device cannot do."""


@dataclass
class Ctx:
    """What the builders share while a rig is opened."""

    doc: LocatedDoc
    seed: int
    drug: str
    realtime: bool
    chunk_ms: float | None
    backend_factory: Callable[..., Any]
    backend: Any = None  # the simulated culture behind every emulated device (created on first need)
    bus: Any = None  # its StimulusBus
    amp_clock: Callable[[], int] | None = None  # the amplifier driver's read position (emulated combos)
    emulators: list | None = None  # emulators started for `emulate` addresses (exposed as rig.emulators)

    def fail(self, field: str, value: Any, allowed: str) -> RigFileError:
        text = repr(value)
        text = text if len(text) <= 80 else text[:79] + "…"
        return RigFileError(f"{self.doc.where(field)}: {field}={text}; allowed: {allowed}")

    def culture(self, sample_rate_hz: float, mode: str):
        """The one simulated culture of this rig (and its stimulus bus), made on first use."""
        from rigctl.sim._emulator_backend import StimulusBus

        if self.backend is None:
            self.backend = self.backend_factory(sample_rate_hz=sample_rate_hz, seed=self.seed, mode=mode,
                                                drug=self.drug, chunk_ms=self.chunk_ms, realtime=self.realtime)
            self.bus = StimulusBus(self.backend)
        return self.bus


def sim_backend(*, sample_rate_hz: float, seed: int, mode: str, drug: str, chunk_ms: float | None,
                realtime: bool):
    """The default `backend_factory`: rigctl's own simulated rig (SimRig), its kernels compiled before any
    emulator streams it (a first compile mid-stream is seconds of silence on the wire)."""
    from rigctl.sim.culture import compile_kernels
    from rigctl.sim.rig import SimRig

    compile_kernels()
    return SimRig(sample_rate_hz=sample_rate_hz, seed=seed, mode=mode, drug=drug, chunk_ms=chunk_ms,
                  realtime=realtime)


# ---- amplifiers ------------------------------------------------------------------------------------------
def _build_sim_amplifier(ctx: Ctx, sec: SimAmplifier, closers: list) -> tuple[Any, dict]:
    bus = ctx.culture(sec.sample_rate_hz, sec.mode)
    closers.append(bus.stop)
    ctx.amp_clock = lambda: int(bus.now_sample)
    return bus, {"driver": "sim", "mode": sec.mode, "sample_rate_hz": sec.sample_rate_hz}


# ---- stimulators -----------------------------------------------------------------------------------------
def _build_pulsepal(ctx: Ctx, sec: PulsePalStimulator, amp, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.pulsepal import PulsePal
    from rigctl.errors import DeviceError

    port, outputs, latency, gain = sec.port, sec.outputs, sec.trigger_latency_ms, sec.mV_per_volt
    bad = sorted(e for els in outputs.values() for e in els if e >= amp.n_channels)
    if bad:
        raise ctx.fail("stimulator.outputs", bad, f"electrodes 0..{amp.n_channels - 1} of the amplifier")
    desc = {"driver": "pulsepal", "port": port, "outputs": {k: list(v) for k, v in outputs.items()},
            "trigger_latency_ms": latency, "mV_per_volt": gain}
    if port == EMULATE:
        from rigctl.sim.pulsepal_emulator import PulsePalEmulator

        if ctx.bus is None:
            raise ctx.fail("stimulator.port", port, "a serial device when the amplifier is a real device "
                                                    "(an emulated stimulator needs an emulated culture to act on)")
        emu = PulsePalEmulator(ctx.bus, outputs, sample_rate_hz=amp.sample_rate_hz, clock=ctx.amp_clock,
                               mV_per_volt=gain).start()
        closers.append(emu.close)
        ctx.emulators.append(emu)
        port = emu.port
        desc["emulator_port"] = port
    try:
        drv = PulsePal(port, outputs, amp.sample_rate_hz, timeout_s=sec.timeout_s, trigger_latency_ms=latency,
                       mV_per_volt=gain, arm_ahead_ms=sec.arm_ahead_ms)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('stimulator.port')}: {exc}") from exc
    closers.insert(0, drv.close)  # the stimulator goes safe before anything else is torn down
    desc["firmware_version"] = drv.firmware_version
    return drv, desc


def _no_stimulator():
    from rigctl.drivers.base import Stimulator
    from rigctl.errors import DeviceError

    class NoStimulator(Stimulator):
        """`stimulator: {driver: none}`: a recording-only rig; any command is refused."""

        def schedule(self, command) -> None:
            raise DeviceError("this rig has no stimulator (rig file: stimulator.driver: none)")

        def check_deliverable(self, command) -> None:
            self.schedule(command)

        def abort(self) -> None:
            pass

        def safe_state(self) -> None:
            pass

    return NoStimulator()


def _build_rhx_amplifier(ctx: Ctx, sec: RhxAmplifier, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers import _rhx_wire as rw
    from rigctl.drivers.intan_rhx import IntanRHX
    from rigctl.errors import DeviceError

    host, port = sec.host, sec.command_port
    desc: dict[str, Any] = {"driver": "rhx", "host": host, "command_port": port, "mode": "voltage"}
    holder: list = []  # the driver, once made: an emulated controller paces itself to its reads
    if host == EMULATE:
        from rigctl.sim.rhx_emulator import RHXEmulator

        bus = ctx.culture(sec.emulator.sample_rate_hz, "voltage")
        names = list(sec.channels or rw.default_channel_names(bus.n_channels))
        if len(names) != bus.n_channels:
            raise ctx.fail("amplifier.channels", f"{len(names)} channels", f"{bus.n_channels}, one per electrode "
                                                                          "of the simulated culture")
        try:
            emu = RHXEmulator(bus, channel_names=names, step_uA=sec.emulator.step_uA, realtime=ctx.realtime,
                              clock=lambda: holder[0].stream_clock if holder else None).start()
        except ValueError as exc:
            raise RigFileError(f"{ctx.doc.where('amplifier.emulator')}: {exc}") from exc
        closers.append(emu.close)
        ctx.emulators.append(emu)
        host, port = "127.0.0.1", emu.command_port
        desc["emulator_command_port"] = port
    else:
        names = list(sec.channels or rw.default_channel_names(64))
    try:
        drv = IntanRHX(host, port, electrode_channels=names, timeout_s=sec.timeout_s,
                       blocks_per_write=sec.blocks_per_write, trigger_latency_ms=sec.trigger_latency_ms)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('amplifier.host')}: {exc}") from exc
    holder.append(drv)
    closers.insert(0, drv.close)
    ctx.amp_clock = lambda: int(drv.clock)
    desc.update({"channels": names, "controller_type": drv.controller_type, "version": drv.version,
                 "sample_rate_hz": drv.fs, "stim_step_uA": drv.step_uA})
    return drv, desc


def _build_openephys_amplifier(ctx: Ctx, sec: OpenEphysAmplifier, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.openephys import OpenEphysGUI
    from rigctl.errors import DeviceError

    host, port = sec.host, sec.http_port
    desc: dict[str, Any] = {"driver": "openephys", "host": host, "http_port": port, "mode": "voltage"}
    if host == EMULATE:
        from rigctl.sim.openephys_emulator import OpenEphysEmulator

        bus = ctx.culture(sec.emulator.sample_rate_hz, "voltage")
        emu = OpenEphysEmulator(bus, block_samples=sec.emulator.block_samples, realtime=ctx.realtime).start()
        closers.append(emu.close)
        ctx.emulators.append(emu)
        host, port = "127.0.0.1", emu.http_port
        desc["emulator_http_port"] = port
    try:
        drv = OpenEphysGUI(host, port, channels=sec.channels, stream=sec.stream, uV_per_bit=sec.uV_per_bit,
                           timeout_s=sec.timeout_s, record=sec.record)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('amplifier.host')}: {exc}") from exc
    closers.insert(0, drv.stop)
    ctx.amp_clock = lambda: int(drv.clock)
    desc.update({"stream": drv.stream, "sample_rate_hz": drv.fs, "data_port": drv.data_port,
                 "channels": drv.channels})
    return drv, desc


def _build_rhx_stimulator(ctx: Ctx, sec: RhxStimulator, amp, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.intan_rhx import IntanRHX

    if not isinstance(amp, IntanRHX):
        raise ctx.fail("stimulator.driver", "rhx", "rhx only together with amplifier.driver: rhx (the same controller)")
    return amp, {"driver": "rhx", "stim_step_uA": amp.step_uA}


def _build_maxlab_amplifier(ctx: Ctx, sec: MaxLabAmplifier, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers import _maxlab_wire as mw

    check_maxlab_channels(ctx, sec, sec.wells * sec.channels_per_well)
    holder: list = []
    host, port, data_port = sec.host, sec.command_port, sec.data_port
    electrodes = sec.electrodes
    if host == EMULATE:
        from rigctl.sim.maxlab_emulator import default_electrodes

        bus = ctx.culture(mw.SAMPLE_RATE_HZ, "voltage")
        if len(sec.channels) != bus.n_channels:
            raise ctx.fail("amplifier.channels", f"{len(sec.channels)} channels",
                           f"{bus.n_channels}, one per electrode of the simulated culture")
        electrodes = electrodes or default_electrodes(bus.n_channels)
        emu = start_maxlab_emulator(ctx, sec, bus, electrodes, lambda: holder[0].frame_clock if holder else None)
        closers.append(emu.close)
        host, port, data_port = "127.0.0.1", emu.command_port, emu.data_port
    drv, desc = open_maxlab_driver(ctx, sec, (host, port, data_port), list(sec.channels), electrodes)
    holder.append(drv)
    closers.insert(0, drv.close)
    ctx.amp_clock = lambda: int(drv.clock)
    return drv, desc


def check_maxlab_channels(ctx: Ctx, sec: MaxLabAmplifier, n_columns: int) -> None:
    """Every channel a stream column (`n_columns`: the stream's, or one well's for a plate), one MEA electrode each."""
    bad = [c for c in sec.channels if c >= n_columns]
    if bad:
        raise ctx.fail("amplifier.channels", bad[:8], f"stream columns 0..{n_columns - 1} "
                       + (f"({sec.wells} well(s) x {sec.channels_per_well} channels)"
                          if n_columns > sec.channels_per_well else "(one well's channels)"))
    if sec.electrodes is not None and len(sec.electrodes) != len(sec.channels):
        raise ctx.fail("amplifier.electrodes", f"{len(sec.electrodes)} electrodes",
                       f"{len(sec.channels)}, one MEA electrode per channel")


def start_maxlab_emulator(ctx: Ctx, sec: MaxLabAmplifier, cultures, electrodes: list[int], clock,
                          subscribers: int = 1):
    """MaxLab's server emulated on loopback: `cultures` one culture (MaxOne, or well 0 of a MaxTwo) or a list,
    one per well with `clock` a list of each well's reader position; started, and listed in `ctx.emulators`."""
    from rigctl.sim.maxlab_emulator import MaxLabEmulator

    try:
        emu = MaxLabEmulator(cultures, columns=sec.channels, electrodes=electrodes, wells=sec.wells,
                             channels_per_well=sec.channels_per_well, frames_per_message=sec.emulator.frames_per_message,
                             lsb_mV=sec.emulator.lsb_mV, seed=ctx.seed, realtime=ctx.realtime, clock=clock,
                             subscribers=subscribers).start()
    except ValueError as exc:
        raise RigFileError(f"{ctx.doc.where('amplifier.emulator')}: {exc}") from exc
    ctx.emulators.append(emu)
    return emu


def open_maxlab_driver(ctx: Ctx, sec: MaxLabAmplifier, address: tuple[str, int, int], columns: list[int],
                       electrodes: list[int] | None, well: int | None = None) -> tuple[Any, dict]:
    """The driver on (host, command port, data port) reading `columns`; with `well`, one well of a MaxTwo."""
    from rigctl.drivers.maxlab import MaxLab
    from rigctl.errors import DeviceError

    host, port, data_port = address
    desc: dict[str, Any] = {"driver": "maxlab", "host": sec.host, "command_port": sec.command_port,
                            "data_port": sec.data_port, "mode": "voltage"}
    if sec.host == EMULATE:
        desc.update({"emulator_command_port": port, "emulator_data_port": data_port})
    try:
        drv = MaxLab(host, port, channels=columns, electrodes=electrodes, wells=sec.wells,
                     channels_per_well=sec.channels_per_well, data_port=data_port, uV_per_unit=sec.uV_per_unit,
                     uV_per_bit=sec.uV_per_bit, chunk_ms=sec.chunk_ms, timeout_s=sec.timeout_s,
                     arm_ahead_ms=sec.arm_ahead_ms, trigger_latency_ms=sec.trigger_latency_ms, well=well)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('amplifier.host')}: {exc}") from exc
    desc.update({"channels": columns, "electrodes": electrodes, "wells": sec.wells,
                 "channels_per_well": sec.channels_per_well, "sample_rate_hz": drv.fs, "dac_lsb_mV": drv.lsb_mV})
    if well is not None:
        desc["well"] = well
    return drv, desc


def _build_maxlab_stimulator(ctx: Ctx, sec: MaxLabStimulator, amp, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.maxlab import MaxLab

    if not isinstance(amp, MaxLab):
        raise ctx.fail("stimulator.driver", "maxlab", "maxlab only together with amplifier.driver: maxlab (the "
                                                      "same server)")
    return amp, {"driver": "maxlab", "dac_lsb_mV": amp.lsb_mV}


def _build_playback_amplifier(ctx: Ctx, sec: PlaybackAmplifier, closers: list) -> tuple[Any, dict]:
    """`amplifier: {driver: playback, path: ...}`: another system's recording (rigctl.interop.recording) played
    chunk by chunk through the loop and signal path like a live amplifier; paths are relative to the rig file."""
    from rigctl.drivers.playback import PlaybackAmplifier as Playback
    from rigctl.interop.recording import RecordingFrames, open_recording
    from rigctl.interop.spikeinterface import layout_from_probe_file

    path = ctx.doc.path.parent / sec.path
    chunk_ms = sec.chunk_ms or ctx.chunk_ms or 10.0
    try:
        frames = RecordingFrames(open_recording(path, label="amplifier.path"))
    except RigctlError as exc:
        raise RigFileError(f"{ctx.doc.where('amplifier.path')}: {exc}") from None
    layout = frames.layout
    if sec.probe:
        try:
            layout = layout_from_probe_file(ctx.doc.path.parent / sec.probe)[0]
        except RigctlError as exc:
            raise RigFileError(f"{ctx.doc.where('amplifier.probe')}: {exc}") from None
    if layout.n_electrodes != frames.shape[1]:
        raise ctx.fail("amplifier.probe", sec.probe, f"a probe of {frames.shape[1]} contacts (the recording's channels)")
    amp = Playback(frames, frames.sample_rate_hz, max(1, round(chunk_ms * 1e-3 * frames.sample_rate_hz)),
                   frames.uV_per_bit, loop=sec.loop, realtime=ctx.realtime, layout=layout)
    return amp, {"driver": "playback", "path": str(path), "probe": sec.probe, "mode": "voltage"}


AMPLIFIER_BUILDERS: dict[str, Callable] = {"sim": _build_sim_amplifier, "rhx": _build_rhx_amplifier,
                                          "openephys": _build_openephys_amplifier, "maxlab": _build_maxlab_amplifier,
                                          "playback": _build_playback_amplifier}
STIMULATOR_BUILDERS: dict[str, Callable] = {"pulsepal": _build_pulsepal, "rhx": _build_rhx_stimulator,
                                            "maxlab": _build_maxlab_stimulator,
                                            "none": lambda ctx, sec, amp, closers: (_no_stimulator(), {"driver": "none"})}


# ---- entry point -------------------------------------------------------------------------------------------
def parse_rig(doc: LocatedDoc) -> RigFile:
    """The rig file's document validated against its model; the first problem as a one-line RigFileError."""
    return parse(RigFile, doc.data, located(doc, RigFileError, rig_line))


def rig_limits(doc: LocatedDoc, rig: RigFile, n_channels: int) -> SafetyLimits:
    """The rig file's `safety` section over the defaults; a bad value is a RigFileError naming its line."""
    safety = dict(rig.safety or {})
    safety.setdefault("n_electrodes", n_channels)
    try:
        return SafetyLimits.from_dict(safety)
    except SafetyConfigError as exc:
        field = next((k for k in safety if f"safety.{k}" in str(exc)), None)
        raise RigFileError(f"{doc.where('safety.' + field if field else 'safety')}: {exc}") from exc


class RigParts(NamedTuple):
    """What a rig file opens; `rigctl.rigs.open_rig` wraps it in a `Rig`."""

    amplifier: Any
    stimulator: Any
    limits: SafetyLimits
    description: dict[str, Any]
    closers: list  # close in this order (the stimulator goes safe first)
    emulators: list  # emulators started for `emulate` addresses (tests and `rigctl emulate` inspect them)


def build_rig_file(path: str | Path, *, seed: int, drug: str = "none", realtime: bool = False,
                   chunk_ms: float | None = None, backend_factory: Callable[..., Any] | None = None) -> RigParts:
    """Open the devices a rig file describes -> `RigParts` (amplifier, stimulator, limits, description,
    closers, emulators). `backend_factory` makes the simulated culture behind emulated devices
    (default `sim_backend`)."""
    doc = load_located(Path(path), error=RigFileError)
    rig = parse_rig(doc)
    ctx = Ctx(doc, seed, drug, realtime, chunk_ms, backend_factory or sim_backend, emulators=[])
    closers: list = []
    try:
        amp, amp_desc = AMPLIFIER_BUILDERS[rig.amplifier.driver](ctx, rig.amplifier, closers)
        stim, stim_desc = STIMULATOR_BUILDERS[rig.stimulator.driver](ctx, rig.stimulator, amp, closers)
        limits = rig_limits(doc, rig, amp.n_channels)
    except BaseException:
        for close in closers:
            try:
                close()
            except Exception:
                pass
        raise
    mode = amp_desc.get("mode", "voltage")
    desc = {"kind": "rigfile", "path": str(doc.path), "name": rig.name or doc.path.stem, "mode": mode,
            "sample_rate_hz": amp.sample_rate_hz, "seed": seed, "drug": drug, "realtime": realtime,
            "amplifier": amp_desc, "stimulator": stim_desc, "layout": amp.layout.to_dict()}
    return RigParts(amp, stim, limits, desc, closers, ctx.emulators)
