"""A kill -9 soak of `rigctl run` / `rigctl run --resume` (issue 11).

For each configuration (rig sim-events or sim (voltage), a chunk size drawn log-uniformly from 1 ms to
5000 ms, 1 and 5000 always included) the script runs an uninterrupted reference with the real CLI
(`python -m rigctl.cli run ... --no-progress --no-report`), then the same run again, SIGKILLed
(`os.kill(pid, SIGKILL)`) at a random wall-clock time (which also hits interpreter start-up, the
creation of the run directory and checkpoint writes) or once a random number of trials is on disk, then
`--resume`d, the resume itself SIGKILLed again with some probability (possibly several times), until a
process completes. A kill before the run directory exists leaves no directory (creation is atomic): the
run is then started again with the same --out. Some runs keep the report (no --no-report): their
summary.json must exist at the end (a resume writes a missing report).

A completed run must equal its reference byte for byte in trials.bin, spikes.bin, stims.bin (and raw.bin,
raw_index.bin), with every (session, trial) present exactly once. Outcomes: identical / lost trials /
duplicated trials / differs / never completed (a resume failed, or a process exceeded --timeout); a
configuration whose uninterrupted reference fails is counted apart (reference failed: nothing tested).

    python bench/soak_kill.py [--kills 50] [--seed 0] [--workdir DIR] [--keep] [--timeout 300]

Progress goes to stderr (one line per kill), the table to stdout. Exit code 0 only if every run is
identical. The choices (configurations, kill triggers and their random fractions, which resumes are
killed) are seeded and reproducible; where a time-triggered kill lands in the program depends on the
machine's timing, so the phase counts vary from one soak to the next. Directories of failing runs are
always kept (and reported); the rest of the work directory is removed unless --keep.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rigctl.store import load_run_meta, read_records, read_trials

REPO = Path(__file__).resolve().parents[1]
RIGCTL = [sys.executable, "-m", "rigctl.cli"]

SESSIONS, TRIALS_PER_SESSION = 3, 24
PROTOCOL = f"""\
extends: isomura2023_bss.yaml
name: soak
sessions: {SESSIONS}
trials_per_session: {TRIALS_PER_SESSION}
isi_s: 0.25
rest_s: 1.0
first_trial_s: 0.5
checkpoint_every_trials: 5
"""
TOTAL_TRIALS = SESSIONS * TRIALS_PER_SESSION
COMPARED = ("trials.bin", "spikes.bin", "stims.bin", "raw.bin", "raw_index.bin")
OUTCOMES = ("identical", "lost trials", "duplicated trials", "differs", "never completed", "reference failed")
PHASES = ("before dir", "during run", "during resume")
RIGS = ("sim-events", "sim")
MIN_CHUNK_MS, MAX_CHUNK_MS = 1.0, 5000.0
POLL_S = 0.002


@dataclass
class Kill:
    """When to SIGKILL one process: `mode` time (at u x the reference's wall time) or trials (once a
    number of trials picked by u is on disk)."""

    mode: str
    u: float


@dataclass
class Config:
    rig: str
    chunk_ms: float
    kills: list[Kill]
    report: bool = False


@dataclass
class RunResult:
    name: str
    config: Config
    outcome: str = "never completed"
    details: list[str] = field(default_factory=list)
    kills: list[dict] = field(default_factory=list)
    ref_wall_s: float = 0.0
    run_dir: Path | None = None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def last_lines(text: str, n: int = 3) -> str:
    return " | ".join([ln.strip() for ln in text.splitlines() if ln.strip()][-n:])


def fmt_ms(ms: float) -> str:
    return f"{ms:g}"


def draw_chunk_ms(rng: random.Random) -> float:
    ms = math.exp(rng.uniform(math.log(MIN_CHUNK_MS), math.log(MAX_CHUNK_MS)))
    return round(ms, 1) if ms < 10 else float(round(ms))


def draw_kills(rng: random.Random, budget: int, resume_kill_p: float, max_kills: int) -> list[Kill]:
    """The first process's kill, then each following process (a resume, or a restart after a kill
    before the run directory existed) is killed again with probability resume_kill_p."""
    kills = [Kill(rng.choice(("time", "trials")), rng.random())]
    while len(kills) < min(budget, max_kills) and rng.random() < resume_kill_p:
        kills.append(Kill(rng.choice(("time", "trials")), rng.random()))
    return kills


class Planner:
    """Seeded configurations: the four corners (each rig at 1 and 5000 ms) first, then random draws
    (voltage on a minority). Each gets at most `budget` planned kills."""

    def __init__(self, seed: int, resume_kill_p: float = 0.4, voltage_p: float = 0.25, report_p: float = 0.2,
                 max_kills_per_run: int = 4):
        self.rng = random.Random(seed)
        self.corners = [("sim-events", MIN_CHUNK_MS), ("sim-events", MAX_CHUNK_MS), ("sim", MAX_CHUNK_MS),
                        ("sim", MIN_CHUNK_MS)]
        self.resume_kill_p, self.voltage_p, self.report_p = resume_kill_p, voltage_p, report_p
        self.max_kills_per_run = max_kills_per_run

    def next(self, budget: int) -> Config:
        rng = self.rng
        if self.corners:
            rig, chunk = self.corners.pop(0)
        else:
            rig = "sim" if rng.random() < self.voltage_p else "sim-events"
            chunk = draw_chunk_ms(rng)
        ks = draw_kills(rng, budget, self.resume_kill_p, self.max_kills_per_run)
        return Config(rig, chunk, ks, report=rng.random() < self.report_p)


# ---- processes ----------------------------------------------------------------------------------

def run_cmd(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(RIGCTL + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def trials_on_disk(run_dir: Path, itemsize: int) -> int:
    try:
        return (run_dir / "trials.bin").stat().st_size // itemsize
    except OSError:
        return 0


def run_and_kill(args: list[str], run_dir: Path, kill: Kill | None, ref_wall_s: float, itemsize: int,
                 prev_trials: int, timeout: float) -> tuple[int, float, str, float | int | None]:
    """Run one rigctl process, SIGKILLing it per `kill`. Returns (returncode, seconds, stderr tail, the
    trigger: seconds or trials on disk); returncode -9 means our SIGKILL landed, -1000 a timeout."""
    err = tempfile.TemporaryFile(mode="w+")
    t0 = time.monotonic()
    proc = subprocess.Popen(RIGCTL + args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
    target_t = target_n = None
    if kill is not None and kill.mode == "time":
        # within the process's expected life: the whole reference for a start, less for a resume
        target_t = kill.u * 0.9 * ref_wall_s * (1.0 - 0.7 * min(prev_trials, TOTAL_TRIALS) / TOTAL_TRIALS)
    elif kill is not None:
        remaining = max(0, TOTAL_TRIALS - prev_trials - 1)
        target_n = prev_trials + 1 + int(kill.u * remaining)
    timed_out = False
    while proc.poll() is None:
        now = time.monotonic() - t0
        if now > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            timed_out = True
            break
        fire = (target_t is not None and now >= target_t) or \
               (target_n is not None and trials_on_disk(run_dir, itemsize) >= target_n)
        if fire:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(POLL_S)
    rc = proc.wait()
    dt = time.monotonic() - t0
    err.seek(0)
    tail = err.read()[-2000:]
    err.close()
    if timed_out:
        rc = -1000
    return rc, dt, tail, (target_t if target_n is None else target_n)


# ---- comparison ---------------------------------------------------------------------------------

def first_diff(a: bytes, b: bytes, itemsize: int) -> int:
    """Index of the first record that differs (or where the shorter file ends)."""
    n = min(len(a), len(b))
    idx = np.flatnonzero(np.frombuffer(a, np.uint8, count=n) != np.frombuffer(b, np.uint8, count=n))
    return (int(idx[0]) if idx.size else n) // itemsize


def trial_of_sample(ref_trials: np.ndarray, sample: int) -> str:
    """The (session, trial) whose pulse precedes `sample` (the last trial at or before it)."""
    i = int(np.searchsorted(ref_trials["sample"], sample, side="right")) - 1
    if i < 0:
        return "before trial 1"
    return f"session {int(ref_trials['session'][i])} trial {int(ref_trials['trial'][i])}"


def compare(ref: Path, run: Path, report: bool) -> tuple[str, list[str]]:
    details: list[str] = []
    meta = load_run_meta(run)
    if meta.get("status") != "complete":
        return "never completed", [f"run.json status {meta.get('status')!r}"]
    ref_t, run_t = read_trials(ref), read_trials(run)
    expected = {(s, t) for s in range(1, SESSIONS + 1) for t in range(1, TRIALS_PER_SESSION + 1)}
    pairs = Counter(zip(run_t["session"].tolist(), run_t["trial"].tolist()))
    ref_pairs = Counter(zip(ref_t["session"].tolist(), ref_t["trial"].tolist()))
    if set(ref_pairs) != expected or max(ref_pairs.values()) != 1:
        details.append(f"the REFERENCE itself has {len(ref_pairs)} distinct of {len(expected)} trials")
    lost = sorted(expected - set(pairs))
    dup = sorted(p for p, c in pairs.items() if c > 1)
    extra = sorted(set(pairs) - expected)
    outcome = "identical"
    if lost:
        outcome = "lost trials"
        details.append(f"lost {len(lost)} trials: (session, trial) {lost[:10]}")
    if dup:
        outcome = "duplicated trials" if outcome == "identical" else outcome
        details.append(f"duplicated {len(dup)} trials: {[(p, pairs[p]) for p in dup[:10]]}")
    if extra:
        details.append(f"unexpected (session, trial) {extra[:10]}")
    sizes = {"trials.bin": ref_t.dtype.itemsize, "spikes.bin": 16, "stims.bin": 36, "raw.bin": 2,
             "raw_index.bin": 24}
    for name in COMPARED:
        a, b = (ref / name).read_bytes(), (run / name).read_bytes()
        if a == b:
            continue
        if outcome == "identical":
            outcome = "differs"
        k = first_diff(a, b, sizes[name])
        where = f"{name}: {len(b)} bytes vs reference {len(a)}; first differing record #{k}"
        if name == "trials.bin":
            rr = read_records(run / name, ref_t.dtype)
            if k < len(rr):
                where += f" = session {int(rr['session'][k])} trial {int(rr['trial'][k])}"
            if k < len(ref_t):
                where += f" (reference: session {int(ref_t['session'][k])} trial {int(ref_t['trial'][k])})"
        elif name in ("spikes.bin", "stims.bin"):
            lo, hi = k * sizes[name], k * sizes[name] + 8
            for label, buf in (("run", b), ("reference", a)):
                if len(buf) >= hi:
                    sample = int(np.frombuffer(buf[lo:hi], "<i8")[0])
                    where += f"; {label} record at sample {sample} ({trial_of_sample(ref_t, sample)})"
        details.append(where)
    if report and not (run / "summary.json").exists():
        if outcome == "identical":
            outcome = "differs"
        details.append("summary.json missing although the run kept its report")
    return outcome, details


# ---- one configuration ---------------------------------------------------------------------------

def soak_config(name: str, cfg: Config, seed: int, protocol: Path, root: Path, timeout: float,
                kill_log: list[dict], kills_total: int) -> RunResult:
    res = RunResult(name, cfg)
    base = root / name
    base.mkdir(parents=True)
    ref, run = base / "ref", base / "run" / "out"
    run.parent.mkdir()
    res.run_dir = run
    common = [str(protocol), "--rig", cfg.rig, "--seed", str(seed), "--chunk-ms", fmt_ms(cfg.chunk_ms),
              "--no-progress"]
    t0 = time.monotonic()
    p = run_cmd(["run", *common, "--out", str(ref), "--no-report"], timeout)
    res.ref_wall_s = time.monotonic() - t0
    if p.returncode != 0:
        res.outcome = "reference failed"
        res.details.append(f"reference run exited {p.returncode}: {last_lines(p.stderr)}")
        return res
    itemsize = read_trials(ref).dtype.itemsize
    report_flag = [] if cfg.report else ["--no-report"]
    pending = list(cfg.kills)
    attempt = 0
    prev_trials = 0
    while True:
        attempt += 1
        resuming = run.exists()
        args = (["run", "--resume", str(run), "--no-progress", *report_flag] if resuming
                else ["run", *common, "--out", str(run), *report_flag])
        if resuming:
            meta = load_run_meta(run)
            if meta.get("status") == "complete" and (run / "summary.json").exists():
                break  # killed after everything was written: nothing left to resume
        kill = pending.pop(0) if pending else None
        creating_before = set(run.parent.glob(f".{run.name}.creating-*"))
        rc, dt, tail, target = run_and_kill(args, run, kill, res.ref_wall_s, itemsize, prev_trials, timeout)
        if rc == -1000:
            res.details.append(f"attempt {attempt} ({'resume' if resuming else 'start'}) exceeded {timeout:g} s")
            return res
        if rc == -signal.SIGKILL and kill is not None:
            n_disk = trials_on_disk(run, itemsize)
            if not resuming:
                phase = "during run" if run.exists() else "before dir"
            else:
                phase = "during resume"
            notes = []
            if not run.exists() and set(run.parent.glob(f".{run.name}.creating-*")) - creating_before:
                notes.append("in dir creation")
            if run.exists():
                if (run / "checkpoint.npz.tmp").exists():
                    notes.append("in checkpoint write")
                try:
                    if load_run_meta(run).get("status") == "complete":
                        notes.append("after loop complete")
                except Exception:  # noqa: BLE001
                    notes.append("run.json unreadable")
            entry = {"config": name, "phase": phase, "mode": kill.mode, "at_s": dt, "trials": n_disk,
                     "notes": notes}
            kill_log.append(entry)
            res.kills.append(entry)
            trig = f"at {target:.2f} s" if kill.mode == "time" else f"at >= {target} trials"
            log(f"[kill {len(kill_log):>3}/{kills_total}] {name} {cfg.rig} {fmt_ms(cfg.chunk_ms)} ms "
                f"{'resume' if resuming else 'start'} #{attempt} ({kill.mode} {trig}) at {dt:.2f} s: "
                f"{phase}, {n_disk} trials on disk{(', ' + ', '.join(notes)) if notes else ''}")
            prev_trials = max(prev_trials, n_disk)
            continue
        if rc != 0:
            res.details.append(f"attempt {attempt} ({'resume' if resuming else 'start'}) exited {rc}: "
                               f"{last_lines(tail)}")
            return res
        if kill is not None:
            log(f"           {name}: the planned {kill.mode} kill did not land (the process finished first)")
        break
    res.outcome, more = compare(ref, run, cfg.report)
    res.details += more
    return res


# ---- the soak -----------------------------------------------------------------------------------

def soak(kills: int = 50, seed: int = 0, workdir: Path | None = None, keep: bool = False,
         timeout: float = 300.0, configs: list[Config] | None = None) -> dict:
    """Run the soak until `kills` SIGKILLs have landed (a planned kill that misses because the process
    finished first is drawn again in a later configuration); `configs` replaces the seeded plan (then
    exactly those configurations run). Returns a summary dict for `format_table`."""
    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="soak_kill-")) if workdir is None else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    protocol = root / "soak.yaml"
    protocol.write_text(PROTOCOL)
    planner = Planner(seed)
    seeds = random.Random(seed + 1)
    kill_log: list[dict] = []
    results: list[RunResult] = []
    fixed = list(configs) if configs is not None else None
    target = kills if fixed is None else sum(len(c.kills) for c in fixed)
    while (fixed is None and len(kill_log) < kills) or (fixed is not None and len(results) < len(fixed)):
        cfg = fixed[len(results)] if fixed is not None else planner.next(kills - len(kill_log))
        run_seed = seeds.randrange(1000)
        name = f"c{len(results):02d}"
        try:
            res = soak_config(name, cfg, run_seed, protocol, root, timeout, kill_log, target)
        except Exception as exc:  # noqa: BLE001 -- a soak failure to report, not a crash
            res = RunResult(name, cfg, details=[f"soak error: {type(exc).__name__}: {exc}"])
        results.append(res)
        log(f"           {name}: {cfg.rig} {fmt_ms(cfg.chunk_ms)} ms seed {run_seed}"
            f"{' +report' if cfg.report else ''}: {res.outcome}, {len(res.kills)} kills"
            + "".join(f"\n             {d}" for d in res.details))
    failing = [r for r in results if r.outcome != "identical"]
    if not keep:
        for r in results:
            if r.outcome == "identical":
                shutil.rmtree(root / r.name, ignore_errors=True)
        if not failing:
            shutil.rmtree(root, ignore_errors=True)
    return {"kills": kill_log, "results": results, "wall_s": time.monotonic() - t_start, "root": root,
            "kept": bool(failing) or keep, "seed": seed}


def format_table(summary: dict) -> str:
    kills, results = summary["kills"], summary["results"]
    phase = Counter(k["phase"] for k in kills)
    notes = Counter((k["phase"], n) for k in kills for n in k["notes"])
    modes = Counter(k["mode"] for k in kills)
    outcomes = Counter(r.outcome for r in results)
    lines = [f"soak_kill: seed {summary['seed']}, {len(results)} runs, protocol {SESSIONS} sessions x "
             f"{TRIALS_PER_SESSION} trials (checkpoint every 5)",
             f"{'kills total':<28}{len(kills)}"]
    for ph in PHASES:
        extra = ", ".join(f"{n}: {c}" for (p, n), c in sorted(notes.items()) if p == ph)
        lines.append(f"  {ph:<26}{phase.get(ph, 0)}{f'   ({extra})' if extra else ''}")
    lines.append(f"  {'by trigger':<26}time {modes.get('time', 0)}, trials on disk {modes.get('trials', 0)}")
    per_run = Counter(len(r.kills) for r in results)
    lines.append(f"  {'kills per run':<26}" + ", ".join(f"{k} kills: {c} runs" for k, c in sorted(per_run.items())))
    lines.append("runs by outcome")
    for o in OUTCOMES:
        lines.append(f"  {o:<26}{outcomes.get(o, 0)}")
    for rig in RIGS:
        rs = [r for r in results if r.config.rig == rig]
        if rs:
            chunks = " ".join(fmt_ms(c) for c in sorted({r.config.chunk_ms for r in rs}))
            lines.append(f"{'chunk sizes ' + rig + ' (ms)':<28} {chunks}   ({len(rs)} runs)")
    rep = [r for r in results if r.config.report]
    lines.append(f"{'runs keeping the report':<28}{len(rep)} (summary.json checked at the end)")
    lines.append(f"{'wall time':<28}{summary['wall_s']:.0f} s")
    failing = [r for r in results if r.outcome != "identical"]
    if failing:
        lines.append(f"FAILURES (kept under {summary['root']}):")
        for r in failing:
            lines.append(f"  {r.name} {r.config.rig} {fmt_ms(r.config.chunk_ms)} ms: {r.outcome}; kills: "
                         + "; ".join(f"{k['phase']} ({k['mode']}) at {k['at_s']:.2f} s, {k['trials']} trials"
                                     f"{' ' + ','.join(k['notes']) if k['notes'] else ''}" for k in r.kills))
            for d in r.details:
                lines.append(f"      {d}")
    elif summary["kept"]:
        lines.append(f"work directory kept: {summary['root']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50, help="total SIGKILLs across the soak (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every choice (default 0)")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the whole work directory")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per rigctl process")
    args = ap.parse_args(argv)
    if args.kills < 1:
        ap.error("--kills must be at least 1")
    summary = soak(args.kills, args.seed, args.workdir, args.keep, args.timeout)
    print(format_table(summary))
    return 0 if all(r.outcome == "identical" for r in summary["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
