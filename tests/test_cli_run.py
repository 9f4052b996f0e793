"""`rigctl run` as a user runs it, on the real simulated culture: SIGKILL and resume through the CLI
(voltage mode, so the signal path's state is restored too), and the report."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from rigctl.store import load_run_meta, read_spikes, read_stims, read_trials
from runcli import RIGCTL, rigctl


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("extends: isomura2023_bss.yaml\nname: tiny\nsessions: 2\ntrials_per_session: 16\n"
                    "isi_s: 0.25\nrest_s: 1.0\nfirst_trial_s: 0.5\ncheckpoint_every_trials: 5\n")
    return path


@pytest.mark.parametrize("rig", ["sim", "sim-events"])
def test_sigkill_at_a_random_point_then_resume_equals_the_uninterrupted_run(tiny, tmp_path, rig):
    ref = tmp_path / "ref"
    rigctl("run", str(tiny), "--rig", rig, "--seed", "3", "--out", str(ref), "--no-progress")
    n_ref = len(read_trials(ref))
    assert n_ref == 32
    kill_at = int(np.random.default_rng([3, len(rig)]).integers(2, 30))  # seeded "random" point
    out = tmp_path / "killed"
    proc = subprocess.Popen(RIGCTL + ["run", str(tiny), "--rig", rig, "--seed", "3", "--out", str(out),
                                      "--no-progress", "--no-report"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "trials.bin").exists() and len(read_trials(out)) >= kill_at:
            break
        time.sleep(0.005)  # polling progress on disk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_run_meta(out)["status"] == "running", "the run finished before it could be killed"
    rigctl("run", "--resume", str(out), "--no-progress")
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 32 and summary["seed"] == 3 and summary["protocol"] == "tiny"
    assert [s["index"] for s in summary["sessions"]] == [1, 2]
    first = summary["sessions"][0]
    assert first["trials"] == 16 and len(first["response_to_source"]["s1"]["on"]) == 64
    assert (out / "evoked_selectivity.png").stat().st_size > 1000


def _kept_raw(run_dir):
    """The kept raw samples as {absolute sample: row bytes} (raw_index.bin's segments follow the chunks)."""
    from rigctl.store import RAW_INDEX_DTYPE
    index = np.fromfile(run_dir / "raw_index.bin", RAW_INDEX_DTYPE)
    raw = np.fromfile(run_dir / "raw.bin", "<i2").reshape(-1, 64)
    rows = {}
    for first, n, offset in index:
        start = offset // (2 * 64)
        for k in range(n):
            rows[int(first) + k] = raw[start + k].tobytes()
    return rows


def test_voltage_run_keeps_the_same_data_in_its_default_50_ms_chunks_as_in_10_ms(tiny, tmp_path):
    """`--rig sim` reads 50-ms chunks by default (10 ms before): every file of data is the same as with
    `--chunk-ms 10`, the raw samples kept around the trials included (only raw_index.bin's segments, cut at
    chunk edges, are fewer and longer)."""
    runs = {}
    for name, extra in (("default", []), ("c10", ["--chunk-ms", "10"])):
        runs[name] = tmp_path / name
        rigctl("run", str(tiny), "--rig", "sim", "--seed", "2", "--out", str(runs[name]), "--no-progress",
               "--no-report", *extra)
    assert load_run_meta(runs["default"])["rig_description"]["chunk_samples"] == 1250
    assert load_run_meta(runs["c10"])["rig_description"]["chunk_samples"] == 250
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(runs["default"]).tobytes() == reader(runs["c10"]).tobytes(), reader.__name__
    assert (runs["default"] / "raw.bin").read_bytes() == (runs["c10"] / "raw.bin").read_bytes()
    kept = _kept_raw(runs["default"])
    assert kept == _kept_raw(runs["c10"]) and len(kept) == 32 * 1250  # [-10, 40] ms around each of 32 trials
    assert len(read_spikes(runs["default"])) > 0


def test_events_run_keeps_the_same_data_in_batched_1_s_chunks_as_in_50_ms(tiny, tmp_path):
    """Without --chunk-ms an open-loop protocol on sim-events reads 1-s chunks (`LoopConfig.batch_s`): the
    culture's spikes do not depend on how time is split, so every data file is the one of 50-ms chunks."""
    runs = {}
    for name, extra in (("batched", []), ("c50", ["--chunk-ms", "50"])):
        runs[name] = tmp_path / name
        rigctl("run", str(tiny), "--rig", "sim-events", "--seed", "3", "--out", str(runs[name]), "--no-progress",
               "--no-report", *extra)
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(runs["batched"]).tobytes() == reader(runs["c50"]).tobytes(), reader.__name__
    assert len(read_spikes(runs["batched"])) > 0


def test_export_cli_prints_the_header_and_one_row_per_trial(tiny, tmp_path):
    out = tmp_path / "r"
    rigctl("run", str(tiny), "--rig", "sim-events", "--seed", "1", "--out", str(out), "--no-progress", "--no-report")
    lines = rigctl("export", "trials", str(out)).stdout.splitlines()
    assert lines[0] == ",".join(["session", "trial", "sample", "s1", "s2"] + [f"o{i}" for i in range(1, 33)]
                                + [f"r{i}" for i in range(1, 65)])
    assert len(lines) == 33
    counts = np.array([[int(x) for x in line.split(",")[37:]] for line in lines[1:]])
    stimulated = np.array([sum(int(x) for x in line.split(",")[5:37]) > 0 for line in lines[1:]])
    # evoked counts exceed what unstimulated steps show (spontaneous only)
    assert counts[stimulated].sum(axis=1).mean() > counts[~stimulated].sum(axis=1).mean()
