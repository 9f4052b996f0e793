"""`rigctl sweep` on real Dask clusters: a local cluster of worker processes, and a separately started
`dask scheduler` + `dask worker` on loopback. Points are tiny BSS runs (one or two short sessions)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runcli import RIGCTL, rigctl
from rigctl.store import load_run_meta, read_jsonl, read_spikes, read_trials
from rigctl.sweep import expand, point_name
from rigctl.sweep_file import SweepError, load_sweep

pytest.importorskip("distributed")

TINY = "protocol: isomura2023_bss\nset: {sessions: 1, trials_per_session: 8, rest_s: 1}\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with (sweep_dir / "sweep.csv").open(newline="") as f:
        return {row["point"]: row for row in csv.DictReader(f)}


def test_points_are_the_grid_times_the_list_with_readable_unique_names():
    points = expand({"seed": [1, 2], "drug": ["none", "apv"]}, [{}, {"protocol": "protocols/x_mix0.yaml"}])
    assert [p.name for p in points[:4]] == ["seed-1_drug-none", "seed-1_drug-apv", "seed-2_drug-none",
                                            "seed-2_drug-apv"]
    assert points[4].name == "protocol-x_mix0_seed-1_drug-none" and len(points) == 8
    assert point_name({"pulse.phase1_amplitude": -0.5}) == "pulse-phase1_amplitude--0.5"
    with pytest.raises(SweepError, match="same run directory name"):
        expand({"seed": [1, 1]}, [])


@pytest.mark.parametrize("text, expected", [
    ("rig: sim-events\n", "missing required field 'protocol'"),
    (TINY + "grid: {seed: []}\n", ":3: grid 'seed' is empty; allowed: a non-empty list"),
    (TINY + "grids: {seed: [1]}\n", ":3: unknown field 'grids'; allowed fields:"),
    (TINY + "grid: {seed: [-1]}\n", "point 'seed--1': seed -1; allowed: an integer 0 to 2**63 - 1"),
    (TINY + "grid: {drug: [caffeine]}\n", "point 'drug-caffeine': drug 'caffeine'; allowed: none, bicuculline"),
    (TINY + "grid: {isi_s: [.nan]}\n", "field 'isi_s' has value nan"),
    (TINY + "grid: {no_such_field: [1]}\n", "unknown field 'no_such_field'"),
    (TINY + "retries: 99\n", ":3: field 'retries' has value 99"),
    ("protocol: isomura2023_bss\nset: {sessions: 0}\n", "'sessions' has value 0; allowed: 1 to 100000"),
    (TINY + "grid: {seed: [1, 1]}\n", ":3: points {'seed': 1} and {'seed': 1} get the same run directory name"),
])
def test_bad_sweep_files_are_one_located_line(tmp_path, text, expected):
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    message = str(info.value)
    assert expected in message and "\n" not in message and str(path) in message
    proc = rigctl("sweep", str(path), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_local_cluster_runs_every_point_records_a_failure_and_skips_complete_points(tmp_path):
    sweep = _write(tmp_path, "tiny.yaml", TINY + "retries: 0\ngrid: {seed: [1, 2]}\n"
                                                 "points: [{drug: none}, {drug: apv}, {rig: no_such_rig.yaml}]\n")
    out = tmp_path / "out"
    first = rigctl("sweep", str(sweep), "--out", str(out), "--workers", "2", check=False)
    assert first.returncode == 1, first.stderr  # the two points on a missing rig file failed
    assert "Dask dashboard: http://127.0.0.1:" in first.stderr and "2 workers (local cluster)" in first.stderr
    assert "[6/6] done 4, running 0, failed 2" in first.stderr
    rows = _rows(out)
    assert sorted(rows) == sorted(["drug-none_seed-1", "drug-none_seed-2", "drug-apv_seed-1", "drug-apv_seed-2",
                                   "rig-no_such_rig_seed-1", "rig-no_such_rig_seed-2"])
    for name, row in rows.items():
        if name.startswith("rig-"):
            assert row["status"] == "failed" and "no_such_rig.yaml" in row["error"]
            continue
        run = out / "points" / name
        meta = load_run_meta(run)
        assert row["status"] == "complete" and row["action"] == "started" and row["trials"] == "8"
        assert (meta["seed"], meta["drug"]) == (int(row["seed"]), row["drug"]) and meta["status"] == "complete"
        assert float(row["mean_evoked_per_trial"]) > 0
    before = {name: (out / "points" / name / "trials.bin").stat().st_mtime_ns for name in rows
              if not name.startswith("rig-")}

    again = rigctl("sweep", str(sweep), "--out", str(out), "--workers", "2", check=False)
    assert again.returncode == 1
    rows = _rows(out)
    assert {name: rows[name]["action"] for name in before} == {name: "skipped" for name in before}
    assert {name: (out / "points" / name / "trials.bin").stat().st_mtime_ns for name in before} == before

    report = rigctl("report", str(out))
    assert report.stdout.strip().endswith("sweep_summary.json") and (out / "sweep.png").exists()


def _sigkill_after_first_point(sweep: Path, out: Path) -> None:
    """Start the sweep driver and SIGKILL it as soon as it reports its first finished point."""
    proc = subprocess.Popen([*RIGCTL, "sweep", str(sweep), "--out", str(out), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("[1/"):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_a_killed_sweep_started_again_completes_every_point_once_as_an_uninterrupted_one(tmp_path):
    sweep = _write(tmp_path, "kill.yaml", "protocol: isomura2023_bss\n"
                                          "set: {sessions: 2, trials_per_session: 24, rest_s: 1}\n"
                                          "grid: {seed: [1, 2, 3]}\n")
    out = tmp_path / "killed"
    _sigkill_after_first_point(sweep, out)
    done_before = [p.name for p in (out / "points").iterdir()
                   if (p / "summary.json").exists()]
    assert done_before  # the kill came after one point had completed
    rigctl("sweep", str(sweep), "--out", str(out), "--workers", "2")
    rows = _rows(out)
    assert all(rows[name]["action"] == "skipped" for name in done_before)
    for seed in (1, 2, 3):
        ref = tmp_path / f"ref{seed}"
        rigctl("run", "isomura2023_bss", "--seed", str(seed), "--set", "sessions=2", "--set", "trials_per_session=24",
               "--set", "rest_s=1", "--out", str(ref), "--no-report", "--no-progress")
        run = out / "points" / f"seed-{seed}"
        assert read_trials(run).tobytes() == read_trials(ref).tobytes()
        assert read_spikes(run).tobytes() == read_spikes(ref).tobytes()
        assert sum(e["event"] == "run_end" for e in read_jsonl(run / "events.jsonl")) == 1
        assert rows[f"seed-{seed}"]["status"] == "complete"


def test_an_existing_cluster_runs_the_sweep_by_address_or_scheduler_file(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler = subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)], stderr=subprocess.DEVNULL, env=env)
    worker = None
    try:
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            address = client.scheduler.address
            worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--no-dashboard", "--host", "127.0.0.1"],
                                      stderr=subprocess.DEVNULL, env=env)
            client.wait_for_workers(1, timeout=120)
        sweep = _write(tmp_path, "one.yaml", TINY + "grid: {seed: [4]}\n")
        by_address = rigctl("sweep", str(sweep), "--out", str(tmp_path / "a"), "--scheduler", address)
        assert f"1 workers (scheduler {address})" in by_address.stderr
        by_file = rigctl("sweep", str(sweep), "--out", str(tmp_path / "b"), "--scheduler", str(scheduler_file))
        assert "[1/1] done 1" in by_file.stderr
        a, b = tmp_path / "a" / "points" / "seed-4", tmp_path / "b" / "points" / "seed-4"
        assert read_trials(a).tobytes() == read_trials(b).tobytes() and len(read_trials(a)) == 8
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)


@pytest.mark.parametrize("scheduler, why", [("tcp://127.0.0.1:9", "Connection refused"),
                                             ("no_such_file.json", "no such scheduler file")])
def test_an_unreachable_scheduler_is_one_line_and_leaves_nothing(tmp_path, scheduler, why):
    sweep = _write(tmp_path, "one.yaml", TINY)
    proc = rigctl("sweep", str(sweep), "--out", str(tmp_path / "o"), "--scheduler", scheduler, check=False)
    assert proc.returncode == 2 and f"--scheduler {scheduler}: cannot reach a Dask scheduler" in proc.stderr
    assert why in proc.stderr and proc.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
