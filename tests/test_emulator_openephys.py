"""The Open Ephys emulator speaks the GUI's HTTP API and the ZMQ Interface plugin's messages
(spec: ../shared/spec/devices.md §3; message_num as in zmq-interface's ZmqInterface.cpp)."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from rigctl.sim.openephys_emulator import OpenEphysEmulator
from test_emulator_fakes import ClockBackend


@pytest.fixture
def setup():
    backend = ClockBackend(chunk_samples=250, n_electrodes=16)
    emu = OpenEphysEmulator(backend, block_samples=200).start()
    yield backend, emu, None
    emu.close()


def http(emu, path, payload=None):
    data = None if payload is None else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{emu.http_port}{path}", data=data,
                                 method="GET" if payload is None else "PUT")
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())


def test_http_api_status_processors_and_errors(setup):
    _, emu, _ = setup
    assert http(emu, "/api/status") == {"mode": "IDLE"}
    procs = http(emu, "/api/processors")["processors"]
    zmq_proc = [p for p in procs if p["name"] == "ZMQ Interface"][0]
    assert zmq_proc["parameters"] == [{"name": "data_port", "type": "int", "value": str(emu.data_port)}]
    assert zmq_proc["streams"][0]["channel_count"] == 16 and zmq_proc["streams"][0]["sample_rate"] == 25000.0
    assert http(emu, f"/api/processors/{zmq_proc['id']}/parameters/data_port")["value"] == str(emu.data_port)
    assert http(emu, "/api/recording")["record_nodes"][0]["record_engine"] == "BINARY"
    for path, payload, code in (("/api/processors/999", None, 404), ("/api/status", b"{bad", 400),
                                ("/api/status", {"mode": "FAST"}, 400), ("/api/nothing", None, 404)):
        with pytest.raises(urllib.error.HTTPError) as info:
            http(emu, path, payload)
        assert info.value.code == code


def test_messages_on_the_wire_follow_the_plugin_format(setup):
    import zmq

    _, emu, _ = setup
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{emu.data_port}")
    req = urllib.request.Request(f"http://127.0.0.1:{emu.http_port}/api/status", data=b'{"mode": "ACQUIRE"}',
                                 method="PUT")
    assert json.loads(urllib.request.urlopen(req, timeout=2).read()) == {"mode": "ACQUIRE"}
    try:
        assert sub.poll(2000)
        env, header, payload = sub.recv_multipart()
        assert env == b"DATA\x00"
        h = json.loads(header)
        assert b"\n" in header  # pretty-printed like JUCE's JSON
        assert h["type"] == "data" and h["message_num"] == 1 and h["data_size"] == 800
        assert h["content"] == {"stream": "example_data", "channel_num": 0, "channel_name": "CH1", "num_samples": 200,
                                "sample_num": 0, "sample_rate": 25000.0}
        assert np.allclose(np.frombuffer(payload, "<f4"), ClockBackend.ramp(0, 200, 16)[:, 0] * 0.195)
    finally:
        sub.close(0)
    # heartbeats on the REP socket
    rep = zmq.Context.instance().socket(zmq.REQ)
    rep.connect(f"tcp://127.0.0.1:{emu.data_port + 1}")
    rep.send_json({"application": "t", "uuid": "1", "type": "heartbeat"})
    assert rep.recv_string() == "heartbeat received"
    rep.send(b"{nope")
    assert rep.recv_string() == "JSON message could not be read"
    rep.close(0)


