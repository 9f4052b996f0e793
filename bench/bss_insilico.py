"""The BSS experiment (Isomura et al. 2023) in silico: drive the simulated culture directly and print the
paper's ensemble separation per condition, the evoked counts and the runtime.

Protocol (../shared/spec/isomura2023.md 1.2-1.3): one 256-step sequence of hidden sources s and stimuli o,
drawn from the seed, repeated for every session; one step per second; counts = detectable electrode events
10-30 ms after the pulse; a 244-s rest between sessions (fast_forward). Stimulating electrodes: the
checkerboard of the default protocol (group A: c < 4, group B: c >= 4, row-major).

    python bench/bss_insilico.py                       # control, seeds 0 1 2, 100 sessions
    python bench/bss_insilico.py --conditions none apv bicuculline diazepam mix0 mix50 --json out.json
    python bench/bss_insilico.py --sessions 20 --seeds 0   # quick look
    python bench/bss_insilico.py --check a.json b.json     # acceptance figures of saved runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np

from rigctl.layout import ElectrodeLayout
from rigctl.model.ensembles import separation_by_session
from rigctl.model.realism import response_figures
from rigctl.sim.culture import Culture, CultureConfig
from rigctl.sim.projection import ElectrodeProjection
from rigctl.types import BiphasicPulse

PITCH_UM = 200.0
GROUP_A = [r * 8 + c for r in range(8) for c in range(8) if (r + c) % 2 == 0 and c < 4]
GROUP_B = [r * 8 + c for r in range(8) for c in range(8) if (r + c) % 2 == 0 and c >= 4]
CONDITIONS = {  # name -> (drug, mixing a)
    "none": ("none", 0.75), "apv": ("apv", 0.75), "bicuculline": ("bicuculline", 0.75),
    "diazepam": ("diazepam", 0.75), "mix0": ("none", 1.0), "mix50": ("none", 0.5),
}


def make_sequence(seed: int, mixing: float, n_steps: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """s [n, 2] iid Bernoulli(1/2); o [n, 32]: group A copies s1 if omega < a else s2, group B copies s1 if
    omega < 1 - a else s2 (spec 1.2). The draw depends on the seed only (shared by all conditions)."""
    rng = np.random.default_rng([seed, 0x5E0])
    s = (rng.random((n_steps, 2)) < 0.5).astype(np.uint8)
    omega = rng.random((n_steps, 32))
    thr = np.concatenate([np.full(16, mixing), np.full(16, 1.0 - mixing)])
    o = np.where(omega < thr, s[:, [0]], s[:, [1]]).astype(np.uint8)
    return s, o


@dataclass
class RunResult:
    s: np.ndarray
    r: np.ndarray
    session: np.ndarray
    seconds: float
    spont_per_window: float


def run_culture(seed: int, drug: str, mixing: float, sessions: int, sample_rate_hz: float = 25000.0,
                config: CultureConfig | None = None, rest_s: float = 244.0,
                projection: dict | None = None) -> RunResult:
    layout = ElectrodeLayout.grid(8, 8, PITCH_UM)
    culture = Culture(layout, sample_rate_hz, seed, drug=drug, config=config)
    proj = ElectrodeProjection(layout, culture.neuron_positions_um, seed, **(projection or {}))
    pulse = BiphasicPulse.symmetric(1000.0, 200.0, "mV")
    s_seq, o_seq = make_sequence(seed, mixing)
    stim = np.array(GROUP_A + GROUP_B)
    fs = sample_rate_hz
    w0, w1 = int(round(0.010 * fs)), int(round(0.030 * fs))
    n = len(s_seq)
    r = np.zeros((sessions * n, 64), np.int32)
    spont_windows = []
    t = int(fs)  # first trial after 1 s
    t0 = time.perf_counter()
    for k in range(sessions):
        for i in range(n):
            row = k * n + i
            el = stim[o_seq[i] == 1]
            if el.size:
                culture.stimulate(t, el.tolist(), pulse)
            sp, nr = culture.advance(t + w1)
            sel = sp >= t + w0
            ev = proj.detectable_events(sp[sel], nr[sel])
            r[row] = np.bincount(ev.channel, minlength=64)
            if not el.size:
                spont_windows.append(r[row].mean())
            t += int(fs)
            culture.advance(t)
        t += int(rest_s * fs)
        culture.fast_forward(t)
    secs = time.perf_counter() - t0
    s = np.tile(s_seq, (sessions, 1))
    session = np.repeat(np.arange(1, sessions + 1), n)
    return RunResult(s, r, session, secs, float(np.mean(spont_windows)) if spont_windows else float("nan"))


def summarise(res: RunResult, last: int = 10) -> dict:
    sep = separation_by_session(res.s, res.r, res.session, baseline=None, allow_empty=True)
    k = len(sep.separation)
    stim_steps = res.s.any(axis=1)
    evoked = res.r[stim_steps].mean()
    per_elec = res.r[stim_steps].mean(axis=0)
    first = res.session == 1
    lastk = res.session > k - last
    sm = sep.state_means  # [2, K, 4] states 11, 10, 01, 00
    return {
        "separation_last": float(sep.separation[-last:].mean()),
        "separation": sep.separation.round(4).tolist(),
        "g1": sep.g1.tolist(), "g2": sep.g2.tolist(), "empty": list(sep.empty),
        "evoked_mean": float(evoked),
        "evoked_first_session": float(res.r[first & stim_steps].mean()),
        "evoked_last_sessions": float(res.r[lastk & stim_steps].mean()),
        "responsive_electrodes": int((per_elec > 1.0).sum()),
        "max_electrode_mean": float(per_elec.max()),
        "spont_per_window": res.spont_per_window,
        "state_means_first": sm[:, 0].round(3).tolist(),
        "state_means_last": sm[:, -last:].mean(axis=1).round(3).tolist(),
        "seconds": res.seconds,
        "response": response_figures(res.s, res.r, res.session, (GROUP_A, GROUP_B),
                                     ensembles=(sep.g1, sep.g2)).as_dict(),
    }


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _realism(fig: dict) -> str:
    ratio = "/".join(_fmt(v) for v in fig["source_ratio"])
    share = "/".join("-" if v is None else f"{v:.2f}" for v in fig["own_stim_share"])
    return f"{fig['gain']:+6.2f} {ratio:>11s} {share:>9s}"


def check_criteria(runs: dict) -> list[str]:
    """The issue's acceptance figures, per seed, from runs keyed "condition/seed"; one line each."""
    lines = []
    seeds = sorted({int(k.split("/")[1]) for k in runs})
    for seed in seeds:
        get = lambda c: runs.get(f"{c}/{seed}")  # noqa: E731
        ctl = get("none")
        if ctl is None:
            continue
        sep = ctl["separation_last"]
        ok = sep >= 0.20 and not any(ctl["empty"])
        lines.append(f"seed {seed}: control separation {sep:.3f} >= 0.20, ensembles non-empty: {'PASS' if ok else 'FAIL'}")
        if get("apv"):
            v = get("apv")["separation_last"]
            lines.append(f"seed {seed}: apv {v:.3f} < 0.10: {'PASS' if v < 0.10 else 'FAIL'}")
        for drug, cmp in (("bicuculline", ">"), ("diazepam", "<")):
            d = get(drug)
            if d:
                v = d["separation_last"]
                ev_ok = d["evoked_mean"] > ctl["evoked_mean"] if cmp == ">" else d["evoked_mean"] < ctl["evoked_mean"]
                lines.append(f"seed {seed}: {drug} {v:.3f} < 0.6 x control ({0.6 * sep:.3f}): "
                             f"{'PASS' if v < 0.6 * sep else 'FAIL'}; evoked {d['evoked_mean']:.2f} {cmp} "
                             f"{ctl['evoked_mean']:.2f}: {'PASS' if ev_ok else 'FAIL'}")
        if get("mix0") and get("mix50"):
            a, b = get("mix0")["separation_last"], get("mix50")["separation_last"]
            lines.append(f"seed {seed}: mix0 {a:.3f} - mix50 {b:.3f} = {a - b:.3f} >= 0.15: "
                         f"{'PASS' if a - b >= 0.15 else 'FAIL'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=["none"], choices=list(CONDITIONS))
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--sample-rate", type=float, default=25000.0)
    ap.add_argument("--set", nargs="*", default=[], help="CultureConfig overrides, e.g. eta_plus=0.05")
    ap.add_argument("--proj", nargs="*", default=[], help="ElectrodeProjection overrides, e.g. d0_um=20")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--check", nargs="+", metavar="JSON", help="only print the acceptance figures of saved runs")
    args = ap.parse_args(argv)
    if args.check:
        runs: dict = {}
        for path in args.check:
            with open(path) as fh:
                runs.update(json.load(fh)["runs"])
        print("\n".join(check_criteria(runs)))
        return 0
    overrides = {}
    for item in args.set:
        key, val = item.split("=", 1)
        overrides[key] = type(getattr(CultureConfig(), key))(val)
    config = CultureConfig(**overrides)
    out: dict = {"sessions": args.sessions, "overrides": overrides, "projection": args.proj, "runs": {}}
    last = min(10, args.sessions)
    print(f"{'condition':12s} {'seed':>4s} {'sep91-100':>9s} {'|G1|':>4s} {'|G2|':>4s} {'evoked':>7s} "
          f"{'ev.s1':>6s} {'ev.last':>7s} {'resp':>4s} {'spont':>6s} {'sec':>6s} {'gain':>6s} {'ratio':>11s} {'share':>9s}")
    for cond in args.conditions:
        drug, mixing = CONDITIONS[cond]
        for seed in args.seeds:
            res = run_culture(seed, drug, mixing, args.sessions, args.sample_rate, config,
                              projection={k: float(v) for k, v in (item.split("=", 1) for item in args.proj)})
            summ = summarise(res, last)
            out["runs"][f"{cond}/{seed}"] = summ
            print(f"{cond:12s} {seed:4d} {summ['separation_last']:9.3f} {len(summ['g1']):4d} {len(summ['g2']):4d} "
                  f"{summ['evoked_mean']:7.3f} {summ['evoked_first_session']:6.3f} "
                  f"{summ['evoked_last_sessions']:7.3f} {summ['responsive_electrodes']:4d} "
                  f"{summ['spont_per_window']:6.3f} {summ['seconds']:6.1f} {_realism(summ['response'])}", flush=True)
    lines = check_criteria(out["runs"])
    if lines:
        print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
