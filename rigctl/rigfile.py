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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from rigctl.errors import RigctlError
from rigctl.safety import SafetyConfigError, SafetyLimits
from rigctl.yamlcheck import LocatedDoc, load_located

EMULATE = "emulate"


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

    def get(self, section: dict, prefix: str, name: str, kind, default=None, required: bool = False,
            allowed: str = ""):
        field = f"{prefix}.{name}"
        if name not in section:
            if required:
                raise RigFileError(f"{self.doc.where(prefix)}: {field} is required ({allowed})")
            return default
        value = section[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) < 2**53 else math.inf
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise self.fail(field, value, allowed or f"a {getattr(kind, '__name__', kind)}")
        if kind is float and not math.isfinite(value):
            raise self.fail(field, value, f"a finite number ({allowed})" if allowed else "a finite number")
        if name == "timeout_s" and not 0 < value <= 60:
            raise self.fail(field, value, "seconds > 0 and <= 60")
        if name.endswith("_port") and not 0 <= value <= 65535:
            raise self.fail(field, value, "a TCP port 0-65535")
        return value

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
    """The default `backend_factory`: rigctl's own simulated rig (SimRig)."""
    from rigctl.sim.rig import SimRig

    return SimRig(sample_rate_hz=sample_rate_hz, seed=seed, mode=mode, drug=drug, chunk_ms=chunk_ms,
                  realtime=realtime)


def _check_keys(ctx: Ctx, section: dict, prefix: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise RigFileError(f"{ctx.doc.where(prefix + '.' + unknown[0])}: unknown field {prefix}.{unknown[0]}; "
                           f"allowed: {', '.join(allowed)}")


# ---- amplifiers ------------------------------------------------------------------------------------------
def _build_sim_amplifier(ctx: Ctx, sec: dict, closers: list) -> tuple[Any, dict]:
    _check_keys(ctx, sec, "amplifier", ("driver", "mode", "sample_rate_hz"))
    mode = ctx.get(sec, "amplifier", "mode", str, "events", allowed="voltage, events")
    if mode not in ("voltage", "events"):
        raise ctx.fail("amplifier.mode", mode, "voltage, events")
    fs = ctx.get(sec, "amplifier", "sample_rate_hz", float, 25000.0, allowed="20000, 25000 or 30000")
    bus = ctx.culture(fs, mode)
    closers.append(bus.stop)
    ctx.amp_clock = lambda: int(bus.now_sample)
    return bus, {"driver": "sim", "mode": mode, "sample_rate_hz": fs}


# ---- stimulators -----------------------------------------------------------------------------------------
def _outputs(ctx: Ctx, sec: dict, prefix: str) -> dict[int, tuple[int, ...]]:
    raw = ctx.get(sec, prefix, "outputs", dict, required=True,
                  allowed="a mapping of Pulse Pal output (1-4) to a list of electrode indices")
    out: dict[int, tuple[int, ...]] = {}
    for key, electrodes in raw.items():
        field = f"{prefix}.outputs.{key}"
        if not isinstance(key, int) or not 1 <= key <= 4:
            raise ctx.fail(field, key, "output numbers 1, 2, 3, 4")
        if isinstance(electrodes, int) and not isinstance(electrodes, bool):
            electrodes = [electrodes]
        if not isinstance(electrodes, list) or not electrodes or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in electrodes):
            raise ctx.fail(field, electrodes, "a non-empty list of electrode indices (integers >= 0)")
        out[key] = tuple(electrodes)
    return out


def _build_pulsepal(ctx: Ctx, sec: dict, amp, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.pulsepal import PulsePal
    from rigctl.errors import DeviceError

    _check_keys(ctx, sec, "stimulator", ("driver", "port", "outputs", "trigger_latency_ms", "mV_per_volt",
                                         "timeout_s", "arm_ahead_ms"))
    port = ctx.get(sec, "stimulator", "port", str, required=True,
                   allowed=f"a serial device such as /dev/ttyACM0 or COM3, or '{EMULATE}'")
    outputs = _outputs(ctx, sec, "stimulator")
    bad = sorted(e for els in outputs.values() for e in els if e >= amp.n_channels)
    if bad:
        raise ctx.fail("stimulator.outputs", bad, f"electrodes 0..{amp.n_channels - 1} of the amplifier")
    latency = ctx.get(sec, "stimulator", "trigger_latency_ms", float, 0.0, allowed="milliseconds >= 0")
    gain = ctx.get(sec, "stimulator", "mV_per_volt", float, 1000.0, allowed="mV at the electrode per volt, > 0")
    timeout = ctx.get(sec, "stimulator", "timeout_s", float, 0.5, allowed="seconds > 0")
    arm_ahead = ctx.get(sec, "stimulator", "arm_ahead_ms", float, 0.0, allowed="milliseconds >= 0")
    if latency < 0:
        raise ctx.fail("stimulator.trigger_latency_ms", latency, "milliseconds >= 0")
    if gain <= 0:
        raise ctx.fail("stimulator.mV_per_volt", gain, "> 0")
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
        drv = PulsePal(port, outputs, amp.sample_rate_hz, timeout_s=timeout, trigger_latency_ms=latency,
                       mV_per_volt=gain, arm_ahead_ms=arm_ahead)
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


def _rhx_channels(ctx: Ctx, sec: dict, default_n: int) -> list[str]:
    """`channels`: a list of native names, or ranges like `A-000..A-031, B-000..B-031`; electrode i = i-th."""
    from rigctl.drivers import _rhx_wire as rw

    raw = sec.get("channels")
    allowed = "a list of RHX channel names (A-000 .. H-127) or ranges like 'A-000..A-031, B-000..B-031'"
    if raw is None:
        return rw.default_channel_names(default_n)
    names: list[str] = []
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    for part in parts:
        part = str(part).strip().upper()
        if ".." in part:
            lo, hi = (x.strip() for x in part.split("..", 1))
            if not (rw.is_channel_name(lo) and rw.is_channel_name(hi)) or lo[0] != hi[0] or hi < lo:
                raise ctx.fail("amplifier.channels", part, allowed)
            names += [f"{lo[0]}-{k:03d}" for k in range(int(lo[2:]), int(hi[2:]) + 1)]
        elif rw.is_channel_name(part):
            names.append(part)
        else:
            raise ctx.fail("amplifier.channels", part, allowed)
    if len(set(names)) != len(names):
        raise ctx.fail("amplifier.channels", raw, "each channel once")
    return names


def _build_rhx_amplifier(ctx: Ctx, sec: dict, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.intan_rhx import IntanRHX
    from rigctl.errors import DeviceError

    _check_keys(ctx, sec, "amplifier", ("driver", "host", "command_port", "channels", "blocks_per_write",
                                        "timeout_s", "trigger_latency_ms", "emulator"))
    host = ctx.get(sec, "amplifier", "host", str, required=True,
                   allowed=f"the RHX computer's address (127.0.0.1 on the same machine) or '{EMULATE}'")
    port = ctx.get(sec, "amplifier", "command_port", int, 5000, allowed="RHX's command port (0-65535)")
    per_write = ctx.get(sec, "amplifier", "blocks_per_write", int, 1, allowed="1 to 100 blocks of 128 frames")
    if not 1 <= per_write <= 100:
        raise ctx.fail("amplifier.blocks_per_write", per_write, "1 to 100")
    timeout = ctx.get(sec, "amplifier", "timeout_s", float, 1.0, allowed="seconds > 0")
    latency = ctx.get(sec, "amplifier", "trigger_latency_ms", float, 0.0, allowed="milliseconds >= 0")
    emu_sec = ctx.get(sec, "amplifier", "emulator", dict, {}, allowed="a mapping: sample_rate_hz, step_uA")
    desc: dict[str, Any] = {"driver": "rhx", "host": host, "command_port": port, "mode": "voltage"}
    if host == EMULATE:
        from rigctl.sim.rhx_emulator import RHXEmulator

        _check_keys(ctx, emu_sec, "amplifier.emulator", ("sample_rate_hz", "step_uA"))
        fs = ctx.get(emu_sec, "amplifier.emulator", "sample_rate_hz", float, 25000.0, allowed="20000, 25000, 30000")
        step = ctx.get(emu_sec, "amplifier.emulator", "step_uA", float, 1.0, allowed="an RHS step size")
        bus = ctx.culture(fs, "voltage")
        names = _rhx_channels(ctx, sec, bus.n_channels)
        if len(names) != bus.n_channels:
            raise ctx.fail("amplifier.channels", f"{len(names)} channels", f"{bus.n_channels}, one per electrode "
                                                                          "of the simulated culture")
        try:
            emu = RHXEmulator(bus, channel_names=names, step_uA=step, realtime=ctx.realtime).start()
        except ValueError as exc:
            raise RigFileError(f"{ctx.doc.where('amplifier.emulator')}: {exc}") from exc
        closers.append(emu.close)
        ctx.emulators.append(emu)
        host, port = "127.0.0.1", emu.command_port
        desc["emulator_command_port"] = port
    else:
        names = _rhx_channels(ctx, sec, 64)
    try:
        drv = IntanRHX(host, port, electrode_channels=names, timeout_s=timeout, blocks_per_write=per_write,
                       trigger_latency_ms=latency)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('amplifier.host')}: {exc}") from exc
    closers.insert(0, drv.close)
    ctx.amp_clock = lambda: int(drv.clock)
    desc.update({"channels": names, "controller_type": drv.controller_type, "version": drv.version,
                 "sample_rate_hz": drv.fs, "stim_step_uA": drv.step_uA})
    return drv, desc


def _build_openephys_amplifier(ctx: Ctx, sec: dict, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.openephys import OpenEphysGUI
    from rigctl.errors import DeviceError

    _check_keys(ctx, sec, "amplifier", ("driver", "host", "http_port", "stream", "channels", "uV_per_bit",
                                        "timeout_s", "record", "emulator"))
    host = ctx.get(sec, "amplifier", "host", str, required=True,
                   allowed=f"the GUI computer's address (127.0.0.1 on the same machine) or '{EMULATE}'")
    port = ctx.get(sec, "amplifier", "http_port", int, 37497, allowed="the GUI's HTTP API port")
    stream = ctx.get(sec, "amplifier", "stream", str, None, allowed="a stream name of the ZMQ Interface")
    channels = ctx.get(sec, "amplifier", "channels", list, None, allowed="a list of stream channel indices (0-based)")
    if channels is not None and not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels):
        raise ctx.fail("amplifier.channels", channels, "a list of stream channel indices (integers >= 0)")
    upb = ctx.get(sec, "amplifier", "uV_per_bit", float, 0.195, allowed="µV per int16 step, > 0")
    timeout = ctx.get(sec, "amplifier", "timeout_s", float, 2.0, allowed="seconds > 0")
    record = ctx.get(sec, "amplifier", "record", bool, False, allowed="true (GUI records to disk) or false")
    emu_sec = ctx.get(sec, "amplifier", "emulator", dict, {}, allowed="a mapping: sample_rate_hz, block_samples")
    desc: dict[str, Any] = {"driver": "openephys", "host": host, "http_port": port, "mode": "voltage"}
    if host == EMULATE:
        from rigctl.sim.openephys_emulator import OpenEphysEmulator

        _check_keys(ctx, emu_sec, "amplifier.emulator", ("sample_rate_hz", "block_samples"))
        fs = ctx.get(emu_sec, "amplifier.emulator", "sample_rate_hz", float, 25000.0, allowed="Hz")
        block = ctx.get(emu_sec, "amplifier.emulator", "block_samples", int, 500, allowed="samples per block, > 0")
        bus = ctx.culture(fs, "voltage")
        emu = OpenEphysEmulator(bus, block_samples=block, realtime=ctx.realtime).start()
        closers.append(emu.close)
        ctx.emulators.append(emu)
        host, port = "127.0.0.1", emu.http_port
        desc["emulator_http_port"] = port
    try:
        drv = OpenEphysGUI(host, port, channels=channels, stream=stream, uV_per_bit=upb, timeout_s=timeout,
                           record=record)
    except DeviceError as exc:
        raise DeviceError(f"{ctx.doc.where('amplifier.host')}: {exc}") from exc
    closers.insert(0, drv.stop)
    ctx.amp_clock = lambda: int(drv.clock)
    desc.update({"stream": drv.stream, "sample_rate_hz": drv.fs, "data_port": drv.data_port,
                 "channels": drv.channels})
    return drv, desc


def _build_rhx_stimulator(ctx: Ctx, sec: dict, amp, closers: list) -> tuple[Any, dict]:
    from rigctl.drivers.intan_rhx import IntanRHX

    _check_keys(ctx, sec, "stimulator", ("driver",))
    if not isinstance(amp, IntanRHX):
        raise ctx.fail("stimulator.driver", "rhx", "rhx only together with amplifier.driver: rhx (the same controller)")
    return amp, {"driver": "rhx", "stim_step_uA": amp.step_uA}


def _build_playback_amplifier(ctx: Ctx, sec: dict, closers: list) -> tuple[Any, dict]:
    """`amplifier: {driver: playback, path: ...}`: another system's recording (rigctl.interop.recording) played
    chunk by chunk through the loop and signal path like a live amplifier; paths are relative to the rig file."""
    from rigctl.drivers.playback import PlaybackAmplifier
    from rigctl.interop.recording import FORMATS, RecordingFrames, open_recording
    from rigctl.interop.spikeinterface import layout_from_probe_file

    _check_keys(ctx, sec, "amplifier", ("driver", "path", "probe", "chunk_ms", "loop"))
    path = ctx.doc.path.parent / ctx.get(sec, "amplifier", "path", str, required=True, allowed=FORMATS)
    chunk_ms = ctx.get(sec, "amplifier", "chunk_ms", float, ctx.chunk_ms or 10.0, allowed="0.1 to 10000 ms")
    if not 0.1 <= chunk_ms <= 10000:
        raise ctx.fail("amplifier.chunk_ms", chunk_ms, "0.1 to 10000 ms")
    loop = ctx.get(sec, "amplifier", "loop", bool, False, allowed="true (start again at the end) or false")
    probe = ctx.get(sec, "amplifier", "probe", str, None, allowed="a probeinterface JSON file")
    try:
        frames = RecordingFrames(open_recording(path, label="amplifier.path"))
    except RigctlError as exc:
        raise RigFileError(f"{ctx.doc.where('amplifier.path')}: {exc}") from None
    layout = frames.layout
    if probe:
        try:
            layout = layout_from_probe_file(ctx.doc.path.parent / probe)[0]
        except RigctlError as exc:
            raise RigFileError(f"{ctx.doc.where('amplifier.probe')}: {exc}") from None
    if layout.n_electrodes != frames.shape[1]:
        raise ctx.fail("amplifier.probe", probe, f"a probe of {frames.shape[1]} contacts (the recording's channels)")
    amp = PlaybackAmplifier(frames, frames.sample_rate_hz, max(1, round(chunk_ms * 1e-3 * frames.sample_rate_hz)),
                            frames.uV_per_bit, loop=loop, realtime=ctx.realtime, layout=layout)
    return amp, {"driver": "playback", "path": str(path), "probe": probe, "mode": "voltage"}


AMPLIFIER_BUILDERS: dict[str, Callable] = {"sim": _build_sim_amplifier, "rhx": _build_rhx_amplifier,
                                          "openephys": _build_openephys_amplifier,
                                          "playback": _build_playback_amplifier}
STIMULATOR_BUILDERS: dict[str, Callable] = {"pulsepal": _build_pulsepal, "rhx": _build_rhx_stimulator,
                                            "none": lambda ctx, sec, amp, closers: (_no_stimulator(), {"driver": "none"})}


# ---- entry point -------------------------------------------------------------------------------------------
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
    ctx = Ctx(doc, seed, drug, realtime, chunk_ms, backend_factory or sim_backend, emulators=[])
    data = doc.data
    _check_keys(ctx, data, "rig", ("name", "description", "amplifier", "stimulator", "safety"))
    for section in ("amplifier", "stimulator"):
        if not isinstance(data.get(section), dict):
            raise RigFileError(f"{doc.path}: section '{section}' is required (a mapping with at least 'driver')")
    closers: list = []
    try:
        amp_sec, stim_sec = data["amplifier"], data["stimulator"]
        kind = amp_sec.get("driver")
        if kind not in AMPLIFIER_BUILDERS:
            raise ctx.fail("amplifier.driver", kind, ", ".join(sorted(AMPLIFIER_BUILDERS)))
        amp, amp_desc = AMPLIFIER_BUILDERS[kind](ctx, amp_sec, closers)
        kind = stim_sec.get("driver")
        if kind not in STIMULATOR_BUILDERS:
            raise ctx.fail("stimulator.driver", kind, ", ".join(sorted(STIMULATOR_BUILDERS)))
        stim, stim_desc = STIMULATOR_BUILDERS[kind](ctx, stim_sec, amp, closers)
        safety = data.get("safety") or {}
        if not isinstance(safety, dict):
            raise ctx.fail("safety", safety, "a mapping of safety limits")
        safety = dict(safety)
        safety.setdefault("n_electrodes", amp.n_channels)
        try:
            limits = SafetyLimits.from_dict(safety)
        except (TypeError, ValueError, SafetyConfigError) as exc:
            field = next((k for k in safety if f"safety.{k}" in str(exc)), None)
            raise RigFileError(f"{doc.where('safety.' + field if field else 'safety')}: {exc}") from exc
    except BaseException:
        for close in closers:
            try:
                close()
            except Exception:
                pass
        raise
    mode = amp_desc.get("mode", "voltage")
    desc = {"kind": "rigfile", "path": str(doc.path), "name": data.get("name", doc.path.stem), "mode": mode,
            "sample_rate_hz": amp.sample_rate_hz, "seed": seed, "drug": drug, "realtime": realtime,
            "amplifier": amp_desc, "stimulator": stim_desc, "layout": amp.layout.to_dict()}
    return RigParts(amp, stim, limits, desc, closers, ctx.emulators)
