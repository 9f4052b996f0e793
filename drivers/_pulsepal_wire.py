"""Pulse Pal v2 wire constants and encodings (../shared/spec/devices.md section 1), shared by the driver
and the emulator so both speak exactly the firmware's bytes. Checked against sanworks/PulsePal firmware
2.0.1 (`PulsePal_2_0_1.ino`): op codes, op-74 parameter widths, the op-73 layout and the 500 ms timeout.
"""

from __future__ import annotations

import math
import struct

OP_MENU = 0xD5  # every host message starts with this byte
OP_HANDSHAKE = 72
OP_PROGRAM_ALL = 73
OP_PROGRAM_ONE = 74
OP_CUSTOM_TRAIN_1 = 75
OP_CUSTOM_TRAIN_2 = 76
OP_SOFT_TRIGGER = 77
OP_DISPLAY = 78
OP_SET_VOLTAGE = 79
OP_ABORT = 80
OP_DISCONNECT = 81
OP_CONTINUOUS_LOOP = 82
OP_CLIENT_ID = 89

ACK = 0x01
HANDSHAKE_REPLY = 0x4B  # 'K', then uint32 firmware version
MIN_V2_FIRMWARE = 20  # < 20 is a Pulse Pal 1.x with 8-bit voltages
MAX_FIRMWARE = 999  # releases report small numbers (5, 20, 21): a larger one is line noise, not a version

CYCLE_HZ = 20000  # one firmware tick = 50 µs; every duration is a uint32 count of ticks
CYCLE_US = 50.0
BYTE_TIMEOUT_S = 0.5  # firmware: a message byte later than this -> COMM. FAILURE
N_OUTPUTS = 4
N_TRIGGERS = 2
V_MIN, V_MAX = -10.0, 10.0
CUSTOM_MAX_PULSES = 5000

# op 74 parameter codes -> struct format of the value (v2)
P_IS_BIPHASIC = 1
P_PHASE1_V = 2
P_PHASE2_V = 3
P_PHASE1_DUR = 4
P_INTERPHASE = 5
P_PHASE2_DUR = 6
P_INTERPULSE = 7
P_BURST_DUR = 8
P_INTERBURST = 9
P_TRAIN_DUR = 10
P_TRAIN_DELAY = 11
P_LINK_TRIG1 = 12
P_LINK_TRIG2 = 13
P_CUSTOM_ID = 14
P_CUSTOM_TARGET = 15
P_CUSTOM_LOOP = 16
P_RESTING_V = 17
P_TRIGGER_MODE = 128

PARAM_FORMAT: dict[int, str] = {
    P_IS_BIPHASIC: "<B", P_PHASE1_V: "<H", P_PHASE2_V: "<H",
    P_PHASE1_DUR: "<I", P_INTERPHASE: "<I", P_PHASE2_DUR: "<I", P_INTERPULSE: "<I",
    P_BURST_DUR: "<I", P_INTERBURST: "<I", P_TRAIN_DUR: "<I", P_TRAIN_DELAY: "<I",
    P_LINK_TRIG1: "<B", P_LINK_TRIG2: "<B", P_CUSTOM_ID: "<B", P_CUSTOM_TARGET: "<B", P_CUSTOM_LOOP: "<B",
    P_RESTING_V: "<H", P_TRIGGER_MODE: "<B",
}

# op 73 (v2): per-channel time params, then voltages, then byte params, links and trigger modes
TIME_PARAMS = ("phase1_dur", "interphase", "phase2_dur", "interpulse", "burst_dur", "interburst",
               "train_dur", "train_delay")
VOLT_PARAMS = ("phase1_v", "phase2_v", "resting_v")
BYTE_PARAMS = ("is_biphasic", "custom_id", "custom_target", "custom_loop")
PROGRAM_ALL_PAYLOAD = 32 * 4 + 12 * 2 + 16 + 8 + 2  # 178 bytes after D5 49


def volts_to_code(volts: float) -> int:
    """Firmware/official-client encoding: code = ceil((V + 10) / 20 * 65535), 0 V -> 32768."""
    if not (V_MIN <= volts <= V_MAX):
        raise ValueError(f"{volts} V outside [{V_MIN}, {V_MAX}] V")
    return min(65535, max(0, int(math.ceil((volts + 10.0) / 20.0 * 65535.0))))


def code_to_volts(code: int) -> float:
    """What the 12-bit AD5724 (±10 V, offset binary) outputs: only the top 12 bits of the code matter."""
    return -10.0 + 20.0 * ((int(code) & 0xFFFF) >> 4) / 4096.0


def seconds_to_cycles(seconds: float) -> int:
    return int(round(seconds * CYCLE_HZ))


def message(op: int, payload: bytes = b"") -> bytes:
    return bytes((OP_MENU, op)) + payload


def program_one(param: int, channel: int, value: int) -> bytes:
    """`D5 4A param channel value` with the value width the firmware reads for `param`."""
    return message(OP_PROGRAM_ONE, bytes((param, channel)) + struct.pack(PARAM_FORMAT[param], value))


def parse_handshake(reply: bytes) -> int:
    """The handshake reply (`4B` + uint32 firmware version) -> the version; ValueError if it is not one."""
    if len(reply) != 5 or reply[0] != HANDSHAKE_REPLY:
        raise ValueError(f"handshake answered {reply.hex(' ')}, expected 4b + firmware version")
    version = struct.unpack("<I", reply[1:])[0]
    if version > MAX_FIRMWARE:
        raise ValueError(f"handshake reported firmware {version}; allowed: at most {MAX_FIRMWARE} "
                         "(garbage on the line?)")
    return version
