"""The Open Ephys GUI (v1.0.x) as a remote client sees it, serving a simulated culture: the HTTP API
(status, processors, recording info, messages) and the ZMQ Interface plugin's data stream.

Modelled on plugin-GUI v1.0.1 and open-ephys-plugins/zmq-interface (../shared/spec/devices.md section 3):
one multipart DATA message per channel per processing block (`DATA\\0`, a pretty-printed JSON header,
float32 µV), `message_num` counting every message from acquisition start (reset to 0 at start and
incremented before each send, so the first is 1: ZmqInterface.cpp), a REP socket on data_port+1
answering heartbeats. The GUI's HTTP server binds all interfaces; the emulator binds loopback only.
Not emulated (refused, never faked): RECORD mode (nothing is written to disk), the signal-chain edits
(add/delete/clear processors), config load/save, TTL and spike messages.

Time: accelerated (default) publishes with back-pressure (XPUB, no drops, a small high-water mark), so
production waits for the subscriber; `realtime=True` paces blocks to the wall clock and drops for slow
subscribers like a PUB socket does.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np
import zmq

from rigctl.drivers import _openephys_wire as ow

SOURCE_ID, ZMQ_ID, RECORD_ID = 100, 101, 102


@dataclass
class OpenEphysFaults:
    """Fault injection on the GUI side."""

    stalled: bool = False  # acquisition keeps its mode but no more data is published
    http_down: bool = False  # the HTTP server answers 503 to everything
    garbage_next: list[bytes] | None = None  # published as-is before the next data message
    drop_next: int = 0  # messages skipped (message_num still counts them, as when PUB drops)
    truncate_next_payload: int | None = None  # the next data message carries only this many payload bytes
    rewrite: Callable[[list[bytes]], list[bytes]] | None = None  # every data message's frames -> what is sent
    extra: dict = field(default_factory=dict)


class OpenEphysEmulator:
    """`backend` is the culture (or a StimulusBus); channels are CH1..CHn of one stream."""

    def __init__(self, backend, *, host: str = "127.0.0.1", http_port: int = 0, data_port: int = 0,
                 block_samples: int = 500, stream: str = "example_data", realtime: bool = False):
        self.backend = backend
        self.fs = float(backend.sample_rate_hz)
        self.n = int(backend.n_channels)
        self.host = host
        self.block_samples = block_samples
        self.stream = stream
        self.realtime = realtime
        self.faults = OpenEphysFaults()
        self.mode = "IDLE"
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self.ctx = zmq.Context.instance()
        self.pub = self.ctx.socket(zmq.PUB if realtime else zmq.XPUB)
        if not realtime:
            self.pub.setsockopt(zmq.XPUB_NODROP, 1)  # back-pressure instead of drops
            self.pub.setsockopt(zmq.SNDHWM, self.n)
            self.pub.setsockopt(zmq.SNDBUF, 64 * 1024)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.rep = self.ctx.socket(zmq.REP)
        self.rep.setsockopt(zmq.LINGER, 0)
        self.data_port = self._bind(data_port)
        self._subscribers = 0
        self._stop = threading.Event()
        self._acq_stop = threading.Event()
        self._acq_stop.set()
        self._acq_thread: threading.Thread | None = None
        self.message_num = 0
        self.heartbeats: list[dict] = []
        self.http = ThreadingHTTPServer((host, http_port), self._handler())
        self.http.daemon_threads = True
        self.http_port = self.http.server_address[1]
        self._threads = [threading.Thread(target=self.http.serve_forever, name="oe-http", daemon=True),
                         threading.Thread(target=self._serve_rep, name="oe-rep", daemon=True)]

    def _bind(self, port: int) -> int:
        """PUB on `port`, REP (heartbeats) on `port` + 1, as the plugin does; 0 = a free pair."""
        if port:
            self.pub.bind(f"tcp://{self.host}:{port}")
            self.rep.bind(f"tcp://{self.host}:{port + 1}")
            return port
        for _ in range(50):
            p = self.pub.bind_to_random_port(f"tcp://{self.host}", min_port=20000, max_port=60000)
            try:
                self.rep.bind(f"tcp://{self.host}:{p + 1}")
                return p
            except zmq.ZMQError:
                self.pub.unbind(f"tcp://{self.host}:{p}")
        raise OSError("no free pair of ports for the ZMQ Interface")

    def start(self) -> "OpenEphysEmulator":
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._set_mode("IDLE")
        self.http.shutdown()
        self.http.server_close()
        for t in self._threads:
            t.join(timeout=2.0)
        # a ZMQ socket closed under a thread still using it (past the joins' timeout on a loaded machine) can abort
        # the process inside libzmq: a socket whose thread is still alive is left open (the thread is a daemon)
        if self._acq_thread is None or not self._acq_thread.is_alive():
            self.pub.close(0)
        if not self._threads[1].is_alive():
            self.rep.close(0)

    # ---- state ---------------------------------------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        with self.lock:
            if mode == self.mode:
                return
            if self.mode == "IDLE" and mode == "ACQUIRE":
                self.message_num = 0
                self._acq_stop = threading.Event()
                self.backend.start()
                self._acq_thread = threading.Thread(target=self._acquire, args=(self._acq_stop,),
                                                    name="oe-acquire", daemon=True)
                self.mode = mode
                self._acq_thread.start()
                return
            if mode == "IDLE":
                self._acq_stop.set()
            self.mode = mode
        if mode == "IDLE" and self._acq_thread is not None and self._acq_thread is not threading.current_thread():
            self._acq_thread.join(timeout=2.0)

    def processors(self) -> dict:
        stream = {"name": self.stream, "source_id": SOURCE_ID, "sample_rate": self.fs, "channel_count": self.n,
                  "parameters": []}
        return {"processors": [
            {"id": SOURCE_ID, "name": "File Reader", "parameters": [], "streams": [stream], "predecessor": None},
            {"id": ZMQ_ID, "name": "ZMQ Interface", "streams": [stream], "predecessor": SOURCE_ID,
             "parameters": [{"name": "data_port", "type": "int", "value": str(self.data_port)}]},
            {"id": RECORD_ID, "name": "Record Node", "parameters": [], "streams": [stream], "predecessor": ZMQ_ID}]}

    def recording(self) -> dict:
        return {"parent_directory": "", "base_text": "", "prepend_text": "", "append_text": "",
                "default_record_engine": "BINARY",
                "record_nodes": [{"node_id": RECORD_ID, "parent_directory": "", "record_engine": "BINARY",
                                  "experiment_number": 1, "recording_number": 0, "is_synchronized": True}]}

    # ---- HTTP ----------------------------------------------------------------------------------------------------
    def _handler(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: tests and `rigctl emulate` print their own lines
                pass

            def _reply(self, code: int, body, content_type: str = "application/json") -> None:
                data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if emu.faults.http_down:
                    return self._reply(503, "server unavailable", "text/plain")
                path = self.path.rstrip("/")
                if path == "/api/status":
                    return self._reply(200, {"mode": emu.mode})
                if path == "/api/processors":
                    return self._reply(200, emu.processors())
                if path.startswith("/api/processors/"):
                    parts = path.split("/")[3:]
                    procs = {p["id"]: p for p in emu.processors()["processors"]}
                    try:
                        proc = procs[int(parts[0])]
                    except (ValueError, KeyError):
                        return self._reply(404, "processor not found", "text/plain")
                    if len(parts) == 1:
                        return self._reply(200, proc)
                    if parts[1] == "parameters":
                        if len(parts) == 2:
                            return self._reply(200, {"parameters": proc["parameters"]})
                        for p in proc["parameters"]:
                            if p["name"] == parts[2]:
                                return self._reply(200, p)
                    return self._reply(404, "not found", "text/plain")
                if path == "/api/recording":
                    return self._reply(200, emu.recording())
                return self._reply(404, "unknown endpoint", "text/plain")

            def do_PUT(self):
                if emu.faults.http_down:
                    return self._reply(503, "server unavailable", "text/plain")
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except json.JSONDecodeError:
                    return self._reply(400, "malformed JSON", "text/plain")
                path = self.path.rstrip("/")
                if path == "/api/status":
                    mode = body.get("mode") if isinstance(body, dict) else None
                    if mode not in ow.MODES:
                        return self._reply(400, "missing or invalid mode", "text/plain")
                    if mode == "RECORD":
                        return self._reply(400, "RECORD is not emulated by rigctl's Open Ephys emulator",
                                           "text/plain")
                    emu._set_mode(mode)
                    return self._reply(200, {"mode": emu.mode})
                if path == "/api/message":
                    if not isinstance(body, dict) or "text" not in body:
                        return self._reply(400, "missing text", "text/plain")
                    emu.messages.append(str(body["text"]))
                    return self._reply(200, {"mode": emu.mode})
                return self._reply(404, "unknown endpoint", "text/plain")

        return Handler

    # ---- ZMQ ----------------------------------------------------------------------------------------------------
    def _serve_rep(self) -> None:
        poller = zmq.Poller()
        poller.register(self.rep, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            try:
                raw = self.rep.recv()
                try:
                    msg = json.loads(raw)
                    reply = "heartbeat received" if msg.get("type") == "heartbeat" else "message correctly parsed"
                    self.heartbeats.append(msg)
                except (json.JSONDecodeError, AttributeError):
                    reply = "JSON message could not be read"
                self.rep.send_string(reply)
            except zmq.ZMQError:
                return

    def _wait_for_subscriber(self, stop: threading.Event) -> bool:
        """XPUB: (un)subscription messages tell whether anyone listens (accelerated mode only)."""
        while not stop.is_set():
            while self.pub.poll(0, zmq.POLLIN):
                msg = self.pub.recv()
                self._subscribers += 1 if msg[:1] == b"\x01" else -1
            if self._subscribers > 0:
                return True
            self.pub.poll(20, zmq.POLLIN)
        return False

    def _acquire(self, stop: threading.Event) -> None:
        if not self.realtime and not self._wait_for_subscriber(stop):
            return
        buffer = np.empty((0, self.n), np.float32)
        sample_num = int(self.backend.now_sample)
        first0, wall0 = sample_num, time.monotonic()
        scale = np.float32(self.backend.uV_per_bit)
        while not stop.is_set():
            if self.faults.stalled:
                stop.wait(0.005)
                continue
            while len(buffer) < self.block_samples:
                chunk = self.backend.read()
                if chunk.samples.shape[1] != self.n:
                    self.errors.append("the culture serves no voltage traces (events mode)")
                    return
                buffer = np.concatenate([buffer, chunk.samples.astype(np.float32) * scale])
            block, buffer = buffer[:self.block_samples], buffer[self.block_samples:]
            if self.realtime:
                due = wall0 + (sample_num + self.block_samples - first0) / self.fs
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
            now_ms = int(time.time() * 1000)
            for ch in range(self.n):
                self.message_num += 1  # the plugin counts before sending: the first message is number 1
                if not self._publish(ow.data_message(self.message_num, self.stream, ch, f"CH{ch + 1}", sample_num,
                                                     self.fs, block[:, ch], now_ms), stop):
                    return
            sample_num += self.block_samples

    def _publish(self, frames: list[bytes], stop: threading.Event) -> bool:
        f = self.faults
        if f.rewrite is not None:
            frames = f.rewrite(frames)
        if f.garbage_next is not None:
            frames, f.garbage_next = f.garbage_next, None  # a corrupt message in place of this one
        if f.truncate_next_payload is not None and len(frames) == 3:
            frames = frames[:2] + [frames[2][:f.truncate_next_payload]]
            f.truncate_next_payload = None
        if f.drop_next > 0:
            f.drop_next -= 1
            return True
        while not stop.is_set():
            try:
                self.pub.send_multipart(frames, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if self.realtime:
                    return True  # PUB semantics: a slow subscriber loses the message
                stop.wait(0.0005)
            except zmq.ZMQError:
                return False
        return False
