"""`rigctl model fit`: outputs, and clear errors for bad input (exit code 2, one line)."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from rigctl.cli import main
from rigctl.model.synthetic import canonical_culture

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "isomura2023"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"released data not found at {DATA} (../shared absent)")


def write_mat(path: Path, cond: str, n_cultures=2, n_sessions=14, s_override=None, r_cols=None):
    """A small .mat in the released layout (cell array data_<cond> of structs s, o, r), 256 steps/session."""
    cell = np.empty((n_cultures, 1), dtype=object)
    for n in range(n_cultures):
        c = canonical_culture(n_sessions=n_sessions, lam=300.0, bias=0.05, noise_sd=0.0, seed=n)
        rng = np.random.default_rng(n)
        rate = np.full((len(c.s), 16), 2.0)
        rate[:, :6] = 0.5 + 4.0 * c.x_true[:, [0]]
        rate[:, 6:12] = 0.5 + 4.0 * c.x_true[:, [1]]
        r = rng.poisson(rate).astype(np.uint8)
        if r_cols is not None:
            r = r[:, r_cols]
        s = c.s if s_override is None else s_override(c.s)
        cell[n, 0] = {"s": s, "o": c.o, "r": r}
    scipy.io.savemat(str(path), {f"data_{cond}": cell})
    return path


def test_fit_writes_model_json_and_plots(tmp_path, capsys):
    src = write_mat(tmp_path / "response_data_syn.mat", "syn")
    out = tmp_path / "out"
    assert main(["model", "fit", str(src), "--out", str(out), "--mode", "online", "--train-sessions", "5"]) == 0
    idx = json.loads((out / "index.json").read_text())
    assert idx["mode"] == "online" and len(idx["cultures"]) == 2 and idx["baseline"] > 0
    for n in (1, 2):
        d = out / f"syn_{n}"
        m = json.loads((d / "model.json").read_text())
        assert m["mode"] == "online" and m["train_sessions"] == 5 and len(m["L"]) == 14
        assert len(m["phi1"]) == 2 and len(m["err_x"]) == 14 and len(m["err_W"]) == 14
        for png in ("ensemble_responses", "calibration", "weights", "free_energy"):
            assert (d / f"{png}.png").stat().st_size > 1000
    assert "syn:1: err_x" in capsys.readouterr().out


def test_single_culture_goes_straight_into_out(tmp_path):
    src = write_mat(tmp_path / "response_data_syn.mat", "syn")
    out = tmp_path / "one"
    assert main(["model", "fit", str(src), "--culture", "syn:2", "--baseline", "3.0", "--out", str(out),
                 "--no-plots"]) == 0
    m = json.loads((out / "model.json").read_text())
    assert m["culture"] == "syn:2" and m["baseline"] == 3.0 and m["mode"] == "published"


@pytest.mark.parametrize("extra, message", [
    (["--culture", "syn:3"], "syn has cultures 1..2"),
    (["--culture", "abc:1"], "condition 'abc' is not among the sources"),
    (["--culture", "syn"], "must look like COND:N"),
    (["--baseline", "-1"], "--baseline must be a positive"),
    (["--train-sessions", "0"], "--train-sessions must be >= 1"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, extra, message):
    src = write_mat(tmp_path / "response_data_syn.mat", "syn", n_sessions=12)
    assert main(["model", "fit", str(src), "--out", str(tmp_path / "o"), "--no-plots", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_state_and_empty_ensemble_are_clear_errors(tmp_path, capsys):
    def drop_00(s):
        s = s.copy()
        s[:256][(s[:256] == 0).all(axis=1)] = 1
        return s
    bad = write_mat(tmp_path / "response_data_nos.mat", "nos", n_cultures=1, n_sessions=12, s_override=drop_00)
    assert main(["model", "fit", str(bad), "--baseline", "3", "--out", str(tmp_path / "o"), "--no-plots"]) == 2
    assert "s=(0,0) never occurs in session 1" in capsys.readouterr().err
    flat = write_mat(tmp_path / "response_data_flat.mat", "flat", n_cultures=1, n_sessions=12, r_cols=[12, 13, 14])
    assert main(["model", "fit", str(flat), "--out", str(tmp_path / "o2"), "--no-plots"]) == 2
    assert "ensembles G1 and G2 are empty" in capsys.readouterr().err
    # --skip-bad records the culture and goes on
    good = write_mat(tmp_path / "response_data_syn.mat", "syn", n_sessions=12)
    assert main(["model", "fit", str(good), str(bad), "--baseline", "3", "--skip-bad", "--out",
                 str(tmp_path / "o3"), "--no-plots"]) == 0
    idx = json.loads((tmp_path / "o3" / "index.json").read_text())
    assert [("error" in c) for c in idx["cultures"]] == [False, False, True]


def test_wrong_shapes_are_clear_errors(tmp_path, capsys):
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"s": np.zeros((512, 3), np.uint8), "o": np.zeros((512, 32), np.uint8),
                  "r": np.zeros((512, 8), np.uint8)}
    path = tmp_path / "response_data_bad.mat"
    scipy.io.savemat(str(path), {"data_bad": cell})
    assert main(["model", "fit", str(path), "--out", str(tmp_path / "o"), "--no-plots"]) == 2
    assert "s must have shape [T, 2]" in capsys.readouterr().err


@needs_data
def test_released_bic1_via_cli(tmp_path):
    out = tmp_path / "bic1"
    assert main(["model", "fit", str(DATA / "response_data_bic.mat"), "--culture", "bic:1",
                 "--baseline", "2.64037", "--out", str(out), "--no-plots"]) == 0
    m = json.loads((out / "model.json").read_text())
    assert [round(v, 3) for v in m["phi1"]] == [-0.709, -0.592]
    assert round(m["L"][99], 2) == 11171.37


def _fake_run(monkeypatch, tmp_path, n_sessions=13):
    """A run directory as the trial export returns it (rigctl.export.load_run_trials patched)."""
    c = canonical_culture(n_sessions=n_sessions, lam=300.0, bias=0.05, noise_sd=0.0, seed=4)
    rng = np.random.default_rng(4)
    rate = np.full((len(c.s), 16), 2.0)
    rate[:, :6] = 0.5 + 4.0 * c.x_true[:, [0]]
    rate[:, 6:12] = 0.5 + 4.0 * c.x_true[:, [1]]
    trials = {"s": c.s, "o": c.o, "r": rng.poisson(rate).astype(np.int32), "session": (c.sess + 1).astype(np.int32)}
    import rigctl.export
    monkeypatch.setattr(rigctl.export, "load_run_trials", lambda run_dir: trials)
    run = tmp_path / "run-seed4"
    run.mkdir()
    return run


def test_fit_a_run_directory(monkeypatch, tmp_path):
    run = _fake_run(monkeypatch, tmp_path)
    out = tmp_path / "out"
    assert main(["model", "fit", str(run), "--mode", "online", "--out", str(out), "--no-plots"]) == 0
    m = json.loads((out / "model.json").read_text())
    assert m["culture"] == "run-seed4:1" and len(m["L"]) == 13 and m["mode"] == "online"
    assert m["ensembles"]["g1"] == [1, 2, 3, 4, 5, 6]


def test_run_model_summary_for_report(monkeypatch, tmp_path):
    from rigctl.model.report import run_model_summary
    run = _fake_run(monkeypatch, tmp_path)
    got = run_model_summary(run)["free_energy_fit"]
    json.dumps(got, allow_nan=False)
    assert got["published"]["mode"] == "published" and got["online"]["mode"] == "online"
    short = _fake_run(monkeypatch, tmp_path / "s", n_sessions=8) if (tmp_path / "s").mkdir() is None else None
    got = run_model_summary(short)["free_energy_fit"]
    assert "needs more than 10" in got["published"]["error"]
