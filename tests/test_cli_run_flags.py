"""`rigctl run` refuses bad flags and undeliverable protocols in one line, before a run directory exists."""

from pathlib import Path

import pytest

from rigctl.cli import main

RIGS = Path(__file__).resolve().parents[1] / "rigs"


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        code = main(["run", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("args, expected", [
    (["--sessions", "abc"], "--sessions: abc: allowed: an integer from 1 to 100000"),
    (["--sessions", "0"], "--sessions: 0: allowed"),
    (["--seed", "-1"], "--seed: -1: allowed: an integer from 0 to"),
    (["--seed", "1e3"], "--seed: 1e3: allowed"),
    (["--chunk-ms", "nan"], "--chunk-ms: nan: allowed: a finite number from 0.1 to 10000"),
    (["--chunk-ms", "0"], "--chunk-ms: 0: allowed"),
    (["--chunk-ms", "inf"], "--chunk-ms: inf: allowed"),
    (["--stream", "garbage"], "--stream 'garbage': allowed: tcp://HOST:PORT"),
    (["--stream", "tcp://127.0.0.1:99999"], "--stream 'tcp://127.0.0.1:99999': allowed"),
    (["--rig", "nonsense"], "--rig 'nonsense': allowed: sim, sim-events, canonical (the CB22 agent, for kind: maze), or a rig file"),
])
def test_bad_flags_are_one_line(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, "isomura2023_bss", "--out", str(tmp_path / "r"), "--no-progress", *args)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_out_naming_a_file_or_an_unwritable_place_is_refused(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run_cli(capsys, "isomura2023_bss", "--out", str(a_file), "--sessions", "1")
    assert code == 2 and "exists and is not a directory" in err
    code, err = run_cli(capsys, "isomura2023_bss", "--out", str(a_file / "run"), "--sessions", "1")
    assert code == 2 and "is not a directory" in err and "Traceback" not in err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("rig, expected", [
    # the reference protocol stimulates 32 electrodes; a Pulse Pal drives four
    ("pulsepal_sim.yaml", "are not in the rig's safety.allowed_electrodes"),
])
def test_a_protocol_the_rig_cannot_deliver_is_refused_before_the_run_directory(capsys, tmp_path, rig, expected):
    code, err = run_cli(capsys, "isomura2023_bss", "--rig", str(RIGS / rig), "--out", str(tmp_path / "r"),
                        "--no-progress")
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def _four_electrode_protocol(tmp_path: Path, pulse: str = "") -> Path:
    path = tmp_path / "four.yaml"
    path.write_text("extends: isomura2023_bss.yaml\nname: four\nsessions: 1\ntrials_per_session: 4\n"
                    "stim_groups: {A: [0, 2], B: [4, 6]}\n" + pulse)
    return path


def test_a_recording_only_rig_refuses_a_stimulating_protocol_before_the_run(capsys, tmp_path):
    rig = tmp_path / "rec.yaml"
    rig.write_text("amplifier: {driver: sim, mode: events}\nstimulator: {driver: none}\n")
    code, err = run_cli(capsys, str(_four_electrode_protocol(tmp_path)), "--rig", str(rig),
                        "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and "no stimulator" in err and not (tmp_path / "r").exists()


def test_the_pulse_as_the_pulse_pal_delivers_it_must_pass_the_limits(capsys, tmp_path):
    """±1 V commanded reaches the electrodes as -1000.98 mV through the Pulse Pal's DAC: a rig limited to
    1000 mV refuses it, though the commanded pulse is within the limit."""
    rig = tmp_path / "pp.yaml"
    rig.write_text((RIGS / "pulsepal_sim.yaml").read_text().replace("max_amplitude_mV: 1500",
                                                                    "max_amplitude_mV: 1000"))
    code, err = run_cli(capsys, str(_four_electrode_protocol(tmp_path)), "--rig", str(rig),
                        "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and "as the device delivers it" in err and "1000.9765625" in err, err
    assert not (tmp_path / "r").exists()


def test_a_voltage_protocol_on_the_rhs_is_refused_before_the_run_directory(capsys, tmp_path):
    code, err = run_cli(capsys, "isomura2023_bss", "--rig", str(RIGS / "rhx_sim.yaml"), "--out", str(tmp_path / "r"),
                        "--no-progress")
    assert code == 2 and "RHS channels deliver current" in err and "command 1 of the plan" in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
