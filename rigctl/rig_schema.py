"""What a rig file may say, declared: one model per amplifier and stimulator driver, chosen by `driver`
(a discriminated union), and the file around them (`RigFile`). `rigctl.rigfile` opens what it describes.

A device address of `emulate` starts that device's emulator. Checks that need the opened devices
(electrodes the amplifier has, a stimulator that needs its amplifier) stay with the builders.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field

from rigctl.config import ConfigModel, Problem, refusal, spec
from rigctl.drivers import _rhx_wire as rw
from rigctl.yamlcheck import LocatedDoc, show

EMULATE = "emulate"
SECONDS = "seconds > 0 and <= 60"
LATENCY = "milliseconds >= 0"
PORT = "a TCP port 0-65535"
RATE = "Hz, 1000 to 100000 (the rates rigctl's commands take; devices use 20000, 25000 or 30000)"
CHANNELS_ALLOWED = "a list of RHX channel names (A-000 .. H-127) or ranges like 'A-000..A-031, B-000..B-031'"


def _rhx_channels(raw: Any) -> tuple[str, ...] | None:
    """`channels`: a list of native names, or ranges like `A-000..A-031, B-000..B-031`; electrode i = i-th."""
    if raw is None:
        return None
    names: list[str] = []
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    for part in parts:
        part = str(part).strip().upper()
        if ".." in part:
            lo, hi = (x.strip() for x in part.split("..", 1))
            if not (rw.is_channel_name(lo) and rw.is_channel_name(hi)) or lo[0] != hi[0] or hi < lo:
                raise refusal(CHANNELS_ALLOWED, value=part)
            names += [f"{lo[0]}-{k:03d}" for k in range(int(lo[2:]), int(hi[2:]) + 1)]
        elif rw.is_channel_name(part):
            names.append(part)
        else:
            raise refusal(CHANNELS_ALLOWED, value=part)
    if len(set(names)) != len(names):
        raise refusal("each channel once")
    return tuple(names)


def _stream_channels(v: list | None) -> list | None:
    if v is not None and not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v):
        raise refusal("a list of stream channel indices (integers >= 0)")
    return v


def _outputs(raw: dict) -> dict[int, tuple[int, ...]]:
    """Pulse Pal output (1-4) -> electrodes (one index or a non-empty list of indices >= 0)."""
    out: dict[int, tuple[int, ...]] = {}
    for key, electrodes in raw.items():
        if not isinstance(key, int) or isinstance(key, bool) or not 1 <= key <= 4:
            raise refusal("output numbers 1, 2, 3, 4", field=key, value=key)
        if isinstance(electrodes, int) and not isinstance(electrodes, bool):
            electrodes = [electrodes]
        if not isinstance(electrodes, list) or not electrodes or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in electrodes):
            raise refusal("a non-empty list of electrode indices (integers >= 0)", field=key, value=electrodes)
        out[key] = tuple(electrodes)
    return out


# ---- amplifiers ------------------------------------------------------------------------------------------

class SimAmplifier(ConfigModel):
    """rigctl's simulated culture, in process."""

    driver: Literal["sim"]
    mode: Literal["voltage", "events"] = "events"
    sample_rate_hz: float = spec(25000.0, ge=1000, le=100000, about=RATE)


class RhxEmulator(ConfigModel):
    sample_rate_hz: float = spec(25000.0, ge=1000, le=100000, about=RATE)
    step_uA: float = spec(1.0, about="an RHS step size")


class RhxAmplifier(ConfigModel):
    """Intan RHX software over TCP (its command port; data on the waveform port it reports)."""

    driver: Literal["rhx"]
    host: str = spec(about=f"the RHX computer's address (127.0.0.1 on the same machine) or '{EMULATE}'")
    command_port: int = spec(5000, ge=0, le=65535, about="RHX's command port (0-65535)", allowed=PORT)
    channels: Annotated[Any, AfterValidator(_rhx_channels)] = None
    blocks_per_write: int = spec(1, ge=1, le=100, about="1 to 100 blocks of 128 frames")
    timeout_s: float = spec(1.0, gt=0, le=60, about=SECONDS, allowed=SECONDS)
    trigger_latency_ms: float = spec(0.0, ge=0, about=LATENCY, allowed=LATENCY)
    emulator: RhxEmulator = spec(RhxEmulator(), about="a mapping: sample_rate_hz, step_uA")


class OpenEphysEmulator(ConfigModel):
    sample_rate_hz: float = spec(25000.0, ge=1000, le=100000, about=RATE)
    block_samples: int = spec(500, gt=0, about="samples per block, > 0")


class OpenEphysAmplifier(ConfigModel):
    """The Open Ephys GUI: HTTP API for control, its ZMQ Interface plugin for data."""

    driver: Literal["openephys"]
    host: str = spec(about=f"the GUI computer's address (127.0.0.1 on the same machine) or '{EMULATE}'")
    http_port: int = spec(37497, ge=0, le=65535, about="the GUI's HTTP API port (0-65535)", allowed=PORT)
    stream: str | None = spec(None, about="a stream name of the ZMQ Interface")
    channels: Annotated[list | None, AfterValidator(_stream_channels)] = spec(
        None, about="a list of stream channel indices (0-based)")
    uV_per_bit: float = spec(0.195, gt=0, about="µV per int16 step, > 0")
    timeout_s: float = spec(2.0, gt=0, le=60, about=SECONDS, allowed=SECONDS)
    record: bool = spec(False, about="true (GUI records to disk) or false")
    emulator: OpenEphysEmulator = spec(OpenEphysEmulator(), about="a mapping: sample_rate_hz, block_samples")


def _int_list(raw: Any, what: str) -> list[int] | None:
    """A list of integers >= 0, or ranges like `0..63, 100..131` (inclusive); `what` names them in errors."""
    if raw is None:
        return None
    allowed = f"a list of {what} (integers >= 0) or ranges like '0..63, 100..131'"
    out: list[int] = []
    for part in raw if isinstance(raw, list) else str(raw).split(","):
        if isinstance(part, int) and not isinstance(part, bool) and part >= 0:
            out.append(part)
            continue
        text = str(part).strip()
        lo, sep, hi = text.partition("..")
        if not (lo.strip().isdigit() and (not sep or hi.strip().isdigit())) or (sep and int(hi) < int(lo)):
            raise refusal(allowed, value=part)
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    if len(set(out)) != len(out):
        raise refusal(f"each of the {what} once")
    return out


class MaxLabEmulator(ConfigModel):
    frames_per_message: int = spec(1, ge=1, le=20000, about="frames per ZMQ message, 1 to 20000 (1 = what "
                                                              "MaxLab is seen to send; more = faster rehearsal)")
    lsb_mV: float = spec(2.9, gt=0, le=100, about="the DAC step the emulated server reports, mV (> 0, <= 100)")


class MaxLabAmplifier(ConfigModel):
    """MaxWell MaxLab Live: commands on its TCP port (7215), data from its raw ZMQ stream (7204)."""

    driver: Literal["maxlab"]
    host: str = spec(about=f"the MaxLab computer's address (127.0.0.1 on the same machine) or '{EMULATE}'")
    command_port: int = spec(7215, ge=0, le=65535, about="MXW_BASE_PORT + 15 (0-65535)", allowed=PORT)
    data_port: int = spec(7204, ge=0, le=65535, about="the raw stream's ZMQ port (0-65535)", allowed=PORT)
    wells: Literal[1, 6] = spec(1, about="1 (MaxOne) or 6 (MaxTwo)")
    channels_per_well: int = spec(1024, ge=1, le=1024, about="routed channels per well in the stream, 1 to 1024")
    channels: Annotated[Any, AfterValidator(lambda v: _int_list(v, "stream columns"))] = spec(
        about="electrode i = the i-th stream column (well * channels_per_well + channel)")
    electrodes: Annotated[Any, AfterValidator(lambda v: _int_list(v, "MEA electrode numbers"))] = spec(
        None, about="MEA electrode number (0..26399) of each rig electrode, for stimulation and the layout")
    uV_per_unit: float = spec(1.0, gt=0, about="µV per stream value, > 0 [unverified: check on the installed MaxLab]")
    uV_per_bit: float = spec(0.195, gt=0, about="µV per int16 step the stream is quantised to, > 0")
    chunk_ms: float = spec(10.0, ge=0.05, le=1000, about="chunk length, 0.05 to 1000 ms")
    timeout_s: float = spec(1.0, gt=0, le=60, about=SECONDS, allowed=SECONDS)
    arm_ahead_ms: float = spec(200.0, ge=5, le=10000, about="send a pulse's sequence this early, 5 to 10000 ms")
    trigger_latency_ms: float = spec(0.0, ge=0, about=LATENCY, allowed=LATENCY)
    emulator: MaxLabEmulator = spec(MaxLabEmulator(), about="a mapping: frames_per_message, lsb_mV")


class PlaybackAmplifier(ConfigModel):
    """Another system's recording played chunk by chunk like a live amplifier (rigctl.interop.recording)."""

    driver: Literal["playback"]
    path: str = spec(about="a recording SpikeInterface reads: NWB, Open Ephys binary folder, Intan .rhd/.rhs, "
                           "MCS or MaxWell .h5 (relative to the rig file)")
    probe: str | None = spec(None, about="a probeinterface JSON file (relative to the rig file)")
    chunk_ms: float | None = spec(None, ge=0.1, le=10000, about="0.1 to 10000 ms (default: --chunk-ms, else 10)")
    loop: bool = spec(False, about="true (start again at the end) or false")


# ---- stimulators -----------------------------------------------------------------------------------------

class PulsePalStimulator(ConfigModel):
    """A Pulse Pal on a serial port; its outputs trigger electrodes."""

    driver: Literal["pulsepal"]
    port: str = spec(about=f"a serial device such as /dev/ttyACM0 or COM3, or '{EMULATE}'")
    outputs: Annotated[dict, AfterValidator(_outputs)] = spec(
        about="a mapping of Pulse Pal output (1-4) to a list of electrode indices")
    trigger_latency_ms: float = spec(0.0, ge=0, about=LATENCY, allowed=LATENCY)
    mV_per_volt: float = spec(1000.0, gt=0, about="mV at the electrode per volt, > 0")
    timeout_s: float = spec(0.5, gt=0, le=60, about=SECONDS, allowed=SECONDS)
    arm_ahead_ms: float = spec(0.0, ge=0, about=LATENCY, allowed=LATENCY)


class RhxStimulator(ConfigModel):
    """The RHX controller's own stimulation (only with `amplifier.driver: rhx`)."""

    driver: Literal["rhx"]


class MaxLabStimulator(ConfigModel):
    """MaxLab's own stimulation units (only with `amplifier.driver: maxlab`)."""

    driver: Literal["maxlab"]


class NoStimulator(ConfigModel):
    """A recording-only rig."""

    driver: Literal["none"]


Amplifier = Union[SimAmplifier, RhxAmplifier, OpenEphysAmplifier, MaxLabAmplifier, PlaybackAmplifier]
Stimulator = Union[PulsePalStimulator, RhxStimulator, MaxLabStimulator, NoStimulator]
SECTION = "a mapping with at least 'driver'"


class RigFile(ConfigModel):
    """A rig file: its devices and its safety limits (validated by `SafetyLimits` once the amplifier's
    electrode count is known)."""

    name: str | None = None
    description: str | None = None
    amplifier: Amplifier = Field(discriminator="driver", description=SECTION)
    stimulator: Stimulator = Field(discriminator="driver", description=SECTION)
    safety: dict | None = spec(None, about="a mapping of safety limits")


def rig_line(doc: LocatedDoc, p: Problem) -> str:
    """`file:line: stimulator.timeout_s=0.0; allowed: seconds > 0 and <= 60` (rig files)."""
    if p.kind in ("unknown", "key"):
        key = p.shown_key
        named = f"{p.field or 'rig'}.{key}" if key else (f"in '{p.field or 'rig'}' (a name that is not an "
                                                         "identifier, not shown)")
        where = doc.where(f"{p.field}.{p.key}" if p.field else str(p.key))
        return f"{where}: unknown field {named}; allowed: {', '.join(p.fields)}"
    if p.field in ("amplifier", "stimulator") and p.kind in ("missing", "type"):
        return f"{doc.path}: section '{p.field}' is required ({SECTION})"
    if p.kind == "missing":
        return f"{doc.where(p.section or p.field)}: {p.field} is required ({p.about})"
    if p.kind == "type":
        allowed = p.about or f"a {p.expected}"
    elif p.kind == "finite":
        allowed = f"a finite number ({p.about})" if p.about else "a finite number"
    else:
        allowed = p.allowed
    return f"{doc.where(p.field)}: {p.field}={show(p.value)}; allowed: {allowed}"
