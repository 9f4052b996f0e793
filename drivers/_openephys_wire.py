"""Open Ephys GUI wire facts (../shared/spec/devices.md section 3) shared by the driver and the emulator:
the ZMQ Interface plugin's multipart messages (open-ephys-plugins/zmq-interface `Source/ZmqInterface.cpp`)
and the GUI's HTTP API port (plugin-GUI `Source/Utils/OpenEphysHttpServer.h`)."""

from __future__ import annotations

import json

import numpy as np

HTTP_PORT = 37497
DATA_PORT = 5556  # ZMQ Interface PUB; its REP (heartbeats) is DATA_PORT + 1
ENVELOPE_DATA = b"DATA\x00"  # C strings: the NUL is part of the frame
ENVELOPE_EVENT = b"EVENT\x00"
MODES = ("IDLE", "ACQUIRE", "RECORD")


def data_header(message_num: int, stream: str, channel_num: int, channel_name: str, num_samples: int,
                sample_num: int, sample_rate: float, timestamp_ms: int) -> bytes:
    return json.dumps({
        "message_num": message_num, "type": "data",
        "content": {"stream": stream, "channel_num": channel_num, "channel_name": channel_name,
                    "num_samples": num_samples, "sample_num": sample_num, "sample_rate": sample_rate},
        "data_size": 4 * num_samples, "timestamp": timestamp_ms}, indent=2).encode()


def data_message(message_num: int, stream: str, channel_num: int, channel_name: str, sample_num: int,
                 sample_rate: float, values_uV: np.ndarray, timestamp_ms: int) -> list[bytes]:
    """[envelope, JSON header, float32 little-endian payload] for one channel of one processing block."""
    payload = np.ascontiguousarray(values_uV, dtype="<f4").tobytes()
    return [ENVELOPE_DATA, data_header(message_num, stream, channel_num, channel_name, len(values_uV),
                                       sample_num, sample_rate, timestamp_ms), payload]
