"""MaxWell MaxLab Live wire facts (../shared/spec/devices.md section 4), shared by the driver and the emulator.

Command API (checked in the `maxlab` package as vendored in public repositories: `maxlab/apicomm.py`,
`maxlab/chip.py`): plain TCP to port MXW_BASE_PORT + 15 (7215), one connection per command, request =
ASCII text + `\\r\\n###`, reply = text up to `\\r\\n###`, the exact reply `Error` = failure. Command strings
are those `maxlab.chip` / `maxlab.system` objects produce (`mea_set_dac`, `mea_set_stimulation_unit`,
`system_delay_samples`, `sequence_*`, `mea_array_*`).

Raw data stream [community] (braingeneers/braindance `maxwell_env.py`, `dummy_zmq_np.py`): ZMQ PUB on
7204 (7205 filtered), one multipart message per frame: [uint64 frame number, float32 x n_channels,
spike events]. A message of k consecutive frames (payload k x n_channels x 4 bytes, frame number of the
first) is accepted too: rigctl's emulator can batch frames for fast rehearsal; k = 1 is what MaxLab is
seen to send. Spike events are 24 bytes (`8xLif`: pad, uint64 frame, int32 channel, float32 amplitude)
or 16 bytes in newer releases (frame, amplitude, int16 channel, well id) [community]; rigctl detects
spikes itself and does not read them.
"""

from __future__ import annotations

import math
import re

import numpy as np

BASE_PORT = 7200
COMMAND_PORT = BASE_PORT + 15  # apicomm.py: int(os.environ['MXW_BASE_PORT']) + 15, default 7200 + 15
RAW_PORT = 7204  # [community] unfiltered frames
FILTERED_PORT = 7205  # [community] on-chip filtered frames (not used: ~100 ms later, devices.md 4.4)
END_MARKER = b"\r\n###"
ERROR_REPLY = "Error"
MAX_REPLY_BYTES = 1 << 20  # a config string is tens of kB; more without the marker is a babbling peer

SAMPLE_RATE_HZ = 20000.0  # one sample = 50 µs (system_delay_samples unit)
CHANNELS_PER_WELL = 1024  # routed readout channels per chip
N_STIM_UNITS = 32
DAC_BITS = 10
DAC_MAX = 1023
DAC_ZERO = 512  # mid-supply = 0 V; voltage mode inverts: 512 - a -> positive, 512 + a -> negative
WELLS = (1, 6)  # MaxOne (one chip), MaxTwo (six wells)
MEA_COLUMNS = 220  # MaxOne array: 220 x 120 electrodes, 17.5 µm pitch (26 400 electrodes)
MEA_ROWS = 120
MEA_PITCH_UM = 17.5
MAX_DELAY_SAMPLES = 2 ** 31 - 1

FRAME_NUMBER_BYTES = 8
SPIKE_EVENT_SIZES = (24, 16)  # [community] `8xLif` (older), frame/amplitude/channel/well (newer)
LSB_RANGE_MV = (0.1, 100.0)  # what `system_query_dac_lsb_mv` may answer (community: ~2.9 mV)


class WireError(ValueError):
    """Bytes MaxLab cannot have sent (the driver turns it into a DeviceError naming the device)."""


# ---- commands (each one TCP connection) -------------------------------------------------------------------
def request(command: str) -> bytes:
    """One request: the command text and the end marker (apicomm.py `msg + ENDMARKER`)."""
    return command.encode("ascii") + END_MARKER


def split_reply(buf: bytes | bytearray) -> str | None:
    """The reply text if `buf` holds the end marker, else None (more bytes to come)."""
    at = bytes(buf).find(END_MARKER)
    if at < 0:
        return None
    return bytes(buf[:at]).decode("latin-1")


def set_dac(dac: int, code: int, code2: int = DAC_ZERO) -> str:
    """chip.DAC(n, code, code2): n = 0, 1, 2, or 3 (DAC0 <- code and DAC1 <- code2 at once)."""
    return f"mea_set_dac {dac} {code} {code2}"


def set_stimulation_unit(unit: int, power: bool, connect: bool, current_mode: bool = False,
                         large_range: bool = False, dac: int = 0, external_ref: bool = False) -> str:
    """chip.StimulationUnit(u)...set(): unit 0..31, or -1 = every unit (used to power them all down)."""
    flags = (power, connect, current_mode, large_range)
    return (f"mea_set_stimulation_unit {unit} " + " ".join(str(int(bool(f))) for f in flags)
            + f" {dac} {int(bool(external_ref))}")


def power_down_all() -> str:
    """chip.power_down_all_stimulation_buffers(): StimulationUnit(-1).power_up(False)."""
    return set_stimulation_unit(-1, False, False)


def delay_samples(n: int) -> str:
    return f"system_delay_samples {n}"


def sequence_append(token: str, command: str) -> str:
    return f"sequence_append {token}\n{command}"


def array_command(token: str, sub: str) -> str:
    return f"mea_array_command {token}\n{sub}"


# ---- replies ------------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def parse_lsb_mV(text: str) -> float:
    """`system_query_dac_lsb_mv` -> mV per DAC step; finite and within LSB_RANGE_MV."""
    t = text.strip()
    x = float(t) if len(t) <= 40 and _NUMBER.fullmatch(t) else math.nan
    if not (math.isfinite(x) and LSB_RANGE_MV[0] <= x <= LSB_RANGE_MV[1]):
        raise WireError(f"system_query_dac_lsb_mv answered {t[:40]!r}; allowed: a number of mV in "
                        f"[{LSB_RANGE_MV[0]:g}, {LSB_RANGE_MV[1]:g}]")
    return x


def parse_unit(text: str, electrode: int) -> int | None:
    """`mea_array_query_stimulation_at_electrode e` -> the unit (0..31), None if the electrode has none."""
    t = text.strip()
    if t == "":
        return None
    if not re.fullmatch(r"[0-9]{1,2}", t) or int(t) >= N_STIM_UNITS:
        raise WireError(f"query_stimulation_at_electrode {electrode} answered {t[:40]!r}; "
                        f"allowed: a unit 0..{N_STIM_UNITS - 1} or nothing")
    return int(t)


def parse_token(text: str) -> str:
    """`sequence_new` -> the sequence's token (one word: it goes into later command lines)."""
    t = text.strip()
    if not _TOKEN.fullmatch(t):
        raise WireError(f"sequence_new answered {t[:40]!r}; allowed: a token of letters, digits, _ . : -")
    return t


# ---- data stream ----------------------------------------------------------------------------------------------
def frame_message(frame_number: int, samples: np.ndarray, events: bytes = b"") -> list[bytes]:
    """[uint64 frame number, float32 samples (k frames x n channels, frame-major), events]; without events, the
    first two parts only (a part of zero bytes last: libzmq 4.3.5 aborted the publishing process, src/session_base.cpp,
    when a subscriber left while such a message was in flight under XPUB_NODROP; the driver reads both forms)."""
    data = np.ascontiguousarray(samples, dtype="<f4")
    head = [int(frame_number).to_bytes(FRAME_NUMBER_BYTES, "little"), data.tobytes()]
    return head + [events] if events else head


def parse_frames(parts: list[bytes], n_channels: int) -> tuple[int, np.ndarray]:
    """A data message -> (first frame number, float32 [k, n_channels]); WireError for anything else."""
    if len(parts) not in (2, 3):
        raise WireError(f"a data message of {len(parts)} parts; allowed: 2 or 3 (frame number, samples, events)")
    if len(parts[0]) != FRAME_NUMBER_BYTES:
        raise WireError(f"a frame number of {len(parts[0])} bytes; allowed: {FRAME_NUMBER_BYTES}")
    width = 4 * n_channels
    if not parts[1] or len(parts[1]) % width:
        raise WireError(f"a payload of {len(parts[1])} bytes; allowed: a whole number of frames of "
                        f"{n_channels} float32 ({width} bytes)")
    if len(parts) == 3 and len(parts[2]) % 8:
        raise WireError(f"spike events of {len(parts[2])} bytes; allowed: whole events of "
                        f"{' or '.join(str(s) for s in SPIKE_EVENT_SIZES)} bytes")
    first = int.from_bytes(parts[0], "little")
    return first, np.frombuffer(parts[1], dtype="<f4").reshape(-1, n_channels)


def electrode_position_um(electrode: int) -> tuple[float, float]:
    """MaxOne electrode number -> (x, y) µm: row-major over 220 columns, 17.5 µm pitch."""
    return (electrode % MEA_COLUMNS) * MEA_PITCH_UM, (electrode // MEA_COLUMNS) * MEA_PITCH_UM


def n_electrodes() -> int:
    return MEA_COLUMNS * MEA_ROWS
