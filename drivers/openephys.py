"""Open Ephys GUI (v1.0.x) as a rigctl Amplifier: acquisition started and stopped over the GUI's HTTP API,
data from the ZMQ Interface plugin's stream.

The data port is read from the ZMQ Interface processor's `data_port` parameter (GET /api/processors), so
a rig file names only the GUI's address. One block = one DATA message per channel with the same
`sample_num`; a block is returned once every selected channel has arrived. Gaps in `message_num` (the
PUB socket drops for slow readers), jumps in `sample_num`, malformed messages and silence are DeviceErrors:
the loop then stops stimulating and keeps what it has recorded. Only before the first block is delivered is an
incomplete block dropped (the subscription joined mid-block) rather than a fault.

Hostile or broken peers are bounded, not trusted: each HTTP exchange (connect, request, whole reply) has
one total deadline of `timeout_s` (a server dripping bytes cannot stretch it) and a size limit; JSON is
size-limited, deep nesting is a fault, and every field used is type- and range-checked. `read()` returns
a block or raises within its deadline even while messages keep arriving that never complete one, and at
most `MAX_PENDING_BLOCKS` incomplete blocks are held. A NaN or infinite sample is a DeviceError naming
the channel and sample (the GUI sends finite µV; converting it would fake a value).
Wire facts: ../shared/spec/devices.md section 3 (checked against plugin-GUI v1.0.1, zmq-interface main).
"""

from __future__ import annotations

import json
import math
import socket
import time

import numpy as np
import zmq

from rigctl.drivers import _openephys_wire as ow
from rigctl.drivers.base import Amplifier
from rigctl.errors import DeviceError
from rigctl.layout import ElectrodeLayout
from rigctl.types import Chunk

START_TIMEOUT_S = 10.0  # the first message after ACQUIRE may take a while (processor start-up, ZMQ join)


class OpenEphysGUI(Amplifier):
    """`channels[i]` is the stream channel index (`channel_num`, 0-based) of electrode i."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = ow.HTTP_PORT, *, channels: list[int] | None = None,
                 stream: str | None = None, uV_per_bit: float = 0.195, timeout_s: float = 2.0,
                 record: bool = False, layout: ElectrodeLayout | None = None, connect: bool = True,
                 data_url: str | None = None):
        """`data_url`: the ZMQ address to subscribe to instead of tcp://host:<data_port> (a proxy, or the
        device-reply fuzzer's in-process socket)."""
        self.host = host
        self.data_url = data_url
        self.http_port = http_port
        self.stream = stream
        self._uV_per_bit = float(uV_per_bit)
        self.timeout_s = timeout_s
        self.record = record
        self._channels_arg = channels
        self._layout_arg = layout
        self.ctx = zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self._pending: dict[int, dict[int, np.ndarray]] = {}  # sample_num -> channel_num -> values
        self._pending_bytes = 0
        self._expected_msg: int | None = None
        self._next_sample: int | None = None
        self.fs = 0.0
        self.data_port = 0
        self.stream_channels = 0
        self.clock = 0
        self.faulted: str | None = None
        self.clipped_samples = 0
        if connect:
            self.connect()

    def _fault(self, what: str) -> DeviceError:
        self.faulted = what
        return DeviceError(f"Open Ephys GUI at {self.host}:{self.http_port}: {what}")

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def http(self, path: str, payload: dict | None = None) -> dict:
        """GET (no payload) or PUT JSON, as the GUI's API expects -> the reply's JSON object.

        One connection per request, and one deadline (`timeout_s`) for connecting, sending and the whole
        reply; DeviceError with the GUI's reason for a non-200 status, and for anything that is not HTTP.
        """
        method = "GET" if payload is None else "PUT"
        body = None if payload is None else json.dumps(payload).encode()
        request = ow.http_request(method, self.host, self.http_port, path, body)
        deadline = time.monotonic() + self.timeout_s
        try:
            sock = socket.create_connection((self.host, self.http_port), timeout=self.timeout_s)
        except OSError as exc:
            raise self._fault(f"{method} {path} failed ({exc}); is the GUI running with its HTTP server enabled "
                              "(File menu)?") from exc
        try:
            reply = self._exchange(sock, request, deadline)
        except ow.WireError as exc:
            raise self._fault(f"{method} {path}: not an HTTP reply the GUI sends ({exc})") from exc
        except OSError as exc:  # socket.timeout included
            if time.monotonic() >= deadline:
                raise self._fault(f"{method} {path}: no complete reply within {self.timeout_s} s") from exc
            raise self._fault(f"{method} {path} failed ({exc})") from exc
        finally:
            sock.close()
        if reply is None:
            raise self._fault(f"{method} {path}: no complete reply within {self.timeout_s} s")
        status, data = reply
        if status != 200:
            reason = data[:200].decode("utf-8", errors="replace")
            raise self._fault(f"{method} {path} -> HTTP {status}: {reason}")
        try:
            obj = ow.decode_json(data or b"{}", f"{method} {path}", ow.MAX_HTTP_REPLY_BYTES)
        except ow.WireError as exc:
            raise self._fault(f"{exc}: the reply is not JSON") from exc
        if not isinstance(obj, dict):
            raise self._fault(f"{method} {path}: the reply is a JSON {type(obj).__name__}, not an object")
        return obj

    @staticmethod
    def _exchange(sock: socket.socket, request: bytes, deadline: float) -> tuple[int, bytes] | None:
        """Send `request`, read until a whole reply -> (status, body); None when the deadline passes."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        sock.sendall(request)
        buf, eof = bytearray(), False
        while True:
            reply = ow.parse_http_reply(buf, eof)
            if reply is not None:
                return reply
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)  # every read gets only what is left of the exchange's deadline
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return None
            eof = not data
            buf += data

    def connect(self) -> None:
        """Find the ZMQ Interface, its stream and data port."""
        reply = self.http("/api/processors")
        try:
            self._discover(reply)
        except ow.WireError as exc:
            raise self._fault(f"GET /api/processors: unexpected reply ({exc})") from exc
        n = len(self.channels)
        if self._layout_arg is not None:
            self._layout = self._layout_arg
        elif n % 8 == 0 and n:
            self._layout = ElectrodeLayout.grid(n // 8, 8, 200.0)
        else:
            self._layout = ElectrodeLayout(np.zeros((n, 2)), tuple(f"CH{c + 1}" for c in self.channels))
        self._col = {c: i for i, c in enumerate(self.channels)}
        self.faulted = None

    def _discover(self, reply: dict) -> None:
        """The ZMQ Interface's data port and stream from GET /api/processors, every field checked."""
        what = "processors"
        procs = [p for p in ow.field(reply, "processors", list, what) if isinstance(p, dict)]
        zmq_procs = [p for p in procs if p.get("name") == "ZMQ Interface"]
        if not zmq_procs:
            raise self._fault("no 'ZMQ Interface' processor in the signal chain; add the ZMQ Interface plugin")
        proc = zmq_procs[0]
        params = proc.get("parameters", [])
        if not isinstance(params, list):
            raise ow.WireError("ZMQ Interface: 'parameters' is not a list")
        port = ow.DATA_PORT
        for p in params:
            if isinstance(p, dict) and p.get("name") == "data_port":
                port = ow.int_in(p.get("value"), *ow.DATA_PORT_RANGE, "ZMQ Interface data_port")
        self.data_port = port
        all_streams = proc.get("streams", [])
        if not isinstance(all_streams, list):
            raise ow.WireError("ZMQ Interface: 'streams' is not a list")
        all_streams = [s for s in all_streams if isinstance(s, dict)]
        streams = all_streams if self.stream is None else [s for s in all_streams if s.get("name") == self.stream]
        if not streams:
            names = [s.get("name") for s in all_streams]
            raise self._fault(f"stream {self.stream!r} not found; allowed: {names}")
        s = streams[0]
        self.stream = ow.field(s, "name", str, "stream")
        self.fs = ow.float_in(s.get("sample_rate"), *ow.SAMPLE_RATE_RANGE, f"stream {self.stream!r} sample_rate")
        self.stream_channels = ow.int_in(s.get("channel_count"), 1, ow.MAX_STREAM_CHANNELS,
                                         f"stream {self.stream!r} channel_count")
        self.channels = list(range(self.stream_channels)) if self._channels_arg is None else list(self._channels_arg)
        bad = [c for c in self.channels if not 0 <= c < self.stream_channels]
        if bad:
            raise self._fault(f"channel(s) {bad} not in stream {self.stream!r}; allowed: 0..{self.stream_channels - 1}")

    # ---- Amplifier -----------------------------------------------------------------------------------------------
    @property
    def sample_rate_hz(self) -> float:
        return self.fs

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def layout(self) -> ElectrodeLayout:
        return self._layout

    @property
    def uV_per_bit(self) -> float:
        return self._uV_per_bit

    def start(self) -> None:
        if self._sub is not None:
            return
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 2 * max(1, self.stream_channels))  # bounded latency: ~2 blocks queued
        sub.setsockopt(zmq.RCVBUF, 128 * 1024)
        sub.setsockopt(zmq.MAXMSGSIZE, ow.MAX_FRAME_BYTES)  # a larger frame disconnects the peer: silence
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        url = self.data_url or f"tcp://{self.host}:{self.data_port}"
        try:
            sub.connect(url)
        except zmq.ZMQError as exc:
            sub.close(0)
            raise self._fault(f"cannot subscribe to {url} ({exc})") from exc
        self._sub = sub
        self._pending.clear()
        self._pending_bytes = 0
        self._expected_msg = None
        self._next_sample = None
        mode = "RECORD" if self.record else "ACQUIRE"
        try:
            got = self.http("/api/status", {"mode": mode}).get("mode")
        except DeviceError:
            self.stop()
            raise
        if got != mode:
            self.stop()
            raise self._fault(f"asked for {mode}, the GUI is in {got}")

    def stop(self) -> None:
        if self._sub is not None:
            try:
                self.http("/api/status", {"mode": "IDLE"})
            except DeviceError:
                pass
            self._sub.close(0)
            self._sub = None

    def message(self, text: str) -> None:
        """Broadcast a text message into the GUI's signal chain (e.g. to mark a stimulus in its recording)."""
        self.http("/api/message", {"text": text})

    def _receive(self, deadline: float, wait_s: float, got_any: bool) -> None:
        """Take one message (waiting at most until `deadline`) into the pending blocks."""
        left = deadline - time.monotonic()
        try:
            frames = self._next_frames(left)
        except zmq.ZMQError as exc:  # the socket closed or the context ended under this read
            raise self._fault(f"data socket failed ({exc})") from exc
        if frames is None:
            if got_any:  # messages came, but not a whole block: a stall mid-block or a stream of strays
                waiting = {s: sorted(set(self.channels) - set(c))[:8] for s, c in sorted(self._pending.items())[:3]}
                raise self._fault(f"no complete block within {wait_s} s (acquisition stalled or stopped, or only "
                                  f"messages that complete no block; sample -> missing channels {waiting})")
            raise self._fault(f"no data for {wait_s} s (acquisition stalled or stopped)")
        try:
            msg = ow.parse_message(frames)
        except ow.WireError as exc:
            raise self._fault(str(exc)) from exc
        num = msg.message_num
        if self._expected_msg is not None and num != self._expected_msg:
            if num == 1 and self._expected_msg > 1:  # the plugin restarts its count at acquisition start
                raise self._fault(f"acquisition restarted in the GUI (message_num back to 1 after "
                                  f"{self._expected_msg - 1}); the recording is not continuous")
            raise self._fault(f"message_num jumped from {self._expected_msg} to {num}: "
                              f"{num - self._expected_msg} message(s) lost")
        self._expected_msg = num + 1
        if not msg.is_data or msg.stream != self.stream or msg.channel_num not in self._col or not len(msg.values):
            return  # events, spikes, other streams and channels are not this amplifier's business
        ch, first, values = msg.channel_num, msg.sample_num, msg.values
        if not np.all(np.isfinite(values)):
            i = int(np.argmin(np.isfinite(values)))
            raise self._fault(f"channel {ch} sample {first + i} is {values[i]} (not a finite µV value)")
        if self._next_sample is not None and first < self._next_sample:
            raise self._fault(f"channel {ch} sent sample {first}, before the next expected {self._next_sample}")
        block = self._pending.setdefault(first, {})
        if ch in block:
            raise self._fault(f"channel {ch} of the block at sample {first} arrived twice")
        block[ch] = values
        self._pending_bytes += values.nbytes
        if len(self._pending) > ow.MAX_PENDING_BLOCKS or self._pending_bytes > ow.MAX_PENDING_BYTES:
            oldest = min(self._pending)
            missing = sorted(set(self.channels) - set(self._pending[oldest]))
            raise self._fault(f"{len(self._pending)} blocks ({self._pending_bytes} bytes) wait for channels; "
                              f"the block at sample {oldest} still lacks channel(s) {missing[:8]}")

    def _next_frames(self, left_s: float) -> list[bytes] | None:
        """The next message's frames (at most MAX_FRAMES + 1 kept), or None if none came within `left_s`."""
        if left_s <= 0 or not self._sub.poll(max(1, math.ceil(left_s * 1000)), zmq.POLLIN):
            return None
        frames = [self._sub.recv()]
        while self._sub.getsockopt(zmq.RCVMORE):
            frame = self._sub.recv()
            if len(frames) < ow.MAX_FRAMES + 1:
                frames.append(frame)  # later frames are read and dropped: one message stays one message
        return frames

    def read(self) -> Chunk:
        if self._sub is None:
            raise self._fault("read() before start()")
        wait_s = self.timeout_s if self._expected_msg is not None else max(self.timeout_s, START_TIMEOUT_S)
        deadline = time.monotonic() + wait_s
        got_any = False
        while True:
            ready = [s for s, chans in self._pending.items() if len(chans) == len(self.channels)]
            if ready:
                break
            self._receive(deadline, wait_s, got_any)
            got_any = True
        first = min(ready)
        if self._next_sample is not None and first != self._next_sample:
            raise self._fault(f"sample_num jumped from {self._next_sample} to {first}")
        older = sorted(s for s in self._pending if s < first)
        if older and self._next_sample is not None:
            raise self._fault(f"block at sample {older[0]} is incomplete (a channel's message was lost)")
        for s in older:  # joining a stream in flight: the subscription missed their first channels (ZMQ's slow
            # joiner, or a GUI already acquiring); nothing was delivered yet, so the stream starts at `first`
            self._pending_bytes -= sum(v.nbytes for v in self._pending.pop(s).values())
        chans = self._pending.pop(first)
        self._pending_bytes -= sum(v.nbytes for v in chans.values())
        n = len(next(iter(chans.values())))
        out = np.empty((n, len(self.channels)), np.float32)
        for ch, values in chans.items():
            if len(values) != n:
                raise self._fault(f"channels of the block at sample {first} differ in length")
            out[:, self._col[ch]] = values
        raw = np.rint(out / np.float32(self._uV_per_bit))
        clipped = (raw > 32767) | (raw < -32768)
        self.clipped_samples += int(clipped.sum())
        samples = np.clip(raw, -32768, 32767).astype(np.int16)
        self._next_sample = first + n
        self.clock = first + n
        return Chunk(first, samples, self._uV_per_bit, self.fs)
