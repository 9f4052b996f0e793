"""Bad flags and bad input files are refused with one clear error line (exit code 2), never a traceback
or a silently accepted nonsense value; and `rigctl report` says when a run is not complete (issue 11)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from rigctl.report import response_lines
import scipy.io

from rigctl.cli import main
from rigctl.store import RunInfo


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`rigctl ARGV` in-process: (exit code, stdout, stderr). Any other exception fails the test."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The single `error:` line of stderr (argparse prints its usage lines before it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    path = tmp_path / "rec.raw"
    np.zeros((2500, 4), np.int16).tofile(path)
    return path


# ---- numeric and choice flags: argparse refuses them, naming flag, value and what is allowed ---------------
DETECT = ["detect", "{raw}", "--channels", "4", "--rate-hz", "25000", "--uv-per-bit", "0.195"]

FLAG_CASES = [
    # (argv, flag, value, what the message must say is allowed)
    (["bench", "latency", "--rate-hz", "0"], "--rate-hz", "0", "a finite number from 1000 to 100000"),
    (["bench", "latency", "--rate-hz", "nan"], "--rate-hz", "nan", "a finite number from 1000 to 100000"),
    (["bench", "latency", "--chunk-ms", "inf"], "--chunk-ms", "inf", "a finite number from 0.1 to 10000"),
    (["bench", "latency", "--seconds", "1"], "--seconds", "1", "a finite number from 2 to 3600"),
    (["bench", "latency", "--channels", "47"], "--channels", "47", "an integer from 48 to 4096"),
    (["bench", "throughput", "--rate-hz", "-1"], "--rate-hz", "-1", "a finite number from 1000 to 100000"),
    (["bench", "throughput", "--seconds", "0"], "--seconds", "0", "a finite number from 0.1 to 600"),
    (["bench", "throughput", "--seconds", "inf"], "--seconds", "inf", "a finite number from 0.1 to 600"),
    (["bench", "throughput", "--channels", "0"], "--channels", "0", "an integer from 1 to 8192"),
    (["bench", "throughput", "--chunk-ms", "0"], "--chunk-ms", "0", "a finite number from 0.1 to 10000"),
    (["bench", "throughput", "--seed", "-1"], "--seed", "-1", "an integer from 0 to"),
    (["bench", "drivers", "--seconds", "0"], "--seconds", "0", "a finite number from 0.1 to 600"),
    (DETECT[:5] + ["nan", "--uv-per-bit", "0.195"], "--rate-hz", "nan", "a finite number from 1000 to 100000"),
    (DETECT[:7] + ["inf"], "--uv-per-bit", "inf", "a finite number > 0"),
    (DETECT + ["--threshold-sd", "nan"], "--threshold-sd", "nan", "a finite number > 0"),
    (DETECT + ["--chunk-ms", "1e400"], "--chunk-ms", "1e400", "a finite number from 0.1 to 10000"),
    (DETECT[:3] + ["4.5"] + DETECT[4:], "--channels", "4.5", "an integer from 1 to 4096"),
    (["emulate", "rhx", "--port", "-5"], "--port", "-5", "a TCP port from 0 to 65535"),
    (["emulate", "rhx", "--port", "99999"], "--port", "99999", "a TCP port from 0 to 65535"),
    (["emulate", "openephys", "--sample-rate-hz", "0"], "--sample-rate-hz", "0",
     "a finite number from 1000 to 100000"),
    (["emulate", "rhx", "--drug", "caffeine"], "--drug", "caffeine", "'none', 'bicuculline', 'diazepam', 'apv'"),
    (["emulate", "rhx", "--duration-s", "-1"], "--duration-s", "-1", "a finite number > 0 and <= 2592000"),
    (["emulate", "rhx", "--duration-s", "nan"], "--duration-s", "nan", "a finite number > 0 and <= 2592000"),
    (["emulate", "rhx", "--seed", "-1"], "--seed", "-1", "an integer from 0 to"),
    (["emulate", "pulsepal", "--outputs", "1:-1"], "--outputs", "1:-1", "electrodes >= 0"),
    (["emulate", "pulsepal", "--outputs", "1:0,1:2"], "--outputs", "1:0,1:2", "each output once"),
]


@pytest.mark.parametrize("argv, flag, value, allowed", FLAG_CASES,
                         ids=[" ".join([*c[0][:2 if c[0][0] != "detect" else 1], c[1], c[2]]) for c in FLAG_CASES])
def test_bad_numeric_and_choice_flags_are_one_clear_error(argv, flag, value, allowed, raw_file, capsys):
    code, out, err = run_cli([a.replace("{raw}", str(raw_file)) for a in argv], capsys)
    assert code == 2
    line = error_line(err)
    assert f"argument {flag}" in line and value in line and allowed in line, line
    assert out == ""


# ---- output files into a missing directory: refused before any work, naming the directory --------------
@pytest.mark.parametrize("command", ["detect", "bench latency", "model table"])
def test_output_file_in_a_missing_directory_is_refused(command, raw_file, tmp_path, capsys):
    target = tmp_path / "missing" / "out.file"
    argv = {"detect": DETECT + ["--out", target],
            "bench latency": ["bench", "latency", "--seconds", "2", "--png", target],
            "model table": ["model", "table", tmp_path, "--out", target]}[command]
    code, _, err = run_cli([str(a).replace("{raw}", str(raw_file)) for a in argv], capsys)
    assert code == 2
    line = error_line(err)
    flag = "--png" if command == "bench latency" else "--out"
    assert f"argument {flag}: {target}: directory {target.parent} does not exist" in line, line
    assert not target.parent.exists()  # nothing was created


def test_output_file_that_is_a_directory_is_refused(raw_file, tmp_path, capsys):
    code, _, err = run_cli([a.replace("{raw}", str(raw_file)) for a in DETECT] + ["--out", str(tmp_path)], capsys)
    assert code == 2
    assert f"argument --out: {tmp_path}: is a directory" in error_line(err)


# ---- .mat files that cannot be read: one line naming the file --------------------------------------------
def _mat_bytes(tmp_path: Path, compressed: bool) -> bytes:
    cell = np.empty((1, 1), dtype=object)
    rng = np.random.default_rng(0)
    cell[0, 0] = {"s": rng.integers(0, 2, (512, 2)), "o": rng.integers(0, 2, (512, 32)),
                  "r": rng.integers(0, 5, (512, 8))}
    path = tmp_path / "whole.mat"
    scipy.io.savemat(str(path), {"data_syn": cell}, do_compression=compressed)
    return path.read_bytes()


MAT_CASES = {
    "empty": (lambda b, c: b"", "empty file (0 bytes)"),
    "header only": (lambda b, c: b[:100], "truncated or corrupt"),
    "truncated": (lambda b, c: b[:len(b) // 2], "truncated or corrupt"),
    "truncated compressed": (lambda b, c: c[:len(c) // 2], "truncated or corrupt"),
    "corrupt compressed": (lambda b, c: c[:300] + bytes(255 - x for x in c[300:310]) + c[310:], "truncated or corrupt"),
    "text": (lambda b, c: b"s,o,r\n1,2,3\n" * 20, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(MAT_CASES))
def test_unreadable_mat_file_is_one_error_line_naming_it(case, tmp_path, capsys):
    make, message = MAT_CASES[case]
    path = tmp_path / "response_data_syn.mat"
    path.write_bytes(make(_mat_bytes(tmp_path, False), _mat_bytes(tmp_path, True)))
    code, _, err = run_cli(["model", "fit", path, "--out", tmp_path / "o", "--no-plots"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"rigctl model: error: {path}: "), err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_model_fit_baseline_must_be_finite(value, tmp_path, capsys):
    from test_model_cli import write_mat

    src = write_mat(tmp_path / "response_data_syn.mat", "syn", n_sessions=12)
    code, _, err = run_cli(["model", "fit", src, "--baseline", value, "--out", tmp_path / "o", "--no-plots"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"--baseline must be a positive finite number of spikes/stim, got {value}" in err


def test_model_fit_out_that_is_a_file_is_one_error_line(tmp_path, capsys):
    from test_model_cli import write_mat

    src = write_mat(tmp_path / "response_data_syn.mat", "syn", n_sessions=12)
    out = tmp_path / "taken"
    out.write_text("")
    code, _, err = run_cli(["model", "fit", src, "--baseline", "3", "--out", out, "--no-plots"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {out}: exists and is not a directory" in err


# ---- emulators that cannot listen, or are wired to electrodes the culture lacks ---------------------------
def test_emulate_on_a_port_in_use_is_one_error_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run_cli(["emulate", "rhx", "--port", port, "--duration-s", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"rigctl emulate: error: emulate rhx --host 127.0.0.1 --port {port}: cannot listen"), err


def test_emulate_pulsepal_electrode_outside_the_culture_is_refused(capsys):
    code, out, err = run_cli(["emulate", "pulsepal", "--outputs", "1:0,2:64", "--duration-s", "1"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "emulate pulsepal --outputs 1:0,2:64: electrode 64: allowed: 0 to 63" in err
    assert "ready" not in out


# ---- run directories: missing, a file, not a run, corrupt ------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A complete 2 x 10-trial run on the simulated rig (sim-events), written by `rigctl run`."""
    base = tmp_path_factory.mktemp("run")
    proto = base / "tiny.yaml"
    proto.write_text("extends: isomura2023_bss.yaml\nname: tiny\nsessions: 2\ntrials_per_session: 10\n"
                     "isi_s: 0.2\nrest_s: 1.0\nfirst_trial_s: 0.5\nresponse_window_ms: [10, 30]\n"
                     "spike_window_ms: [-20, 60]\nraw_window_ms: [-5, 35]\n")
    shutil.copy(Path(__file__).resolve().parents[1] / "protocols" / "isomura2023_bss.yaml", base)
    out = base / "run"
    assert main(["run", str(proto), "--rig", "sim-events", "--seed", "1", "--out", str(out), "--no-progress",
                 "--no-report"]) == 0
    return out


def _bad_run_dir(kind: str, tmp_path: Path, finished_run: Path) -> tuple[Path, str]:
    """A path that is not a usable run directory, and what the error must say about it."""
    path = tmp_path / "r"
    if kind == "missing":
        return path, f"{path}: no such directory"
    if kind == "a file":
        path.write_text("hello\n")
        return path, f"{path}: is a file, not a run directory"
    if kind == "no run.json":
        path.mkdir()
        return path, f"{path} is not a rigctl run directory (no run.json)"
    shutil.copytree(finished_run, path)
    meta_path = path / "run.json"
    meta = json.loads(meta_path.read_text())
    if kind == "run.json torn":
        meta_path.write_text(meta_path.read_text()[:50])
        return path, f"{meta_path}: corrupt JSON"
    if kind == "run.json a list":
        meta_path.write_text("[]\n")
        return path, f"{meta_path}: corrupt: expected a JSON object, got list"
    if kind == "run.json without shapes":
        del meta["shapes"]
        meta_path.write_text(json.dumps(meta))
        return path, f"{meta_path}: corrupt: field 'shapes' is missing"
    if kind == "bad shapes":
        meta["shapes"]["n_electrodes"] = "64"
        meta_path.write_text(json.dumps(meta))
        return path, f"{meta_path}: corrupt: field 'shapes.n_electrodes' has value '64'; allowed: an integer >= 0"
    if kind == "no trials":
        (path / "trials.bin").write_bytes(b"")
        return path, f"{path}: the run holds no trials yet (status: complete)"
    raise AssertionError(kind)


RUN_DIR_CASES = ["missing", "a file", "no run.json", "run.json torn", "run.json a list", "run.json without shapes",
                 "bad shapes", "no trials"]


@pytest.mark.parametrize("command", [["report"], ["export", "trials"]])
@pytest.mark.parametrize("kind", RUN_DIR_CASES)
def test_bad_run_dir_is_one_error_line(command, kind, tmp_path, finished_run, capsys):
    path, message = _bad_run_dir(kind, tmp_path, finished_run)
    code, out, err = run_cli(command + [path], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"rigctl {command[0]}: error: "), err
    assert message in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("kind", ["no protocol.yaml", "protocol.yaml corrupt", "protocol.yaml without trials"])
def test_report_on_a_run_with_a_bad_protocol_copy_is_one_error_line(kind, tmp_path, finished_run, capsys):
    path = tmp_path / "r"
    shutil.copytree(finished_run, path)
    proto = path / "protocol.yaml"
    if kind == "no protocol.yaml":
        proto.unlink()
        message = f"{proto}: no such file"
    elif kind == "protocol.yaml corrupt":
        proto.write_text("sessions: [\n")
        message = f"{proto}:2: not valid YAML"
    else:
        proto.write_text("sessions: 2\n")
        message = f"{proto}: field 'trials_per_session' is missing"
    code, _, err = run_cli(["report", path], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("kind", ["missing", "a directory", "a run directory", "binary", "not yaml"])
def test_validate_bad_path_is_one_error_line(kind, tmp_path, finished_run, capsys):
    path = tmp_path / "p.yaml"
    if kind == "missing":
        message = f"{path}: no such protocol file"
    elif kind == "a directory":
        path.mkdir()
        message = f"{path}: is a directory"
    elif kind == "a run directory":
        path = finished_run
        message = f"{path}: is a run directory, not a protocol file; validate its protocol: {path / 'protocol.yaml'}"
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
        message = f"{path}: not a text file"
    else:
        path.write_text("sessions: [\n")
        message = f"{path}:2: not valid YAML"
    code, out, err = run_cli(["validate", path], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("rigctl validate: error: ") and message in err, err


# ---- report on an unfinished run: says so on stderr and in summary.json ----------------------------------
def _unfinished(finished_run: Path, tmp_path: Path, status: str, keep_trials: int) -> Path:
    path = tmp_path / status
    shutil.copytree(finished_run, path)
    meta = json.loads((path / "run.json").read_text())
    meta["status"] = status
    (path / "run.json").write_text(json.dumps(meta))
    dtype = RunInfo(path, meta).trial_dtype
    with open(path / "trials.bin", "r+b") as f:
        f.truncate(keep_trials * dtype.itemsize)
    (path / "summary.json").unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
def test_report_on_an_unfinished_run_warns_and_records_the_status(status, tmp_path, finished_run, capsys):
    path = _unfinished(finished_run, tmp_path, status, keep_trials=15)
    code, out, err = run_cli(["report", path], capsys)
    assert code == 0 and out.strip() == str(path / "summary.json")
    summary = json.loads((path / "summary.json").read_text())
    # the warning, then the run's response figures (issue 16), nothing else
    assert err == (f"rigctl report: warning: {path}: the run is not complete (status: {status}); the report "
                   "covers its 15 of 20 planned trials (1 of 2 sessions complete)\n"
                   + "".join(line + "\n" for line in response_lines(summary["response"])))
    assert summary["run_status"] == status and summary["trials"] == 15 and summary["trials_planned"] == 20
    assert summary["sessions_completed"] == 1


def test_report_on_a_complete_run_says_nothing_extra(finished_run, tmp_path, capsys):
    path = tmp_path / "done"
    shutil.copytree(finished_run, path)
    code, out, err = run_cli(["report", path], capsys)
    summary = json.loads((path / "summary.json").read_text())
    assert code == 0 and err == "".join(line + "\n" for line in response_lines(summary["response"]))
    assert err.startswith("responses: gain ") and err.count("\n") == 1
    assert summary["run_status"] == "complete" and summary["trials"] == summary["trials_planned"] == 20
