"""The control channel of a run: a CURVE-authenticated ZeroMQ endpoint, served from its own thread.

Only clients whose public key is in the rig's allow-list (rigctl.keys) complete the handshake; anyone else
gets no answer at all (ZAP refuses them before a message is read). An accepted request is one JSON object
`{"cmd": COMMAND, "text": ...}`; the answer is one JSON object `{"ok": bool, ...}`. The thread never touches
the loop: it queues steering requests (rigctl.steering) and reads the loop's status snapshot. One controller
at a time: the first key to send a steering command holds control until it sends `release` or has sent
nothing for `lease_s`; others are told who holds it. Every request, and every refused key, goes to the
run's control log (control.jsonl). Protocol and semantics: docs/control.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from rigctl.errors import RigctlError
from rigctl.keys import KeyPair
from rigctl.steering import COMMANDS, MAX_MARK_CHARS, Steering

DEFAULT_ENDPOINT = "tcp://127.0.0.1:*"  # loopback, a free port
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_REQUEST_BYTES = 4096
POLL_MS = 100  # how often the server thread looks at its stop flag


class ControlError(RigctlError):
    """The control endpoint cannot be opened, reached, or refused a command."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def is_loopback(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


class ControlLog:
    """Append-only JSON lines in the run directory; written from the server and the ZAP threads."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": _now_iso(), **fields}) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)


class _AllowList:
    """ZAP credentials provider: accepts the keys of the allow-list, logs every other key it refuses."""

    def __init__(self, clients: dict[bytes, str], log: ControlLog):
        self.clients = dict(clients)
        self.log = log

    def callback(self, domain: str, z85: bytes) -> bool:  # pyzmq hands the client's key in z85
        if z85 in self.clients:
            return True
        self.log.write(event="refused_key", key=z85.decode("ascii"), reason="not in the allow-list")
        return False


@dataclass
class _Holder:
    name: str
    since_s: float
    last_s: float


class ControlServer:
    """Serves one run's control endpoint. `start` binds and returns the endpoint actually bound."""

    def __init__(self, endpoint: str, server_key: KeyPair, clients: dict[bytes, str], lease_s: float = 300.0):
        self.requested = endpoint
        self.server_key = server_key
        self.clients = dict(clients)
        self.lease_s = lease_s
        self.endpoint: str | None = None
        self.holder: _Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth: ThreadAuthenticator | None = None
        self._sock: zmq.Socket | None = None
        self.log = ControlLog(None)
        self.steering: Steering | None = None

    @property
    def public_key(self) -> str:
        return self.server_key.public.decode("ascii")

    def make_steering(self) -> Steering:
        """The queue this server feeds; the session hands it to the loop."""
        return Steering()

    def start(self, steering: Steering, log_path: Path | None) -> str:
        self.steering = steering
        self.log = ControlLog(log_path)
        self._ctx = zmq.Context()
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback(domain="rigctl", credentials_provider=_AllowList(self.clients, self.log))
        sock = self._ctx.socket(zmq.ROUTER)
        sock.curve_secretkey = self.server_key.secret
        sock.curve_publickey = self.server_key.public
        sock.curve_server = True
        sock.zap_domain = b"rigctl"
        sock.linger = 0
        sock.maxmsgsize = MAX_REQUEST_BYTES
        try:
            sock.bind(self.requested)
        except zmq.ZMQError as exc:
            sock.close()
            self._shutdown_context()
            raise ControlError(f"--control {self.requested}: cannot bind ({exc})") from None
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.log.write(event="listening", endpoint=self.endpoint, server_key=self.public_key,
                       allowed=sorted(self.clients.values()))
        self._thread = threading.Thread(target=self._serve, name="rigctl-control", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.log.write(event="closed")
        self._shutdown_context()

    def _shutdown_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # ---- the server thread --------------------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            frames = self._sock.recv_multipart(copy=False)
            if len(frames) < 3:
                continue
            user = frames[-1].get("User-Id")
            name = self.clients.get(user.encode("ascii"), "?") if user else "?"
            try:
                reply = self._handle(name, frames[-1].bytes)
            except Exception as exc:  # noqa: BLE001 - the endpoint must outlive one bad request
                reply = self._logged(name, "?", "", {"ok": False, "error": f"internal error: {type(exc).__name__}"})
            self._sock.send_multipart([frames[0].bytes, b"", json.dumps(reply).encode()])

    def _handle(self, name: str, body: bytes) -> dict[str, Any]:
        try:
            req = json.loads(body)
            cmd = str(req["cmd"])
            text = str(req.get("text", ""))
        except (ValueError, KeyError, TypeError):
            return self._logged(name, "?", "", {"ok": False, "error": "not a JSON object with a 'cmd'"})
        if cmd not in COMMANDS:
            return self._logged(name, cmd[:40], "", {"ok": False, "error": f"unknown command {cmd[:40]!r}; "
                                                                           f"allowed: {', '.join(COMMANDS)}"})
        if cmd == "status":
            return {"ok": True, "status": self.steering.status(), "controller": self._holder_info()}
        now = time.monotonic()
        refusal = self._claim(name, now)
        if refusal:
            return self._logged(name, cmd, text, {"ok": False, "error": refusal})
        if cmd == "release":
            self.holder = None
            return self._logged(name, cmd, text, {"ok": True, "message": "control released"})
        if cmd == "mark" and not text.strip():
            return self._logged(name, cmd, text, {"ok": False, "error": "mark needs a TEXT"})
        if len(text) > MAX_MARK_CHARS:
            return self._logged(name, cmd, text[:80], {"ok": False,
                                                       "error": f"mark TEXT: at most {MAX_MARK_CHARS} characters"})
        self.steering.request(cmd, name, text)
        when = {"pause": "at the next trial boundary", "resume": "at the next chunk",
                "abort": "at the next chunk", "mark": "at the next chunk"}[cmd]
        return self._logged(name, cmd, text, {"ok": True, "message": f"{cmd} accepted; applied {when}"})

    def _claim(self, name: str, now: float) -> str | None:
        h = self.holder
        if h is not None and h.name != name and now - h.last_s < self.lease_s:
            since = _dt.datetime.now() - _dt.timedelta(seconds=now - h.since_s)
            return (f"control is held by {h.name!r} (since {since:%H:%M:%S}, last command {now - h.last_s:.0f} s "
                    f"ago); it is free when they send `release` or after {self.lease_s:.0f} s without a command")
        if h is None or h.name != name:
            self.holder = _Holder(name, now, now)
        else:
            h.last_s = now
        return None

    def _holder_info(self) -> dict[str, Any] | None:
        h = self.holder
        if h is None or time.monotonic() - h.last_s >= self.lease_s:
            return None
        return {"name": h.name, "idle_s": round(time.monotonic() - h.last_s, 1)}

    def _logged(self, name: str, cmd: str, text: str, reply: dict[str, Any]) -> dict[str, Any]:
        self.log.write(event="command", by=name, command=cmd, text=text or None, ok=reply["ok"],
                       reply=reply.get("message") or reply.get("error"))
        return reply


def request(endpoint: str, server_public: bytes, client: KeyPair, cmd: str, text: str = "",
            timeout_s: float = 5.0) -> dict[str, Any]:
    """One command to a control endpoint; the answer as a dict. No answer in `timeout_s` (a refused key gets
    none) raises ControlError."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.linger = 0
        sock.curve_serverkey = server_public
        sock.curve_publickey = client.public
        sock.curve_secretkey = client.secret
        sock.connect(endpoint)
        sock.send(json.dumps({"cmd": cmd, "text": text}).encode())
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise ControlError(f"no answer from {endpoint} within {timeout_s:g} s: nothing listens there, or the "
                               f"rig refused key {client.name!r} (is it in the rig's allow-list? `rigctl keys "
                               f"allow`), or the server key is not the rig's")
        return json.loads(sock.recv())
    finally:
        sock.close()
        ctx.term()
