"""The general protocol engine: every library protocol runs, the scan and spontaneous protocols report, the
device variants give the direct rig's trials through the emulated devices, a lab's Python protocol runs from
outside the package, a closed-loop protocol resumes exactly after a kill, and --set overrides validate."""

import json
from pathlib import Path

import numpy as np
import pytest

from fakes import fake_rig_factory
from rigctl.errors import ProtocolError
from rigctl.protocol import library_dir, load_protocol
from rigctl.session import RunOptions, resume_run, start_run
from rigctl.store import load_run_meta, read_spikes, read_stims, read_trials
from runcli import rigctl
from test_resume_hardening import _child

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RIGS = ROOT / "rigs"

SHORT = {  # each library protocol, shortened with --set
    "isomura2023_bss": ["--sessions", "1", "--set", "trials_per_session=8"],
    "isomura2023_bss_mix0": ["--sessions", "1", "--set", "trials_per_session=8"],
    "isomura2023_bss_mix50": ["--sessions", "1", "--set", "trials_per_session=8"],
    "isomura2023_bss_rhs": ["--sessions", "1", "--set", "trials_per_session=8"],
    "isomura2023_bss_pulsepal": ["--sessions", "1", "--set", "trials_per_session=8"],
    "isomura2023_bss_maxlab": ["--sessions", "1", "--set", "trials_per_session=8"],
    "electrode_scan": ["--set", "repetitions=2", "--set", "isi_s=0.2"],
    "spontaneous": ["--set", "duration_s=5"],
    "cb22_maze": ["--rig", "canonical", "--set", "episodes=2", "--set", "max_steps=500"],  # the last --rig wins
    "cb22_maze_mea": ["--set", "mea.trials=40"],
    "cb22_maze_mea_pulsepal": ["--set", "mea.trials=40"],
    "pong": ["--set", "trials=40"],
    "pong_rhs": ["--set", "trials=40"],
}


def test_every_library_protocol_is_covered():
    assert sorted(p.stem for p in library_dir().glob("*.yaml")) == sorted(SHORT)


@pytest.mark.parametrize("name", sorted(SHORT))
def test_every_library_protocol_validates_and_runs_shortened_on_sim_events(tmp_path, name):
    assert "OK" in rigctl("validate", name).stdout
    out = tmp_path / name
    rigctl("run", name, "--rig", "sim-events", "--seed", "2", "--out", str(out), "--no-progress", *SHORT[name])
    meta = load_run_meta(out)
    summary = json.loads((out / "summary.json").read_text())
    assert meta["status"] == "complete" and summary["run_status"] == "complete"
    assert meta["protocol_kind"] == load_protocol(name).kind
    for plot in summary["plots"]:
        assert (out / plot).stat().st_size > 1000


def test_the_scan_maps_responses_and_lists_reliable_electrodes(tmp_path):
    out = tmp_path / "scan"
    rigctl("run", "electrode_scan", "--rig", "sim-events", "--seed", "1", "--out", str(out), "--no-progress",
           "--set", "repetitions=4", "--set", "isi_s=0.25", "--set", "electrodes=[0, 9, 27, 36]")
    trials = read_trials(out)
    assert sorted(trials["stim_electrode"].tolist()) == sorted([0, 9, 27, 36] * 4)
    assert sorted(trials["repetition"][trials["stim_electrode"] == 9].tolist()) == [1, 2, 3, 4]
    stims = read_stims(out)
    assert stims["electrode"].tolist() == trials["stim_electrode"].tolist()  # each electrode alone
    scan = json.loads((out / "summary.json").read_text())["scan"]
    mean = np.array(scan["mean_evoked"])
    assert mean.shape == (4, 64)
    k = scan["stimulated_electrodes"].index(9)
    assert np.allclose(mean[k], trials["counts"][trials["stim_electrode"] == 9].mean(axis=0), atol=1e-4)
    assert all(9 not in v for key, v in scan["reliable_responders"].items() if key == "9")
    assert {"response_map.png", "response_grid.png"} <= set(json.loads((out / "summary.json").read_text())["plots"])
    header = rigctl("export", "trials", str(out)).stdout.splitlines()[0]
    assert header.startswith("session,trial,sample,stim_electrode,repetition,r1,")


def test_spontaneous_reports_rates_and_bursts(tmp_path):
    out = tmp_path / "spont"
    rigctl("run", "spontaneous", "--rig", "sim-events", "--seed", "1", "--out", str(out), "--no-progress",
           "--set", "duration_s=8")
    assert len(read_trials(out)) == 0 and len(read_stims(out)) == 0
    spikes = read_spikes(out)
    sp = json.loads((out / "summary.json").read_text())["spontaneous"]
    after_lead_in = spikes["channel"][spikes["sample"] >= 25000]
    expected = np.bincount(after_lead_in, minlength=64) / 8.0
    assert np.allclose(sp["firing_rate_hz"], expected, atol=1e-3)
    assert sp["bursts"]["method"].startswith("ISI_N")


def test_the_burst_detector_finds_what_is_there():
    from rigctl.report_spontaneous import detect_bursts

    fs = 25000
    rng = np.random.default_rng(0)
    background = np.sort(rng.integers(0, 10 * fs, 40))  # sparse: 4 spikes/s over the array
    burst = 3 * fs + np.arange(30) * 50  # 30 spikes in 60 ms on 6 electrodes
    sample = np.sort(np.concatenate([background, burst]))
    channel = np.where(np.isin(sample, burst), np.arange(len(sample)) % 6, 40)
    bursts = detect_bursts(sample, channel.astype(np.int32), n=10, isi_n_samples=int(0.1 * fs), min_electrodes=4)
    assert len(bursts) == 1
    first, last, n_spikes, electrodes = bursts[0]
    assert first <= burst[0] and last >= burst[-1] and n_spikes >= 30 and electrodes >= 6
    assert detect_bursts(sample, channel.astype(np.int32), 10, int(0.1 * fs), min_electrodes=8) == []


@pytest.mark.parametrize("protocol, rig, direct", [
    ("isomura2023_bss_rhs", "rhx_sim.yaml", "sim"),
    ("isomura2023_bss_pulsepal", "pulsepal_sim.yaml", "sim-events"),
    ("isomura2023_bss_pulsepal", "openephys_pulsepal.yaml", "sim"),
])
def test_device_variants_give_the_direct_rigs_trials_over_one_full_session(tmp_path, protocol, rig, direct):
    hil, ref = tmp_path / "hil", tmp_path / "direct"
    rigctl("run", protocol, "--rig", str(RIGS / rig), "--sessions", "1", "--seed", "4", "--out", str(hil),
           "--no-progress", "--no-report")
    rigctl("run", protocol, "--rig", direct, "--sessions", "1", "--seed", "4", "--out", str(ref), "--no-progress",
           "--no-report")
    assert len(read_trials(hil)) == 256
    for reader in (read_trials, read_stims, read_spikes):
        assert reader(hil).tobytes() == reader(ref).tobytes(), reader.__name__


def test_a_python_protocol_runs_from_a_file_outside_the_package(tmp_path):
    out = tmp_path / "pp"
    rigctl("run", str(EXAMPLES / "paired_pulse.yaml"), "--rig", "sim-events", "--out", str(out), "--no-progress",
           "--set", "params.pairs=5")
    trials = read_trials(out)
    assert trials["pair"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert trials["pulse_in_pair"].tolist() == [1, 2] * 5
    assert np.diff(trials["sample"]).tolist()[:2] == [1250, 48750]  # 50 ms within a pair, 2 s between pairs
    meta = load_run_meta(out)
    assert meta["protocol_kind"] == "python"
    assert "paired_pulse.py:PairedPulse" in (out / "protocol.yaml").read_text()


def test_python_protocol_errors_are_one_line(tmp_path):
    text = (EXAMPLES / "paired_pulse.yaml").read_text()
    for change, expected in [(("electrode: 9", "electrode: 9000"), "electrode=9000; allowed: 0 to 4095"),
                             (("electrode: 9", "electrod: 9"), "unexpected keyword argument 'electrod'"),
                             (("paired_pulse.py:PairedPulse", "nowhere.py:PairedPulse"), "no such file"),
                             (("paired_pulse.py:PairedPulse", "paired_pulse.py:Nope"), "not a subclass")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(*change))
        (tmp_path / "paired_pulse.py").write_text((EXAMPLES / "paired_pulse.py").read_text())
        with pytest.raises(ProtocolError, match=expected) as info:
            load_protocol(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


CLOSED_LOOP = EXAMPLES / "switch_on_response.yaml"


def test_a_closed_loop_protocol_chooses_by_response_and_resumes_exactly_after_a_kill(tmp_path):
    opts = RunOptions(seed=3, progress=False, chunk_ms=50.0)
    ref = start_run(str(CLOSED_LOOP), opts, tmp_path / "ref", rig_factory=fake_rig_factory)
    trials = read_trials(ref)
    electrode = trials["electrode"]
    kept = trials["counts"][:-1, 18] >= 6
    assert np.array_equal(electrode[1:] == electrode[:-1], kept)  # every choice follows the last response
    assert set(electrode.tolist()) == {9, 27}
    out = tmp_path / "killed"
    call = (f"start_run({str(CLOSED_LOOP)!r}, RunOptions(seed=3, progress=False, chunk_ms=50.0), {str(out)!r}, "
            "rig_factory=factory)")
    assert _child("start_run", call, 500) == 137
    assert 0 < len(read_trials(out)) < 60
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__


def test_the_scan_resumes_exactly_after_a_kill(tmp_path):
    opts = RunOptions(seed=3, progress=False, chunk_ms=50.0, overrides=("repetitions=3", "isi_s=0.2"))
    ref = start_run("electrode_scan", opts, tmp_path / "ref", rig_factory=fake_rig_factory)
    out = tmp_path / "killed"
    call = (f"start_run('electrode_scan', RunOptions(seed=3, progress=False, chunk_ms=50.0, "
            f"overrides=('repetitions=3', 'isi_s=0.2')), {str(out)!r}, rig_factory=factory)")
    assert _child("start_run", call, 200) == 137
    resume_run(out, RunOptions(progress=False), rig_factory=fake_rig_factory)
    for reader in (read_trials, read_spikes, read_stims):
        assert reader(out).tobytes() == reader(ref).tobytes(), reader.__name__


@pytest.mark.parametrize("setting, expected", [
    ("sessions=abc", "--set sessions=abc: field 'sessions' has value 'abc'; expected int"),
    ("pulse.phase1_us=.nan", "--set pulse.phase1_us=.nan: field 'pulse.phase1_us'"),
    ("bogus=1", "--set bogus=1: unknown field 'bogus'"),
    ("mixing", "--set 'mixing': allowed: FIELD=VALUE"),
    ("a..b=1", "allowed: a field name or a dotted path"),
    ("mixing=[1, 2", "the value is not valid YAML"),
    ("mixing=&a 1", "anchors and aliases"),
    ("stim_groups.A=[0, 0]", "repeats an electrode"),
    ("name.x=1", "name is not a mapping"),
])
def test_bad_set_values_are_one_line_errors(setting, expected):
    with pytest.raises(ProtocolError) as info:
        load_protocol("isomura2023_bss", [setting])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_set_overrides_as_the_file_would():
    p = load_protocol("isomura2023_bss", ["mixing=1.0", "pulse.phase1_us=100", "pulse.phase2_us=100",
                                          "response_window_ms=[12, 30]"])
    assert p.mixing == 1.0 and p.pulse.phase1_us == 100 and p.response_window_ms == (12.0, 30.0)
    assert load_protocol("isomura2023_bss_mix0").mixing == 1.0


def test_bad_set_on_the_command_line_is_one_line_before_any_run_directory(tmp_path):
    proc = rigctl("run", "isomura2023_bss", "--set", "isi_s=-1", "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2 and "--set isi_s=-1: field 'isi_s' has value -1.0" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_a_run_made_before_protocol_kinds_reads_as_bss(tmp_path):
    """Run directories from before trial fields were declared (no trial_fields, no protocol_kind)."""
    out = tmp_path / "old"
    rigctl("run", "isomura2023_bss", "--rig", "sim-events", "--sessions", "1", "--set", "trials_per_session=6",
           "--out", str(out), "--no-progress", "--no-report")
    meta = json.loads((out / "run.json").read_text())
    before = rigctl("export", "trials", str(out)).stdout
    for key in ("trial_fields", "protocol_kind"):
        meta.pop(key)
    (out / "run.json").write_text(json.dumps(meta))
    assert rigctl("export", "trials", str(out)).stdout == before
    rigctl("report", str(out))
    assert json.loads((out / "summary.json").read_text())["trials"] == 6
