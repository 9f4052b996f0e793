"""Open Ephys GUI (v1.0.x) as a rigctl Amplifier: acquisition started and stopped over the GUI's HTTP API,
data from the ZMQ Interface plugin's stream.

The data port is read from the ZMQ Interface processor's `data_port` parameter (GET /api/processors), so
a rig file names only the GUI's address. One block = one DATA message per channel with the same
`sample_num`; a block is returned once every selected channel has arrived. Gaps in `message_num` (the
PUB socket drops for slow readers), jumps in `sample_num`, malformed messages and silence are DeviceErrors:
the loop then stops stimulating and keeps what it has recorded.
Wire facts: ../shared/spec/devices.md section 3 (checked against plugin-GUI v1.0.1, zmq-interface main).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

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
                 record: bool = False, layout: ElectrodeLayout | None = None, connect: bool = True):
        self.host = host
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
        """GET (no payload) or PUT JSON, as the GUI's API expects; DeviceError with the GUI's reason."""
        url = f"http://{self.host}:{self.http_port}{path}"
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method="GET" if payload is None else "PUT")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            reason = exc.read().decode(errors="replace")[:200]
            raise self._fault(f"{req.method} {path} -> HTTP {exc.code}: {reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise self._fault(f"{req.method} {path} failed ({getattr(exc, 'reason', exc)}); is the GUI running "
                              "with its HTTP server enabled (File menu)?") from exc
        except json.JSONDecodeError as exc:
            raise self._fault(f"{path}: the reply is not JSON") from exc

    def connect(self) -> None:
        """Find the ZMQ Interface, its stream and data port."""
        procs = self.http("/api/processors").get("processors", [])
        zmq_procs = [p for p in procs if p.get("name") == "ZMQ Interface"]
        if not zmq_procs:
            raise self._fault("no 'ZMQ Interface' processor in the signal chain; add the ZMQ Interface plugin")
        proc = zmq_procs[0]
        params = {p["name"]: p["value"] for p in proc.get("parameters", [])}
        self.data_port = int(params.get("data_port", ow.DATA_PORT))
        streams = proc.get("streams", [])
        if self.stream is not None:
            streams = [s for s in streams if s.get("name") == self.stream]
        if not streams:
            names = [s.get("name") for s in proc.get("streams", [])]
            raise self._fault(f"stream {self.stream!r} not found; allowed: {names}")
        s = streams[0]
        self.stream = s["name"]
        self.fs = float(s["sample_rate"])
        self.stream_channels = int(s["channel_count"])
        self.channels = list(range(self.stream_channels)) if self._channels_arg is None else list(self._channels_arg)
        bad = [c for c in self.channels if not 0 <= c < self.stream_channels]
        if bad:
            raise self._fault(f"channel(s) {bad} not in stream {self.stream!r}; allowed: 0..{self.stream_channels - 1}")
        n = len(self.channels)
        if self._layout_arg is not None:
            self._layout = self._layout_arg
        elif n % 8 == 0 and n:
            self._layout = ElectrodeLayout.grid(n // 8, 8, 200.0)
        else:
            self._layout = ElectrodeLayout(np.zeros((n, 2)), tuple(f"CH{c + 1}" for c in self.channels))
        self._col = {c: i for i, c in enumerate(self.channels)}
        self.faulted = None

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
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://{self.host}:{self.data_port}")
        self._sub = sub
        self._pending.clear()
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

    def _receive(self) -> None:
        wait_s = self.timeout_s if self._expected_msg is not None else max(self.timeout_s, START_TIMEOUT_S)
        if not self._sub.poll(int(wait_s * 1000), zmq.POLLIN):
            raise self._fault(f"no data for {wait_s} s (acquisition stalled or stopped)")
        frames = self._sub.recv_multipart()
        if len(frames) < 2 or frames[0] not in (ow.ENVELOPE_DATA, ow.ENVELOPE_EVENT):
            raise self._fault(f"malformed ZMQ message ({len(frames)} frames, envelope {frames[0][:8]!r})")
        try:
            header = json.loads(frames[1])
            num = int(header["message_num"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self._fault(f"malformed ZMQ message header ({exc})") from exc
        if self._expected_msg is not None and num != self._expected_msg:
            if num == 1 and self._expected_msg > 1:  # the plugin restarts its count at acquisition start
                raise self._fault(f"acquisition restarted in the GUI (message_num back to 1 after "
                                  f"{self._expected_msg - 1}); the recording is not continuous")
            raise self._fault(f"message_num jumped from {self._expected_msg} to {num}: "
                              f"{num - self._expected_msg} message(s) lost")
        self._expected_msg = num + 1
        if frames[0] != ow.ENVELOPE_DATA or header.get("type") != "data":
            return  # events and spikes are not this amplifier's business
        c = header.get("content", {})
        if c.get("stream") != self.stream:
            return
        try:
            ch, n, first = int(c["channel_num"]), int(c["num_samples"]), int(c["sample_num"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fault(f"malformed data header ({exc})") from exc
        if len(frames) != 3 or len(frames[2]) != 4 * n or header.get("data_size", 4 * n) != 4 * n:
            raise self._fault(f"partial data message for channel {ch} at sample {first}")
        if ch in self._col:
            self._pending.setdefault(first, {})[ch] = np.frombuffer(frames[2], dtype="<f4")

    def read(self) -> Chunk:
        if self._sub is None:
            raise self._fault("read() before start()")
        while True:
            ready = [s for s, chans in self._pending.items() if len(chans) == len(self.channels)]
            if ready:
                break
            self._receive()
        first = min(ready)
        if self._next_sample is not None and first != self._next_sample:
            raise self._fault(f"sample_num jumped from {self._next_sample} to {first}")
        older = [s for s in self._pending if s < first]
        if older:
            raise self._fault(f"block at sample {older[0]} is incomplete (a channel's message was lost)")
        chans = self._pending.pop(first)
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
