"""Per-trial cost of OnlineFreeEnergy.update (target <= 50 us) and of its session hooks.

Run: python bench/bench_model_update.py [--electrodes 64] [--sessions 30]
Uses synthetic Poisson counts from the canonical network (rigctl.model.synthetic), 256 trials per session;
times every update() call after the model is fitted (session > train_sessions) and before it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rigctl.model.online import OnlineFreeEnergy
from rigctl.model.synthetic import canonical_culture
from rigctl.types import TrialRecord


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--electrodes", type=int, default=64)
    ap.add_argument("--sessions", type=int, default=30)
    args = ap.parse_args()
    c = canonical_culture(n_sessions=args.sessions, bias=0.05, lam=300.0, seed=0)
    rng = np.random.default_rng(0)
    n_e = args.electrodes
    rate = np.full((len(c.s), n_e), 1.5)
    q = n_e // 4
    rate[:, :q] += 4.0 * c.x_true[:, [0]]
    rate[:, q:2 * q] += 4.0 * c.x_true[:, [1]]
    counts = rng.poisson(rate).astype(np.int32)
    records = [TrialRecord.bss(int(k) + 1, int(i % 256) + 1, int(i), c.s[i], c.o[i], counts[i])
               for i, k in enumerate(c.sess)]
    model = OnlineFreeEnergy(32, 10)
    t_fit, t_coll, t_begin, t_end = [], [], [], []
    for k in range(args.sessions):
        idx = np.flatnonzero(c.sess == k)
        t0 = time.perf_counter()
        model.begin_session(k + 1, c.o[idx])
        t_begin.append(time.perf_counter() - t0)
        sink = t_fit if model.status == "active" else t_coll
        for i in idx:
            t0 = time.perf_counter_ns()
            model.update(records[i])
            sink.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter()
        model.end_session(k + 1)
        t_end.append(time.perf_counter() - t0)
    assert model.status == "active", model.reason
    for label, v in (("update, fitted (sessions 11+)", t_fit), ("update, collecting (sessions 1-10)", t_coll)):
        a = np.array(v) / 1000.0
        print(f"{label:36s} n={a.size:6d}  median {np.median(a):6.2f} us  p99 {np.percentile(a, 99):6.2f} us  "
              f"max {a.max():7.1f} us")
    print(f"{'begin_session (prediction)':36s} median {np.median(t_begin) * 1e3:6.2f} ms")
    print(f"{'end_session (fit at session 10)':36s} {t_end[9] * 1e3:6.2f} ms; "
          f"other sessions median {np.median(t_end[10:]) * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
