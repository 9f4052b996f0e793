"""Hostile peers written here, on loopback: HTTP servers that answer the Open Ephys driver with what no GUI
sends (issue 11 item 10). Each must give a DeviceError within the driver's `timeout_s`."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from rigctl.drivers.openephys import OpenEphysGUI
from rigctl.errors import DeviceError

TIMEOUT_S = 1.0
MARGIN_S = 0.5


class HostileHTTP:
    """Accepts connections, reads each request's head, then writes `reply` and closes; with `drip_s`, one
    byte every `drip_s`, and with `endless` the reply over and over (for at most `drip_for_s`)."""

    def __init__(self, reply: bytes, drip_s: float = 0.0, endless: bool = False, drip_for_s: float = 12.0):
        self.reply, self.drip_s, self.endless, self.drip_for_s = reply, drip_s, endless, drip_for_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                if not self.drip_s:
                    conn.sendall(self.reply)
                    return
                end = time.monotonic() + self.drip_for_s
                for i in range(10 ** 9 if self.endless else len(self.reply)):
                    if self.stop.is_set() or time.monotonic() > end:
                        return
                    conn.sendall(self.reply[i % len(self.reply):i % len(self.reply) + 1])
                    self.stop.wait(self.drip_s)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(2.0)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def processors(stream: dict) -> bytes:
    zmq_interface = {"id": 101, "name": "ZMQ Interface", "streams": [stream],
                     "parameters": [{"name": "data_port", "type": "int", "value": "5556"}]}
    return json.dumps({"processors": [zmq_interface]}).encode()


GOOD_STREAM = {"name": "s", "source_id": 100, "sample_rate": 25000.0, "channel_count": 16, "parameters": []}


@pytest.mark.parametrize("reply, drip_s, message", [
    (b"garbage\r\n\r\n", 0.0, "bad HTTP status line"),  # http.client: BadStatusLine
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", 0.0, "closed after 2 of 100"),  # IncompleteRead
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n{}", 0.0, "longer than"),  # LineTooLong
    (ok(processors({k: v for k, v in GOOD_STREAM.items() if k != "sample_rate"})), 0.0, "sample_rate"),  # KeyError
    (ok(b'{"processors": [1, 2, 3]}'), 0.0, "no 'ZMQ Interface'"),  # AttributeError
    (ok(b'{"processors": "ZMQ Interface"}'), 0.0, "'processors' is str"),
    (ok(processors(dict(GOOD_STREAM, channel_count=1e400))), 0.0, "channel_count"),  # OverflowError
    (ok(processors(dict(GOOD_STREAM, sample_rate=float("nan")))), 0.0, "sample_rate"),
    (ok(b"[" * 100_000 + b"]" * 100_000), 0.0, "not JSON"),  # RecursionError
    (ok(b"[1, 2]"), 0.0, "not an object"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", 0.3, "no complete reply within 1.0 s"),  # dripping headers
], ids=["bad_status_line", "incomplete_read", "line_too_long", "missing_key", "processors_not_objects",
        "processors_a_string", "infinite_channel_count", "nan_sample_rate", "deep_nesting", "json_not_an_object",
        "one_header_byte_per_0.3_s"])
def test_hostile_http_replies_are_device_errors_within_the_timeout(reply, drip_s, message):
    server = HostileHTTP(reply, drip_s, endless=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match=message):
            OpenEphysGUI("127.0.0.1", server.port, timeout_s=TIMEOUT_S)
        assert time.monotonic() - t0 < TIMEOUT_S + MARGIN_S
    finally:
        server.close()


def test_a_reply_dripped_slowly_but_complete_in_time_is_accepted():
    """The deadline is per exchange, not per byte: a whole reply within it is fine however it arrives."""
    body = processors(GOOD_STREAM)
    assert len(ok(body)) < 400
    server = HostileHTTP(ok(body), drip_s=0.001)  # about 0.5 s per reply, one byte at a time
    try:
        drv = OpenEphysGUI("127.0.0.1", server.port, timeout_s=TIMEOUT_S, connect=False)
        reply = drv.http("/api/processors")
        assert reply["processors"][0]["streams"][0]["sample_rate"] == 25000.0
        drv.connect()
        assert (drv.fs, drv.stream_channels, drv.data_port) == (25000.0, 16, 5556)
    finally:
        server.close()
