"""Multi-well plates: every well at once, each equal to the same well run alone, resumable, reported per well and
per condition; bad plate files refused in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rigctl.errors import SafetyViolation
from rigctl.plate_file import PlateError, load_plate, well_names
from rigctl.store import load_run_meta, read_spikes, read_stims, read_trials
from runcli import rigctl

SMALL = """kind: plate
name: small
layout: {rows: 2, cols: 2}
protocol: isomura2023_bss
set: {sessions: 2, trials_per_session: 16, rest_s: 1.0}
conditions:
  - {drug: none}
  - {drug: apv}
replicates: 2
"""
ALONE = ["--set", "sessions=2", "--set", "trials_per_session=16", "--set", "rest_s=1.0"]


@pytest.fixture
def small_plate(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def same_run(a: Path, b: Path) -> bool:
    return all(reader(a).tobytes() == reader(b).tobytes() for reader in (read_trials, read_stims, read_spikes))


def test_each_well_equals_the_same_well_run_alone_and_the_plate_is_reported(tmp_path, small_plate):
    out = tmp_path / "plate"
    rigctl("run", str(small_plate), "--rig", "sim-plate", "--out", str(out), "--no-progress")
    assert well_names(2, 2) == ["A1", "B1", "A2", "B2"]
    for well, seed, drug in (("A1", 0, "none"), ("B2", 1, "apv")):
        alone = tmp_path / f"alone-{well}"
        rigctl("run", "isomura2023_bss", "--rig", "sim-events", "--seed", str(seed), "--drug", drug, *ALONE,
               "--out", str(alone), "--no-progress", "--no-report")
        assert same_run(out / "wells" / well, alone), well
        assert load_run_meta(out / "wells" / well)["drug"] == drug
    assert not same_run(out / "wells" / "A1", out / "wells" / "B1")  # another seed, another culture
    summary = json.loads((out / "plate_summary.json").read_text())
    assert summary["plate"]["status"] == "complete" and set(summary["plate"]["wells"]) == {"A1", "B1", "A2", "B2"}
    assert {c["points"] for c in summary["conditions"].values()} == {2} and len(summary["conditions"]) == 2
    for well in ("A1", "B2"):
        assert (out / "wells" / well / "summary.json").is_file()  # each well's own report
    assert (out / "plate.png").stat().st_size > 10_000
    rows = (out / "plate.csv").read_text().splitlines()
    assert rows[0].startswith("point,condition,seed,status") and len(rows) == 5


PLATE_KILL = """
import os, sys
from rigctl.rigs import open_rig
from rigctl.plate_session import {entry}

count = [0]
def factory(spec, **kw):
    rig = open_rig(spec, **kw)
    read_samples = rig.amplifier.read_samples  # the simulated rig's every read (`read` and batched reads) ends here
    def dying_read_samples(n):
        count[0] += 1
        if count[0] == {kill_chunk}:
            os._exit(137)
        return read_samples(n)
    rig.amplifier.read_samples = dying_read_samples
    return rig

{call}
"""


def test_wells_split_over_two_processes_give_the_same_bytes(tmp_path, small_plate):
    one, two = tmp_path / "one", tmp_path / "two"
    rigctl("run", str(small_plate), "--rig", "sim-plate", "--out", str(one), "--no-progress", "--no-report")
    rigctl("run", str(small_plate), "--rig", "sim-plate", "--workers", "2", "--out", str(two), "--no-progress",
           "--no-report")
    for well in ("A1", "B1", "A2", "B2"):
        assert same_run(one / "wells" / well, two / "wells" / well), well
    assert json.loads((two / "plate.json").read_text())["status"] == "complete"
    bad = rigctl("run", "isomura2023_bss", "--workers", "2", "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "--workers: only for a plate" in bad.stderr


def test_a_killed_plate_resumes_every_well_to_the_same_bytes(tmp_path, small_plate):
    ref = tmp_path / "ref"
    rigctl("run", str(small_plate), "--rig", "sim-plate", "--out", str(ref), "--no-progress", "--no-report")
    out = tmp_path / "killed"
    call = f"start_plate({str(small_plate)!r}, 'sim-plate', {str(out)!r}, progress=False, rig_factory=factory)"
    code = PLATE_KILL.format(entry="start_plate", kill_chunk=70, call=call)  # of 136 reads (1-s chunks)
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 137
    assert json.loads((out / "plate.json").read_text())["status"] == "running"
    early = rigctl("report", str(out))  # an unfinished plate is reported over what it has
    assert len((out / "plate.csv").read_text().splitlines()) == 5 and "Traceback" not in early.stderr
    rigctl("run", "--resume", str(out), "--no-progress")
    for well in ("A1", "B1", "A2", "B2"):
        assert same_run(out / "wells" / well, ref / "wells" / well), well
    assert json.loads((out / "plate.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("change, expected", [
    (("replicates: 2", "replicates: 3"), "2 conditions x 3 replicates = 6 wells; allowed: at most the layout's 4"),
    (("{drug: apv}", "{drug: caffeine}"), "well A2: drug 'caffeine'; allowed: none, bicuculline"),
    (("{drug: apv}", "{mixing: 2}"), "well A2 (2):"),
    (("replicates: 2", "replicates: 2\nwells: {E9: {drug: apv}}"), "well 'E9'; allowed: A1 to B2"),
    (("layout: {rows: 2, cols: 2}", "layout: {rows: 2, cols: 99}"), "layout.cols"),
])
def test_bad_plate_files_are_one_line_errors(tmp_path, change, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace(*change))
    with pytest.raises(PlateError) as info:
        load_plate(path)
    assert expected in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_plate_flags_and_rigs_are_checked_before_any_well(tmp_path, small_plate):
    for args, expected in ((["--rig", "sim-events"], "a plate runs on sim-plate, sim-plate-voltage"),
                           (["--rig", "sim-plate", "--seed", "3"], "--seed: not for a plate")):
        proc = rigctl("run", str(small_plate), *args, "--out", str(tmp_path / "x"), "--no-progress", check=False)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "x" / "wells" / "A1").exists()


def test_the_plate_limit_refuses_too_many_wells_pulsing_at_once(tmp_path, small_plate, monkeypatch):
    from rigctl import plate_session
    monkeypatch.setattr(plate_session, "MAX_STIMULATING_WELLS", 3)
    with pytest.raises(SafetyViolation, match="4 wells would pulse at one sample; allowed: at most 3"):
        plate_session.start_plate(small_plate, "sim-plate", tmp_path / "p", progress=False)
    assert not any((tmp_path / "p" / "wells").iterdir())  # refused before any well was made
