"""ZMQ PUB stream of run events: multipart [topic, JSON]. Subscribers filter by topic prefix."""

from __future__ import annotations

import json

import zmq


class Publisher:
    """Publishes `trial`, `session_start`, `session_end` and `overrun` messages; never blocks the loop."""

    def __init__(self, endpoint: str):
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 10000)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)

    def publish(self, topic: str, payload: dict) -> None:
        try:
            self._sock.send_multipart([topic.encode(), json.dumps(payload).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses messages; the store has everything

    def close(self) -> None:
        self._sock.close()
