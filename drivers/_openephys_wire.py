"""Open Ephys GUI wire facts (../shared/spec/devices.md section 3) shared by the driver and the emulator:
the ZMQ Interface plugin's multipart messages (open-ephys-plugins/zmq-interface `Source/ZmqInterface.cpp`)
and the GUI's HTTP API port (plugin-GUI `Source/Utils/OpenEphysHttpServer.h`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

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


# ---- what the driver accepts from the GUI: everything else is a fault, not a value ----------------------
MAX_HTTP_HEAD_BYTES = 64 << 10  # status line + headers
MAX_HTTP_REPLY_BYTES = 8 << 20  # a processors list of a large signal chain is well under 1 MB
MAX_INTERIM_REPLIES = 4
MAX_HEADER_JSON_BYTES = 64 << 10  # a ZMQ header is a few hundred bytes
MAX_SAMPLES_PER_MESSAGE = 1 << 20  # blocks follow the audio buffer: hundreds to a few thousand samples
MAX_FRAME_BYTES = 4 * MAX_SAMPLES_PER_MESSAGE + MAX_HEADER_JSON_BYTES  # ZMQ_MAXMSGSIZE (checked per frame)
MAX_FRAMES = 3  # envelope, header, payload
MAX_PENDING_BLOCKS = 16  # incomplete blocks held while waiting for their other channels
MAX_PENDING_BYTES = 64 << 20
SAMPLE_RATE_RANGE = (1.0, 1e6)
MAX_STREAM_CHANNELS = 16384
DATA_PORT_RANGE = (1000, 65535)  # the ZMQ Interface's data_port parameter (devices.md 3.2)
INT64 = (-(2 ** 63), 2 ** 63 - 1)


class WireError(ValueError):
    """A reply or message the GUI cannot have sent (the driver turns it into a DeviceError)."""


def decode_json(data: bytes, what: str, limit: int) -> object:
    """JSON with a size bound; deep nesting (RecursionError) and bad UTF-8 are WireErrors too."""
    if len(data) > limit:
        raise WireError(f"{what}: {len(data)} bytes of JSON, allowed at most {limit}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WireError(f"{what}: not JSON ({type(exc).__name__}: {str(exc)[:80]})") from None


def field(obj: object, key: str, kind: type | tuple[type, ...], what: str):
    """`obj[key]`, checked to be a JSON object member of the given kind (bool is not a number)."""
    if not isinstance(obj, dict):
        raise WireError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise WireError(f"{what}: no {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise WireError(f"{what}: {key!r} is {type(value).__name__} {str(value)[:40]!r}, "
                        f"allowed: {'/'.join(k.__name__ for k in kinds)}")
    return value


def int_in(value: object, lo: int, hi: int, what: str) -> int:
    """An integer in [lo, hi]; JSON ints, integral floats and decimal strings (the API's string values)."""
    if isinstance(value, str) and len(value) <= 20 and value.strip().lstrip("-").isascii() \
            and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise WireError(f"{what} is {str(value)[:40]!r}; allowed: an integer in [{lo}, {hi}]")
    return value


def float_in(value: object, lo: float, hi: float, what: str) -> float:
    """A finite number in [lo, hi] (JSON number or numeric string); NaN and Infinity are refused."""
    x = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        x = float(value) if not isinstance(value, int) or abs(value) < 2 ** 1000 else math.inf
    elif isinstance(value, str) and len(value) <= 40:
        try:
            x = float(value)
        except ValueError:
            pass
    if not (math.isfinite(x) and lo <= x <= hi):
        raise WireError(f"{what} is {str(value)[:40]!r}; allowed: a number in [{lo:g}, {hi:g}]")
    return x


# ---- HTTP/1.1 exchange (one request per connection, as the GUI's API is used) -----------------------------
def http_request(method: str, host: str, port: int, path: str, body: bytes | None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: application/json"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")


_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")


def parse_http_reply(buf: bytes | bytearray, eof: bool) -> tuple[int, bytes] | None:
    """(status, body) once `buf` holds a whole reply; None if more bytes are needed; WireError if it
    can never be one. Handles Content-Length, chunked and close-delimited bodies, skips 1xx replies."""
    start = 0
    for _ in range(MAX_INTERIM_REPLIES + 1):
        end = buf.find(b"\r\n\r\n", start, start + MAX_HTTP_HEAD_BYTES + 4)
        if end < 0:
            if len(buf) - start >= MAX_HTTP_HEAD_BYTES + 4:
                raise WireError(f"HTTP status line and headers longer than {MAX_HTTP_HEAD_BYTES} bytes")
            if eof:
                raise WireError(f"connection closed inside the HTTP headers ({len(buf) - start} bytes)")
            return None
        lines = bytes(buf[start:end]).split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        if not m:
            raise WireError(f"bad HTTP status line {lines[0][:60]!r}")
        status = int(m.group(1))
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or not name.isascii():
                raise WireError(f"bad HTTP header line {line[:60]!r}")
            key, value_s = name.decode("ascii").lower(), value.strip().decode("latin-1")
            if key in headers and headers[key] != value_s and key in ("content-length", "transfer-encoding"):
                raise WireError(f"conflicting {key} headers")
            headers[key] = value_s
        body_at = end + 4
        if 100 <= status < 200:  # interim reply (e.g. 100 Continue): the real one follows
            start = body_at
            continue
        break
    else:
        raise WireError(f"more than {MAX_INTERIM_REPLIES} interim (1xx) HTTP replies")
    if status in (204, 304):
        return status, b""
    te = headers.get("transfer-encoding", "").lower()
    if te and te != "chunked":
        raise WireError(f"unsupported Transfer-Encoding {te[:40]!r}")
    if te == "chunked":
        return _chunked(buf, body_at, status, eof)
    if "content-length" in headers:
        cl = headers["content-length"]
        if not (cl.isascii() and cl.isdigit() and len(cl) <= 12) or int(cl) > MAX_HTTP_REPLY_BYTES:
            raise WireError(f"Content-Length {cl[:40]!r}; allowed: 0 to {MAX_HTTP_REPLY_BYTES}")
        n = int(cl)
        if len(buf) - body_at >= n:
            return status, bytes(buf[body_at:body_at + n])
        if eof:
            raise WireError(f"connection closed after {len(buf) - body_at} of {n} body bytes")
        return None
    if len(buf) - body_at > MAX_HTTP_REPLY_BYTES:
        raise WireError(f"HTTP body longer than {MAX_HTTP_REPLY_BYTES} bytes")
    return (status, bytes(buf[body_at:])) if eof else None


def _chunked(buf: bytes | bytearray, at: int, status: int, eof: bool) -> tuple[int, bytes] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            if len(buf) - at > 1024:
                raise WireError("chunk-size line too long")
            break
        size_s = bytes(buf[at:eol]).split(b";")[0].strip()
        if not size_s or len(size_s) > 8 or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
            raise WireError(f"bad chunk size {size_s[:20]!r}")
        size = int(size_s, 16)
        if len(body) + size > MAX_HTTP_REPLY_BYTES:
            raise WireError(f"HTTP body longer than {MAX_HTTP_REPLY_BYTES} bytes")
        if size == 0:
            return status, bytes(body)  # trailers, if any, are not needed
        if len(buf) < eol + 2 + size + 2:
            break
        if buf[eol + 2 + size:eol + 4 + size] != b"\r\n":
            raise WireError("chunk not followed by CRLF")
        body += buf[eol + 2:eol + 2 + size]
        at = eol + 4 + size
    if eof:
        raise WireError("connection closed inside a chunked body")
    return None


# ---- ZMQ Interface messages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """One checked ZMQ Interface message; `values` only for data messages (float32, maybe non-finite)."""

    message_num: int
    is_data: bool
    stream: str = ""
    channel_num: int = -1
    sample_num: int = 0
    values: np.ndarray | None = None


def parse_message(frames: list[bytes]) -> Message:
    """[envelope, JSON header(, payload)] -> Message, or WireError saying what is wrong."""
    if not 2 <= len(frames) <= MAX_FRAMES or frames[0] not in (ENVELOPE_DATA, ENVELOPE_EVENT):
        raise WireError(f"malformed ZMQ message ({len(frames)} frames, envelope {frames[0][:8]!r})")
    header = decode_json(frames[1], "malformed ZMQ message header", MAX_HEADER_JSON_BYTES)
    num = int_in(field(header, "message_num", (int, float), "malformed ZMQ message header"), *INT64,
                 "malformed ZMQ message header: message_num")
    kind = header.get("type")
    if frames[0] != ENVELOPE_DATA or kind != "data":
        return Message(num, False)
    what = "malformed data header"
    content = field(header, "content", dict, what)
    stream = field(content, "stream", str, what)
    ch = int_in(field(content, "channel_num", (int, float), what), 0, MAX_STREAM_CHANNELS - 1, f"{what}: channel_num")
    n = int_in(field(content, "num_samples", (int, float), what), 0, MAX_SAMPLES_PER_MESSAGE, f"{what}: num_samples")
    first = int_in(field(content, "sample_num", (int, float), what), 0, INT64[1] - n, f"{what}: sample_num")
    size = header.get("data_size", 4 * n)
    if len(frames) != 3 or len(frames[2]) != 4 * n or isinstance(size, bool) or size != 4 * n:
        raise WireError(f"partial data message for channel {ch} at sample {first}")
    return Message(num, True, stream, ch, first, np.frombuffer(frames[2], dtype="<f4"))
