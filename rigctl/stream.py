"""ZMQ PUB stream of run events: multipart [topic, JSON]. Subscribers filter by topic prefix."""

from __future__ import annotations

import json
import re

import zmq

from rigctl.errors import RigctlError

ENDPOINT = re.compile(r"(tcp://[A-Za-z0-9.\-\[\]:*]+:\d{1,5}|ipc://[^\s]{1,200})")


class StreamError(RigctlError):
    """The stream endpoint is malformed or cannot be bound."""


class Publisher:
    """Publishes `trial`, `session_start`, `session_end` and `overrun` messages; never blocks the loop."""

    def __init__(self, endpoint: str):
        if not ENDPOINT.fullmatch(endpoint) or (endpoint.startswith("tcp://")
                                                and not 0 < int(endpoint.rsplit(":", 1)[1]) <= 65535):
            raise StreamError(f"--stream {endpoint[:80]!r}: allowed: tcp://HOST:PORT (port 1-65535, e.g. "
                              "tcp://127.0.0.1:5600) or ipc://PATH")
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 10000)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close()
            raise StreamError(f"--stream {endpoint}: cannot bind ({exc})") from exc

    def publish(self, topic: str, payload: dict) -> None:
        try:
            self._sock.send_multipart([topic.encode(), json.dumps(payload).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses messages; the store has everything

    def close(self) -> None:
        self._sock.close()
