"""The run's live stream: a ZeroMQ PUB socket, schema version 1 (docs/stream.md).

Every message is multipart: [topic, JSON header] or, for binary topics, [topic, JSON header, bytes]. The
header always carries `v` (schema version), `seq` (per-publisher message number: a gap is a dropped message)
and `t` (sender's Unix time, s). Publishing never blocks the loop: a subscriber that reads too slowly loses
messages (ZeroMQ's high-water mark), the store has everything. A stream that leaves the machine can require
CURVE: only keys in the rig's allow-list may subscribe (rigctl.keys).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from rigctl.errors import RigctlError
from rigctl.keys import KeyPair
from rigctl.store import json_default

SCHEMA_VERSION = 1
ENDPOINT = re.compile(r"(tcp://[A-Za-z0-9.\-\[\]:*]+:(\d{1,5}|\*)|ipc://[^\s]{1,200})")
JSON_TOPICS = ("run_start", "status", "session_start", "trial", "session_end", "model", "overrun", "fault",
               "pause", "pause_end", "mark", "abort", "run_end")
BINARY_TOPICS = ("spikes", "raw")
SPIKE_DTYPES = ("<i8", "<i4")  # body: n sample indices, then n channel indices


class StreamError(RigctlError):
    """The stream endpoint is malformed or cannot be bound or reached."""


def check_endpoint(endpoint: str, flag: str = "--stream") -> str:
    port = endpoint.rsplit(":", 1)[-1]
    if not ENDPOINT.fullmatch(endpoint) or (endpoint.startswith("tcp://") and port != "*"
                                            and not 0 < int(port) <= 65535):
        raise StreamError(f"{flag} {endpoint[:80]!r}: allowed: tcp://HOST:PORT (port 1-65535 or *, e.g. "
                          "tcp://127.0.0.1:5600) or ipc://PATH")
    return endpoint


class _Keys:
    def __init__(self, clients: dict[bytes, str]):
        self.clients = clients

    def callback(self, domain: str, z85: bytes) -> bool:  # pyzmq hands the client's key in z85
        return z85 in self.clients


class Publisher:
    """Publishes the topics of docs/stream.md. `spikes_per_s`: the binary spike topic's message rate
    (0: off); each message holds at most `max_spikes` spikes (the rest are counted in `dropped`). `raw_per_s`:
    the binary raw topic's rate (0: off); each message is one whole chunk of int16 samples."""

    def __init__(self, endpoint: str, curve: tuple[KeyPair, dict[bytes, str]] | None = None,
                 spikes_per_s: float = 0.0, max_spikes: int = 20000, hwm: int = 10000, raw_per_s: float = 0.0):
        check_endpoint(endpoint)
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            server, clients = curve
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve_callback(domain="rigctl-stream", credentials_provider=_Keys(dict(clients)))
            self._sock.curve_secretkey = server.secret
            self._sock.curve_publickey = server.public
            self._sock.curve_server = True
            self._sock.zap_domain = b"rigctl-stream"
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise StreamError(f"--stream {endpoint}: cannot bind ({exc})") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.curve = curve is not None
        self._seq = 0
        self.dropped = 0  # messages the high-water mark refused (a slow or absent subscriber)
        self._spike_period_s = 1.0 / spikes_per_s if spikes_per_s > 0 else 0.0
        self._max_spikes = max_spikes
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._next_spikes_s = 0.0
        self._raw_period_s = 1.0 / raw_per_s if raw_per_s > 0 else 0.0
        self._next_raw_s = 0.0
        if not self._raw_period_s:
            self.raw = None  # the loop skips the call

    def _header(self, topic: str, payload: dict) -> bytes:
        self._seq += 1
        return json.dumps({"v": SCHEMA_VERSION, "topic": topic, "seq": self._seq, "t": round(time.time(), 6),
                           **payload}, default=json_default).encode()

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1  # a slow subscriber loses messages; the store has everything

    def publish(self, topic: str, payload: dict) -> None:
        self._send([topic.encode(), self._header(topic, payload)])

    def spikes(self, spikes) -> None:
        """Collect a chunk's spikes; send them as one binary message at most `spikes_per_s` times a second."""
        if not self._spike_period_s:
            return
        if len(spikes) and self._pending_n < self._max_spikes:
            self._pending.append((spikes.sample, spikes.channel))
            self._pending_n += len(spikes)
        now = time.monotonic()
        if now < self._next_spikes_s:
            return
        self._next_spikes_s = now + self._spike_period_s
        if not self._pending:
            return
        sample = np.concatenate([p[0] for p in self._pending]).astype(SPIKE_DTYPES[0])
        channel = np.concatenate([p[1] for p in self._pending]).astype(SPIKE_DTYPES[1])
        n = min(len(sample), self._max_spikes)
        header = self._header("spikes", {"n": n, "dropped": len(sample) - n, "dtypes": list(SPIKE_DTYPES)})
        self._send([b"spikes", header, sample[:n].tobytes() + channel[:n].tobytes()])
        self._pending, self._pending_n = [], 0

    def raw(self, first_sample: int, samples: np.ndarray) -> None:
        """One chunk of raw samples (int16 [n, channels]) at most `raw_per_s` times a second."""
        now = time.monotonic()
        if now < self._next_raw_s or samples.size == 0:
            return
        self._next_raw_s = now + self._raw_period_s
        data = np.ascontiguousarray(samples, dtype="<i2")
        header = self._header("raw", {"first_sample": int(first_sample), "n_samples": int(data.shape[0]),
                                      "n_channels": int(data.shape[1]), "dtype": "<i2"})
        self._send([b"raw", header, data.tobytes()])

    def close(self) -> None:
        self._sock.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


@dataclass(frozen=True)
class Message:
    topic: str
    header: dict[str, Any]
    body: bytes = b""

    def spike_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample int64 [n], channel int32 [n]) of a `spikes` message."""
        n = int(self.header["n"])
        sample = np.frombuffer(self.body, SPIKE_DTYPES[0], n)
        channel = np.frombuffer(self.body, SPIKE_DTYPES[1], n, offset=8 * n)
        return sample, channel

    def raw_samples(self) -> np.ndarray:
        """int16 [n_samples, n_channels] of a `raw` message."""
        h = self.header
        return np.frombuffer(self.body, h["dtype"]).reshape(int(h["n_samples"]), int(h["n_channels"]))


class Subscription:
    """A subscriber to a run's stream. `recv(timeout_s)` gives the next Message or None; iterate for ever."""

    def __init__(self, address: str, topics: tuple[str, ...] = ("",), server_key: bytes | None = None,
                 client: KeyPair | None = None):
        check_endpoint(address, "stream address")
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.linger = 0
        if server_key is not None:
            if client is None:
                raise StreamError("a CURVE stream needs the client's key pair (rigctl keys new)")
            self._sock.curve_serverkey = server_key
            self._sock.curve_publickey = client.public
            self._sock.curve_secretkey = client.secret
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._sock.connect(address)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        if timeout_s is not None and not self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart()
        header = json.loads(frames[1]) if len(frames) > 1 else {}
        return Message(frames[0].decode("utf-8", "replace"), header, frames[2] if len(frames) > 2 else b"")

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def subscribe(address: str, topics: tuple[str, ...] = ("",), server_key: bytes | None = None,
              client: KeyPair | None = None) -> Subscription:
    """Subscribe to a run's stream, e.g. `for m in subscribe("tcp://127.0.0.1:5600"): print(m.topic, m.header)`."""
    return Subscription(address, topics, server_key, client)
