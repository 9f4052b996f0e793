"""The loop's closed-loop latency bare and with the live parts attached, side by side in one run (issue 14).

Attached = the stream (rigctl.stream.Publisher on loopback, binary spikes at 10 messages/s), the control
endpoint (rigctl.control.ControlServer, CURVE) polled for `status` twice a second by another process, and
`rigctl dashboard` subscribed to the stream (with --browser, a headless Chromium showing its page).
The rig is paced to the wall clock (--realtime), as on a rig: the loop waits for its chunks, and what the live
parts cost shows as latency, not as a slower run. Rounds alternate bare and attached so that the load of this
shared machine falls on both alike; each side's p99 pools its rounds, and the median of its rounds' p99 is printed too (robust to a burst of other load in one
round). The dashboard runs at its default lowered priority (`--nice 10`).

A second figure: a slow subscriber. The stream carries binary spikes at 100 messages/s to a subscriber that
reads one message every 50 ms with a receive high-water mark of 10 (messages pile up at the publisher, which
drops them beyond its own high-water mark); the
loop's p99 and wall time are compared with the bare loop, and the subscriber's sequence gaps are counted.

    python bench/bench_live.py [--seconds 10] [--rounds 3] [--browser]

Before the slow subscriber's rounds end it keeps reading (its deadline covers them), then prints its counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rigctl import keys
from rigctl.benchmarks.latency import measure_latency
from rigctl.control import ControlServer
from rigctl.stream import Publisher

POLLER = """
import sys, time
from pathlib import Path
from rigctl import keys
from rigctl.control import request
where = Path(sys.argv[2]); server = keys.load_public("rig", where); me = keys.load_keypair("control", where)
while True:
    request(sys.argv[1], server, me, "status", timeout_s=5)
    time.sleep(0.5)
"""

SLOW_SUBSCRIBER = """
import sys, time, zmq, json
ctx = zmq.Context(); s = ctx.socket(zmq.SUB); s.setsockopt(zmq.RCVHWM, 10); s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(sys.argv[1]); n = gaps = last = 0
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    if s.poll(100):
        h = json.loads(s.recv_multipart()[1]); n += 1
        gaps += max(0, h["seq"] - last - 1) if last else 0; last = h["seq"]
        time.sleep(0.05)  # the slow reader
print(json.dumps({"received": n, "missed_by_seq": gaps}), flush=True)
"""


def _p99(latencies: list[np.ndarray]) -> float:
    return float(np.percentile(np.concatenate(latencies), 99))


def _wait_line(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"process ended before printing {prefix!r}")


class Attached:
    """The stream, the control endpoint with a status poller, and a dashboard on the stream."""

    def __init__(self, workdir: Path, browser: bool):
        self.where = workdir / "keys"
        for name in ("rig", "control"):
            keys.new_keypair(name, self.where)
        keys.allow(self.where / "control.key", self.where)
        self.publisher = Publisher("tcp://127.0.0.1:*", spikes_per_s=10.0)
        self.control = ControlServer("tcp://127.0.0.1:*", keys.load_keypair("rig", self.where),
                                     keys.allowed_clients(self.where))
        self.steering = self.control.make_steering()
        endpoint = self.control.start(self.steering, workdir / "control.jsonl")
        self.procs = [subprocess.Popen([sys.executable, "-c", POLLER, endpoint, str(self.where)])]
        dash = subprocess.Popen([sys.executable, "-m", "rigctl.cli", "dashboard", self.publisher.endpoint],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(dash)
        url = _wait_line(dash, "dashboard: ").split()[1]
        self.driver = None
        if browser:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from browser import chromium, fresh_profile
            self.driver = chromium(fresh_profile())
            self.driver.get(url)

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
        for p in self.procs:
            p.kill()
            p.wait()
        self.control.stop()
        self.publisher.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="rig seconds per round (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="bare/attached pairs (default 3)")
    ap.add_argument("--browser", action="store_true", help="also keep the dashboard open in headless Chromium")
    ap.add_argument("--rig", default="sim")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        attached = Attached(Path(tmp), args.browser)
        bare, live, walls = [], [], {"bare": 0.0, "attached": 0.0}
        try:
            for r in range(args.rounds):
                for side in ("bare", "attached"):
                    kw = {} if side == "bare" else {"publisher": attached.publisher, "steering": attached.steering}
                    res = measure_latency(args.rig, 64, 25000.0, 1.0, args.seconds, seed=r, realtime=True, **kw)
                    (bare if side == "bare" else live).append(res.latencies_us)
                    walls[side] += res.wall_s
                    print(f"round {r + 1} {side:8s}: n={len(res.latencies_us)} p99 "
                          f"{np.percentile(res.latencies_us, 99):.1f} us, wall {res.wall_s:.1f} s", flush=True)
        finally:
            attached.close()
        p_bare, p_live = _p99(bare), _p99(live)
        m_bare = float(np.median([np.percentile(x, 99) for x in bare]))
        m_live = float(np.median([np.percentile(x, 99) for x in live]))
        print(f"p99 pooled: bare {p_bare:.1f} us, attached {p_live:.1f} us: {100 * (p_live / p_bare - 1):+.1f} %; "
              f"median of the rounds' p99: bare {m_bare:.1f} us, attached {m_live:.1f} us: "
              f"{100 * (m_live / m_bare - 1):+.1f} % (wall {walls['bare']:.1f} s vs {walls['attached']:.1f} s)")

        # the slow subscriber
        pub = Publisher("tcp://127.0.0.1:*", spikes_per_s=100.0)
        sub = subprocess.Popen([sys.executable, "-c", SLOW_SUBSCRIBER, pub.endpoint,
                                str(2 * args.rounds * (args.seconds + 3) + 5)],
                               stdout=subprocess.PIPE, text=True)
        _wait_line(sub, "ready")
        slow, base = [], []
        try:
            for r in range(args.rounds):
                base.append(measure_latency(args.rig, 64, 25000.0, 1.0, args.seconds, seed=r,
                                            realtime=True).latencies_us)
                res = measure_latency(args.rig, 64, 25000.0, 1.0, args.seconds, seed=r, realtime=True,
                                      publisher=pub)
                slow.append(res.latencies_us)
        finally:
            out = sub.communicate(timeout=2 * args.rounds * (args.seconds + 3) + 60)[0]  # its own deadline
            pub.close()
        got = json.loads(out.strip().splitlines()[-1]) if out.strip().startswith("{") else {}
        p_base, p_slow = _p99(base), _p99(slow)
        print(f"slow subscriber (100 msg/s offered, reads 20/s, RCVHWM 10): p99 bare {p_base:.1f} us, with it "
              f"{p_slow:.1f} us: {100 * (p_slow / p_base - 1):+.1f} %; publisher never blocked (sends are "
              f"non-blocking), messages the publisher counted refused: {pub.dropped} {got}")
        print(json.dumps({"p99_bare_us": round(p_bare, 1), "p99_attached_us": round(p_live, 1),
                          "median_round_p99_bare_us": round(m_bare, 1),
                          "median_round_p99_attached_us": round(m_live, 1),
                          "attached_vs_bare_pct": round(100 * (p_live / p_bare - 1), 1),
                          "p99_slow_subscriber_us": round(p_slow, 1), "p99_slow_bare_us": round(p_base, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
