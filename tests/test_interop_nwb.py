"""`rigctl export nwb`: a 2-session simulated run as NWB, checked by nwbinspector and read back by pynwb and
SpikeInterface's `read_nwb` with the run directory's numbers, sample for sample."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rigctl.cli import main
from rigctl.export import load_run_trials
from rigctl.interop.nwb import inspect_nwb, severe
from rigctl.interop.run_data import load_run

pynwb = pytest.importorskip("pynwb")  # the test extra installs it; skip only on a machine without it


@pytest.fixture(scope="module")
def exported(bss_voltage_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("nwb") / "bss2.nwb"
    assert main(["export", "nwb", str(bss_voltage_run), "-o", str(out)]) == 0
    return bss_voltage_run, out


def test_nwbinspector_finds_nothing_critical_or_error(exported):
    _, path = exported
    findings = inspect_nwb(path)
    assert severe(findings) == [], [f"{f.check_function_name}: {f.message}" for f in severe(findings)]


def test_inspect_flag_prints_the_counts_and_exits_0(exported, tmp_path, capsys):
    run_dir, _ = exported
    assert main(["export", "nwb", str(run_dir), "-o", str(tmp_path / "x.nwb"), "--inspect"]) == 0
    assert "nwbinspector:" in capsys.readouterr().err


def test_pynwb_reads_back_the_run_sample_for_sample(exported):
    run_dir, path = exported
    run = load_run(run_dir)
    trials = load_run_trials(run_dir)
    fs = run.sample_rate_hz
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        raw = f.acquisition["raw"]
        assert raw.data.dtype == np.int16
        assert np.array_equal(raw.data[:], run.raw.frames)
        assert raw.conversion == pytest.approx(run.uV_per_bit * 1e-6)
        samples = np.rint(raw.timestamps[:] * fs).astype(np.int64)
        assert np.array_equal(samples, run.raw.sample_of_rows(slice(None)))
        ranges = f.intervals["raw_kept_ranges"]
        assert np.array_equal(ranges["first_sample"][:], run.raw.first_sample)
        assert len(ranges) == 32  # one kept range per trial: raw_window_ms -10..40

        el = f.electrodes
        assert np.array_equal(np.c_[el["rel_x"][:], el["rel_y"][:]], run.layout.positions_um)
        assert np.array_equal(np.c_[el["x"][:], el["y"][:]], run.layout.positions_um)
        assert list(el["channel_name"][:]) == list(run.layout.names)

        units = f.units
        assert len(units) == run.layout.n_electrodes
        for e in range(run.layout.n_electrodes):
            mine = np.sort(run.spikes[run.spikes["channel"] == e], order="sample")
            assert np.array_equal(units["spike_samples"][e], mine["sample"])
            assert np.array_equal(np.rint(np.asarray(units["spike_times"][e]) * fs).astype(np.int64), mine["sample"])
            assert np.array_equal(np.asarray(units["spike_amplitudes_uV"][e], np.float32), mine["amplitude_uV"])
        assert sum(len(units["spike_samples"][e]) for e in range(len(units))) == len(run.spikes) > 0

        stim = f.events["stimuli"]
        assert np.array_equal(stim["sample"][:], run.stims["sample"])
        assert np.array_equal(stim["electrode"].data[:], run.stims["electrode"])
        assert np.array_equal(np.rint(stim["timestamp"][:] * fs).astype(np.int64), run.stims["sample"])
        assert set(stim["amplitude_unit"][:]) == {"mV"}
        assert np.array_equal(stim["phase1_amplitude"][:], run.stims["phase1_amplitude"])

        tr = f.trials
        assert len(tr) == 32
        assert np.array_equal(tr["session"][:], trials["session"])
        assert np.array_equal(tr["sample"][:], trials["sample"])
        assert np.array_equal(np.c_[tr["s1"][:], tr["s2"][:]], trials["s"])
        assert np.array_equal(np.stack([tr[f"o{i + 1}"][:] for i in range(32)], 1), trials["o"])
        assert np.array_equal(np.stack([tr[f"r{i + 1}"][:] for i in range(64)], 1), trials["r"])

        models = f.processing["models"]
        assert list(models["free_energy"]["session"][:]) == [1, 2]
        assert list(models["selectivity"]["session"][:]) == [1, 2]
        assert "seed: 0" in f.protocol and f.protocol == (run_dir / "protocol.yaml").read_text()
        notes = json.loads(f.notes)["rigctl_run_json"]
        assert notes["seed"] == 0 and notes["status"] == "complete" and notes["uV_per_bit"] == run.uV_per_bit
        assert "drug/condition: none" in f.pharmacology


def test_spikeinterface_read_nwb_gives_the_same_recording_and_spikes(exported):
    se = pytest.importorskip("spikeinterface.extractors")
    run_dir, path = exported
    run = load_run(run_dir)
    rec = se.read_nwb_recording(str(path), electrical_series_path="acquisition/raw")
    assert np.array_equal(rec.get_traces(return_scaled=False), run.raw.frames)
    assert np.allclose(rec.get_channel_gains(), run.uV_per_bit)
    assert np.array_equal(rec.get_channel_locations(), run.layout.positions_um)
    sorting = se.read_nwb_sorting(str(path), sampling_frequency=run.sample_rate_hz, t_start=0.0)
    for e, unit in enumerate(sorting.unit_ids):
        expected = np.sort(run.spikes["sample"][run.spikes["channel"] == e])
        assert np.array_equal(sorting.get_unit_spike_train(unit), expected)


def test_an_unfinished_run_is_exported_with_a_warning(bss_voltage_run, tmp_path, capsys):
    run_dir = tmp_path / "unfinished"
    shutil.copytree(bss_voltage_run, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(meta))
    size = (run_dir / "trials.bin").stat().st_size
    with open(run_dir / "trials.bin", "r+b") as f:  # 20 whole trials and a torn one, as after a kill
        f.truncate(size // 32 * 20 + 7)
    out = tmp_path / "unfinished.nwb"
    assert main(["export", "nwb", str(run_dir), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "not complete (status: running)" in err
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert len(io.read().trials) == 20


def test_default_output_is_inside_the_run_directory(bss_voltage_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(bss_voltage_run, run_dir)
    assert main(["export", "nwb", str(run_dir)]) == 0
    assert (run_dir / "copy.nwb").is_file()


@pytest.mark.parametrize("case", ["missing", "not_a_run", "a_file", "output_dir_missing"])
def test_bad_input_is_one_line_and_exit_2(case, bss_voltage_run, tmp_path, capsys):
    run, out = str(bss_voltage_run), []
    if case == "missing":
        run = str(tmp_path / "nope")
    elif case == "not_a_run":
        run = str(tmp_path)
    elif case == "a_file":
        (tmp_path / "f.txt").write_text("x")
        run = str(tmp_path / "f.txt")
    else:
        out = ["-o", str(tmp_path / "no_such_dir" / "x.nwb")]
    assert main(["export", "nwb", run, *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rigctl export: error: ")
    expected = {"missing": "no such directory", "not_a_run": "not a rigctl run directory", "a_file": "is a file",
                "output_dir_missing": "does not exist"}[case]
    assert expected in err[0]


def test_a_missing_extra_names_the_pip_install(bss_voltage_run, tmp_path):
    code = ("import sys; sys.modules['pynwb'] = None; from rigctl.cli import main; "
            f"sys.exit(main(['export', 'nwb', {str(bss_voltage_run)!r}, '-o', {str(tmp_path / 'x.nwb')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'rigctl[nwb]'" in lines[0], proc.stderr
