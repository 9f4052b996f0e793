"""Intan RHX TCP interface wire facts (../shared/spec/devices.md section 2), shared by the driver and the
emulator. Checked against Intan-RHX v3.4.0 (`Engine/Threads/tcpdataoutputthread.cpp`: magic number,
128-frame blocks, uint32 timestamp per frame, waveform written before spikes; `commandparser.cpp` and
`GUI/Widgets/tcpdisplay.cpp`: `;`-split batches, `Return: ` replies, error sentences)."""

from __future__ import annotations

import math
import re

import numpy as np

WAVEFORM_MAGIC = 0x2EF07A08
SPIKE_MAGIC = 0x3AE2710F
FRAMES_PER_BLOCK = 128
UV_PER_BIT = 0.195  # amplifier WIDE/LOW/HIGH: µV = 0.195 * (raw - 32768)
RAW_OFFSET = 32768
STEP_SIZES_UA = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MAX_STEPS = 255  # RHS stimulation amplitude register
KEYS = tuple(f"F{i}" for i in range(1, 9))
POST_TRIGGER_DELAY_MAX_US = 500000
BANDS = ("", "low", "high", "dc", "stim")  # TCPDataOutputEnabled{,Low,High,DC,Stim}: frame order WIDE..STIM

_NAME = re.compile(r"^([A-H])-(\d{3})$")

# what `get` can answer (devices.md 2.2); anything else in a reply is a fault, never a value to compute with
CONTROLLER_TYPES = ("ControllerRecordUSB2", "ControllerRecordUSB3", "ControllerStimRecord", "ControllerStimRecordUSB2")
STIM_TYPES = ("controllerstimrecord", "controllerstimrecordusb2")  # RHS; ...USB2 is RHX <= 3.1's name
RHS_SAMPLE_RATES = (20000.0, 25000.0, 30000.0)
RHD_SAMPLE_RATE_RANGE = (1000.0, 30000.0)  # [unverified] devices.md lists only the RHS rates
RUN_MODES = ("Run", "Record", "Trigger", "Stop")
BLOCKS_PER_WRITE_RANGE = (1, 100)
TIMESTAMP_MAX = 2 ** 32 - 1  # frames carry a uint32 timestamp
MAX_REPLY_BYTES = 1 << 20  # far above any batch's replies; more without a `Return:` is a babbling peer


class ReplyError(ValueError):
    """A reply value RHX cannot send (the driver turns it into a DeviceError naming the item)."""


def _check(ok: bool, item: str, text: str, allowed: str) -> None:
    if not ok:
        raise ReplyError(f"{item} answered {text[:40]!r}; allowed: {allowed}")


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")  # what %g prints
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def parse_number(item: str, text: str, lo: float, hi: float) -> float:
    """A finite number within [lo, hi] in %g notation (e.g. `1e+06`); no nan/inf, no `1_0`."""
    x = float(text) if len(text) <= 40 and _DECIMAL.fullmatch(text) else math.nan
    _check(math.isfinite(x) and lo <= x <= hi, item, text, f"a number in [{lo:g}, {hi:g}]")
    return x


def parse_int(item: str, text: str, lo: int, hi: int) -> int:
    ok = bool(_INTEGER.fullmatch(text)) and lo <= int(text) <= hi
    _check(ok, item, text, f"an integer in [{lo}, {hi}]")
    return int(text)


def parse_bool(item: str, text: str) -> bool:
    _check(text.lower() in ("true", "false"), item, text, "True or False")
    return text.lower() == "true"


def parse_choice(item: str, text: str, choices: tuple[str, ...]) -> str:
    """The canonical spelling of a case-insensitive choice."""
    found = [c for c in choices if c.lower() == text.lower()]
    _check(bool(found), item, text, ", ".join(choices))
    return found[0]


def parse_version(text: str) -> str:
    _check(bool(re.fullmatch(r"[0-9A-Za-z.+_-]{1,40}", text)), "Version", text, "a version like 3.4.0")
    return text


def parse_sample_rate(text: str, controller_type: str) -> float:
    if controller_type.lower() in STIM_TYPES:
        x = parse_number("SampleRateHertz", text, RHS_SAMPLE_RATES[0], RHS_SAMPLE_RATES[-1])
        _check(x in RHS_SAMPLE_RATES, "SampleRateHertz", text, "20000, 25000 or 30000 (RHS)")
        return x
    return parse_number("SampleRateHertz", text, *RHD_SAMPLE_RATE_RANGE)


def parse_step_size(text: str) -> float:
    """One of RHS's step sizes; %g prints them exactly, the tolerance only absorbs float formatting."""
    x = parse_number("StimStepSizeMicroAmps", text, STEP_SIZES_UA[0], STEP_SIZES_UA[-1])
    found = [s for s in STEP_SIZES_UA if abs(x - s) <= 1e-9 * s]
    _check(bool(found), "StimStepSizeMicroAmps", text, ", ".join(f"{s:g}" for s in STEP_SIZES_UA))
    return found[0]


def is_channel_name(name: str) -> bool:
    return bool(_NAME.match(name.upper()))


def channel_order_key(name: str) -> tuple[int, int]:
    """RHX's frame order for amplifier channels: port A..H, then channel number."""
    m = _NAME.match(name.upper())
    if not m:
        raise ValueError(f"{name!r} is not an RHX amplifier channel name (allowed: A-000 .. H-127)")
    return ord(m.group(1)) - ord("A"), int(m.group(2))


def default_channel_names(n: int, per_port: int = 32) -> list[str]:
    """Electrode i -> A-000.., 32 per port (an RHS controller's two 16-channel headstages per port)."""
    return [f"{chr(ord('A') + i // per_port)}-{i % per_port:03d}" for i in range(n)]


def frame_dtype(n_words: int) -> np.dtype:
    return np.dtype([("timestamp", "<u4"), ("words", "<u2", (n_words,))]) if n_words else np.dtype([("timestamp", "<u4")])


def block_bytes(n_words: int) -> int:
    return 4 + FRAMES_PER_BLOCK * (4 + 2 * n_words)


def build_block(first_timestamp: int, words: np.ndarray) -> bytes:
    """One waveform block: magic + 128 frames of (uint32 timestamp, uint16 words...)."""
    n_words = words.shape[1]
    frames = np.zeros(FRAMES_PER_BLOCK, dtype=frame_dtype(n_words))
    frames["timestamp"] = (np.arange(FRAMES_PER_BLOCK, dtype=np.int64) + first_timestamp) & 0xFFFFFFFF
    if n_words:
        frames["words"] = words
    return WAVEFORM_MAGIC.to_bytes(4, "little") + frames.tobytes()


def parse_blocks(buf: bytearray, n_words: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse every complete block at the start of `buf` -> (timestamps[n], words[n, n_words], bytes skipped).

    Resynchronises on the magic number: bytes before a magic are skipped and counted (garbage). Consumed
    bytes are removed from `buf`; a trailing partial block stays for the next read.
    """
    size = block_bytes(n_words)
    magic = WAVEFORM_MAGIC.to_bytes(4, "little")
    skipped = 0
    stamps, words = [], []
    while True:
        at = buf.find(magic)
        if at < 0:
            keep = min(len(buf), 3)  # a magic may be split across reads
            skipped += len(buf) - keep
            del buf[:len(buf) - keep]
            break
        if at:
            skipped += at
            del buf[:at]
        if len(buf) < size:
            break
        frames = np.frombuffer(bytes(buf[4:size]), dtype=frame_dtype(n_words))
        stamps.append(frames["timestamp"].astype(np.int64))
        words.append(frames["words"] if n_words else np.empty((FRAMES_PER_BLOCK, 0), np.uint16))
        del buf[:size]
    if not stamps:
        return np.empty(0, np.int64), np.empty((0, n_words), np.uint16), skipped
    return np.concatenate(stamps), np.concatenate(words).reshape(-1, n_words), skipped


def stim_word(magnitude_steps: int, negative: bool, settle: bool = False, recovery: bool = False) -> int:
    """RHS STIM band word: bits 0-7 magnitude while on, bit 8 polarity (1 = negative), 13 settle, 14 recovery."""
    return (magnitude_steps & 0xFF) | (0x100 if negative else 0) | (0x2000 if settle else 0) | (0x4000 if recovery else 0)


def format_double(value: float) -> str:
    """RHX prints double items with QString::number(double): %g, 6 significant digits."""
    return f"{value:g}"
