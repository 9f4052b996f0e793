"""Intan RHX TCP interface wire facts (../shared/spec/devices.md section 2), shared by the driver and the
emulator. Checked against Intan-RHX v3.4.0 (`Engine/Threads/tcpdataoutputthread.cpp`: magic number,
128-frame blocks, uint32 timestamp per frame, waveform written before spikes; `commandparser.cpp` and
`GUI/Widgets/tcpdisplay.cpp`: `;`-split batches, `Return: ` replies, error sentences)."""

from __future__ import annotations

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
