"""Playback of other systems' recordings: `rigctl detect --recording` and a rig file's `playback` amplifier run
the online signal path over NWB, Open Ephys binary and MCS HDF5 files (made here from SpikeInterface's
ground-truth simulator: tests/recordings.py) and find the same spikes as on the raw int16 samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rigctl.cli import main
from rigctl.interop import InteropError
from rigctl.interop.recording import RecordingFrames, open_recording
from rigctl.store import read_spikes

pytest.importorskip("spikeinterface.extractors")
pytest.importorskip("pynwb")
recordings = pytest.importorskip("recordings")

WRITERS = {"nwb": ("gt.nwb", recordings.write_nwb), "openephys": ("oe", recordings.write_openephys),
           "mcs": ("gt.h5", recordings.write_mcs_h5)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recordings")
    truth = recordings.ground_truth(duration_s=4.0, n_channels=16, n_units=12, seed=7)
    truth.frames.astype("<i2").tofile(folder / "raw.bin")
    paths = {fmt: writer(folder / name, truth) for fmt, (name, writer) in WRITERS.items()}
    return truth, folder, paths


def _csv(path):
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return table[np.lexsort((table[:, 1], table[:, 0]))]


@pytest.fixture(scope="module")
def raw_spikes(files):
    truth, folder, _ = files
    out = folder / "raw.csv"
    assert main(["detect", str(folder / "raw.bin"), "--channels", "16", "--rate-hz", "25000", "--uv-per-bit",
                 "0.195", "--out", str(out)]) == 0
    return _csv(out)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_reads_back_the_same_int16_samples(files, fmt):
    truth, _, paths = files
    frames = RecordingFrames(open_recording(paths[fmt]))
    assert frames.sample_rate_hz == 25000.0 and frames.uV_per_bit == pytest.approx(0.195)
    assert np.array_equal(frames[0:len(frames)], truth.frames)
    assert np.array_equal(frames[1000:1250], truth.frames[1000:1250])


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_detect_recording_finds_the_spikes_of_the_raw_file(files, raw_spikes, fmt, tmp_path):
    out = tmp_path / "spikes.csv"
    assert main(["detect", "--recording", str(files[2][fmt]), "--out", str(out)]) == 0
    assert np.array_equal(_csv(out), raw_spikes)


def test_detection_on_the_ground_truth_recording_finds_its_units(files, raw_spikes):
    truth = files[0]
    detected = np.unique(raw_spikes[:, 0])
    i = np.clip(np.searchsorted(detected, truth.spike_samples), 1, len(detected) - 1)
    gap = np.minimum(np.abs(detected[i] - truth.spike_samples), np.abs(detected[i - 1] - truth.spike_samples))
    found = gap <= 10  # within 0.4 ms on any channel
    assert found.mean() > 0.7
    per_unit = [found[truth.spike_units == u].mean() for u in np.unique(truth.spike_units)]
    assert sum(r > 0.9 for r in per_unit) >= 8  # the small units of the simulator sit in the noise


@pytest.mark.parametrize("fmt", ["nwb", "openephys"])
def test_a_playback_rig_runs_the_loop_over_the_recording(files, raw_spikes, fmt, tmp_path):
    _, _, paths = files
    rig = tmp_path / "playback.yaml"
    rig.write_text(f"name: playback\namplifier:\n  driver: playback\n  path: {paths[fmt]}\n  chunk_ms: 5\n"
                   "stimulator:\n  driver: none\n")
    out = tmp_path / "run"
    assert main(["run", "spontaneous", "--rig", str(rig), "--set", "duration_s=2", "--out", str(out)]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["rig_description"]["amplifier"]["driver"] == "playback"
    assert meta["uV_per_bit"] == pytest.approx(0.195)
    spikes = read_spikes(out)
    got = np.c_[spikes["sample"], spikes["channel"]]
    got = got[np.lexsort((got[:, 1], got[:, 0]))]
    # the loop's signal path is the detector's: the same spikes over the samples the run covered
    end = int(got[:, 0].max()) + 1
    assert len(got) > 300
    assert np.array_equal(got, raw_spikes[(raw_spikes[:, 0] >= got[0, 0]) & (raw_spikes[:, 0] < end)])


def test_a_playback_rig_takes_a_probe_file(files, tmp_path):
    pi = pytest.importorskip("probeinterface")
    _, _, paths = files
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=np.c_[np.arange(16) % 4 * 100.0, np.arange(16) // 4 * 100.0], shapes="circle",
                       shape_params={"radius": 10})
    probe.set_device_channel_indices(np.arange(16))
    pi.write_probeinterface(tmp_path / "probe.json", probe)
    rig = tmp_path / "playback.yaml"
    rig.write_text(f"amplifier:\n  driver: playback\n  path: {paths['mcs']}\n  probe: probe.json\n"
                   "stimulator:\n  driver: none\n")
    out = tmp_path / "run"
    assert main(["run", "spontaneous", "--rig", str(rig), "--set", "duration_s=1", "--out", str(out)]) == 0
    layout = json.loads((out / "run.json").read_text())["rig_description"]["layout"]
    assert layout["positions_um"][5] == [100.0, 100.0]


def _bad_recording(case, tmp_path, files):
    if case == "missing":
        return tmp_path / "nope.nwb", "no such file or directory"
    if case == "unsupported":
        (tmp_path / "data.txt").write_text("1,2,3\n")
        return tmp_path / "data.txt", "unsupported format '.txt'"
    if case == "corrupt_nwb":
        (tmp_path / "bad.nwb").write_bytes(b"\x00not hdf5" * 100)
        return tmp_path / "bad.nwb", "cannot read it with read_nwb_recording"
    if case == "foreign_h5":
        import h5py

        with h5py.File(tmp_path / "other.h5", "w") as f:
            f.create_dataset("x", data=np.zeros(3))
        return tmp_path / "other.h5", "neither MCS nor MaxWell"
    (tmp_path / "empty_dir").mkdir()
    return tmp_path / "empty_dir", "a folder without structure.oebin"


CASES = ["missing", "unsupported", "corrupt_nwb", "foreign_h5", "folder"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_recording_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    path, expected = _bad_recording(case, tmp_path, files)
    assert main(["detect", "--recording", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rigctl detect: error: --recording {path}") and expected in err[0]


@pytest.mark.parametrize("case", ["missing", "unsupported"])
def test_a_bad_playback_path_in_a_rig_file_names_the_field(case, files, tmp_path, capsys):
    path, expected = _bad_recording(case, tmp_path, files)
    rig = tmp_path / "rig.yaml"
    rig.write_text(f"amplifier:\n  driver: playback\n  path: {path}\nstimulator:\n  driver: none\n")
    assert main(["run", "spontaneous", "--rig", str(rig), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(rig) in err[0] and "amplifier.path" in err[0] and expected in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--recording", "X", "--channels", "4"], "--channels not allowed with it"),
    (["RAW"], "needs --channels, --rate-hz, --uv-per-bit"),
    ([], "no input"),
])
def test_detect_refuses_mixed_or_missing_inputs(argv, expected, capsys):
    assert main(["detect", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_recording_frames_refuse_a_missing_segment(files):
    with pytest.raises(InteropError, match="segment 3"):
        RecordingFrames(open_recording(files[2]["nwb"]), segment=3)
