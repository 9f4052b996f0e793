"""Speed of the simulated culture alone, driven the way the rig drives it.

Runs `--sessions` sessions of the default BSS protocol (256 one-second steps, 3/4 mixing, a 244-s rest via
fast_forward) advancing the network in `--chunk-ms` chunks (the events rig uses 50 ms), and prints the
wall time of the network, of the electrode projection, and their extrapolation to 100 sessions.

    python bench/bench_culture.py                 # 5 sessions, 50-ms chunks
    python bench/bench_culture.py --sessions 10 --chunk-ms 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bss_insilico import GROUP_A, GROUP_B, make_sequence  # noqa: E402

from rigctl.layout import ElectrodeLayout  # noqa: E402
from rigctl.sim.culture import Culture  # noqa: E402
from rigctl.sim.projection import ElectrodeProjection  # noqa: E402
from rigctl.types import BiphasicPulse  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--chunk-ms", type=float, default=50.0)
    ap.add_argument("--sample-rate", type=float, default=25000.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drug", default="none")
    args = ap.parse_args(argv)
    fs = args.sample_rate
    layout = ElectrodeLayout.grid(8, 8, 200.0)
    t_build = time.perf_counter()
    culture = Culture(layout, fs, args.seed, drug=args.drug)
    proj = ElectrodeProjection(layout, culture.neuron_positions_um, args.seed)
    t_build = time.perf_counter() - t_build
    culture.advance(1)  # trigger numba loading outside the timing
    pulse = BiphasicPulse.symmetric(1000.0, 200.0, "mV")
    s_seq, o_seq = make_sequence(args.seed, 0.75)
    stim = np.array(GROUP_A + GROUP_B)
    chunk = max(1, int(round(args.chunk_ms * 1e-3 * fs)))
    t_net = t_proj = 0.0
    n_spikes = n_events = n_calls = 0
    t = int(fs)
    for _ in range(args.sessions):
        end = t + len(s_seq) * int(fs)
        pulses = {t + i * int(fs): stim[o_seq[i] == 1].tolist() for i in range(len(s_seq))}
        now = culture.now_sample
        while now < end:
            nxt = min(end, now + chunk)
            t0 = time.perf_counter()
            for p in range(now - now % int(fs) + (t % int(fs)), nxt, int(fs)):
                if p >= now and p in pulses and pulses[p]:
                    culture.stimulate(p, pulses[p], pulse)
            sp, nr = culture.advance(nxt)
            t1 = time.perf_counter()
            ev = proj.detectable_events(sp, nr)
            t2 = time.perf_counter()
            t_net += t1 - t0
            t_proj += t2 - t1
            n_spikes += len(sp)
            n_events += len(ev)
            n_calls += 1
            now = nxt
        t = end + int(244 * fs)
        t0 = time.perf_counter()
        culture.fast_forward(t)
        t_net += time.perf_counter() - t0
    k = args.sessions
    print(f"culture: {culture.n_neurons} neurons, {len(culture.weights)} synapses, build {t_build:.2f} s")
    print(f"{k} sessions, {args.chunk_ms:g}-ms chunks ({n_calls} advance calls): network {t_net:.2f} s, "
          f"projection+detection {t_proj:.2f} s")
    print(f"per session: network {t_net / k:.3f} s, projection {t_proj / k:.3f} s; "
          f"{n_spikes / k:.0f} neuron spikes, {n_events / k:.0f} detectable events")
    print(f"extrapolated to 100 sessions: network {100 * t_net / k:.1f} s, with projection "
          f"{100 * (t_net + t_proj) / k:.1f} s (target: network <= 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
