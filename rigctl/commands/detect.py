"""`rigctl detect RAW` / `rigctl detect --recording PATH`: run the online signal path chunk by chunk over a raw
int16 file or over any recording SpikeInterface reads (NWB, Open Ephys, Intan, MCS, MaxWell); spikes as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.commands._argtypes import channels, chunk_ms, output_file, positive_float, sample_rate_hz
from rigctl.errors import RigctlError


def _detect(args: argparse.Namespace) -> int:
    from rigctl.signal import SignalConfig, SignalPath
    from rigctl.types import Chunk

    data, rate_hz, uv_per_bit = _source(args)
    n_channels = data.shape[1]
    config = SignalConfig(threshold_sd=args.threshold_sd)
    signal = SignalPath(n_channels, rate_hz, uv_per_bit, config)
    pulses = _read_pulses(Path(args.pulses)) if args.pulses else np.zeros((0, 2))
    next_pulse = 0
    chunk = max(1, int(round(args.chunk_ms * 1e-3 * rate_hz)))
    try:
        out = open(args.out, "w") if args.out else sys.stdout
    except OSError as exc:
        raise RigctlError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    n_spikes = 0
    try:
        out.write("sample,channel\n")
        for a in range(0, len(data), chunk):
            block = np.ascontiguousarray(data[a:a + chunk])
            while next_pulse < len(pulses) and pulses[next_pulse, 0] < a + len(block):
                signal.expect_pulse(int(pulses[next_pulse, 0]), (), float(pulses[next_pulse, 1]))
                next_pulse += 1
            spikes = signal.process(Chunk(a, block, uv_per_bit, rate_hz))
            if len(spikes):
                out.write("".join(f"{s},{c}\n" for s, c in zip(spikes.sample.tolist(), spikes.channel.tolist())))
                n_spikes += len(spikes)
    finally:
        if args.out:
            out.close()
    # spikes in the last `lookahead_samples` of the file cannot be confirmed and are not reported
    print(f"{n_spikes} spikes in {len(data)} samples x {n_channels} channels; detection starts after "
          f"{signal.settle_samples} samples (first noise estimate)", file=sys.stderr)
    return 0


def _source(args: argparse.Namespace) -> tuple[Any, float, float]:
    """(frames [n, channels] int16 sliceable, sample rate Hz, uV per count) of RAW or of --recording."""
    raw_flags = {"--channels": args.channels, "--rate-hz": args.rate_hz, "--uv-per-bit": args.uv_per_bit}
    if args.recording is not None:
        given = [flag for flag, value in raw_flags.items() if value is not None]
        if args.raw is not None or given:
            extra = "RAW" if args.raw is not None else ", ".join(given)
            raise RigctlError(f"--recording {args.recording}: {extra} not allowed with it (the recording gives "
                              "channels, rate and scale)")
        from rigctl.interop.recording import RecordingFrames, open_recording

        frames = RecordingFrames(open_recording(args.recording))
        print(f"{args.recording}: {frames.shape[1]} channels at {frames.sample_rate_hz:g} Hz, "
              f"{frames.uV_per_bit:g} uV per count, {frames.shape[0]} samples", file=sys.stderr)
        return frames, frames.sample_rate_hz, frames.uV_per_bit
    if args.raw is None:
        raise RigctlError("no input: give RAW (with --channels, --rate-hz, --uv-per-bit) or --recording PATH")
    missing = [flag for flag, value in raw_flags.items() if value is None]
    if missing:
        raise RigctlError(f"{args.raw}: a raw file needs {', '.join(missing)}")
    path = Path(args.raw)
    if not path.is_file():
        raise RigctlError(f"{path}: no such file")
    size = path.stat().st_size
    frame = 2 * args.channels
    if size % frame:
        raise RigctlError(f"{path}: {size} bytes is not a whole number of {args.channels}-channel int16 frames")
    data = np.memmap(path, np.int16, "r", shape=(size // frame, args.channels)) if size else \
        np.zeros((0, args.channels), np.int16)
    return data, args.rate_hz, args.uv_per_bit


def _read_pulses(path: Path) -> np.ndarray:
    """CSV with a header and columns `sample,duration_us` (one row per pulse): [k, 2], sorted by sample."""
    if not path.is_file():
        raise RigctlError(f"{path}: no such file")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, usecols=(0, 1))
    except ValueError as exc:
        raise RigctlError(f"{path}: expected CSV columns sample,duration_us ({exc})") from None
    return table[np.argsort(table[:, 0], kind="stable")]


def register(sub) -> None:
    p = sub.add_parser("detect", help="detect spikes in a raw int16 file or a recording (CSV sample,channel)",
                       description="Run rigctl's online signal path (band-pass, matched-filter detection), chunk "
                                   "by chunk, over a raw interleaved little-endian int16 file, or over a recording "
                                   "of another system (--recording; needs `pip install 'rigctl[spikeinterface]'`), "
                                   "and write the detected spikes as CSV `sample,channel`.")
    p.add_argument("raw", metavar="RAW", nargs="?", help="raw file: int16, channels interleaved (frame = one "
                                                          "sample of all); needs --channels, --rate-hz, --uv-per-bit")
    p.add_argument("--recording", metavar="PATH", help="instead of RAW: a recording SpikeInterface reads: .nwb, "
                                                        "an Open Ephys binary folder, .rhd/.rhs, MCS or MaxWell .h5 "
                                                        "(first segment; channel 0.. in the file's order)")
    p.add_argument("--channels", type=channels, help="RAW: number of channels (1 to 4096)")
    p.add_argument("--rate-hz", type=sample_rate_hz, help="RAW: sample rate in Hz (1000 to 100000)")
    p.add_argument("--uv-per-bit", type=positive_float, help="RAW: scale of one count in uV (> 0)")
    p.add_argument("--chunk-ms", type=chunk_ms, default=10.0, help="chunk length (0.1 to 10000 ms; default 10)")
    p.add_argument("--threshold-sd", type=positive_float, default=5.0,
                   help="threshold in SDs of the matched-filter output (> 0; default 5)")
    p.add_argument("--pulses", metavar="CSV", help="stimulus pulses to blank: CSV with header, columns "
                                                    "sample,duration_us")
    p.add_argument("--out", type=output_file, help="write the CSV here instead of stdout (its directory must exist)")
    p.set_defaults(func=_detect)
