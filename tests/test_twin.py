"""`rigctl twin` (docs/twin.md): one-line errors, the scoring core, the driver's mapping, an end-to-end tiny
fit and determinism. Kept small: a few simulated sessions, budgets of 3-4 evaluations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rigctl.cli import main
from rigctl.errors import ModelInputError
from rigctl.model import twin_score as ts
from rigctl.model.published import fit_published

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "isomura2023"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"released data not found at {DATA} (../shared absent)")
B_MIX0 = 5.89021  # spec 2.3: batch baseline of the four mix0 cultures


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def mix0_1():
    from rigctl.model.loading import load_mat
    return load_mat(DATA / "response_data_mix0.mat").cultures[0]


@pytest.fixture(scope="module")
def published(mix0_1):
    return fit_published(mix0_1, B_MIX0)


# ---- CLI errors: one line, exit code 2, naming what is allowed ------------------------------------------------
@pytest.mark.parametrize("value", ["mix0", "mix0:0", "mix0:5", "dzp:8", "bic:7", "ctrl:1", "mix0:x", "mix0:1:2", ":1"])
def test_bad_culture_is_one_error_line(value, tmp_path, capsys):
    code, out, err = run_cli(["twin", "fit", "--culture", value, "--out", tmp_path / "o"], capsys)
    assert code == 2 and out == ""
    line = error_line(err)
    assert "argument --culture" in line and repr(value) in line
    assert "bic:1..6, dzp:1..7, mix0:1..4, mix50:1..4" in line
    assert not (tmp_path / "o").exists()


def test_missing_data_file_is_one_error_line(tmp_path, capsys):
    code, out, err = run_cli(["twin", "fit", "--culture", "mix50:2", "--out", tmp_path / "o",
                              "--data-dir", tmp_path], capsys)
    assert code == 2
    line = error_line(err)
    assert str(tmp_path / "response_data_mix50.mat") in line and "not found" in line


def test_table_of_an_empty_dir_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(["twin", "table", tmp_path], capsys)
    assert code == 2 and "no <culture>/twin.json" in error_line(err)


# ---- scoring core -----------------------------------------------------------------------------------------------
@needs_data
def test_twin_x_is_the_published_pipeline(mix0_1, published):
    """The culture run through the twin's normalisation gives the model's own x, bit for bit (so a twin equal
    to the culture is scored on exactly the model's x)."""
    tr = mix0_1
    x = ts.twin_x(tr.r, tr.s, tr.sess, tr.n_sessions, published.ensembles, published.baseline)
    np.testing.assert_allclose(x, published.x, rtol=0, atol=1e-12)
    xc = ts.culture_normalised_x(tr.r, tr.s, tr.sess, tr.n_sessions, published.ensembles, published.x_raw,
                                 published.baseline)
    np.testing.assert_allclose(xc, published.x, rtol=0, atol=1e-12)


@needs_data
def test_err_x_of_the_culture_itself_is_zero_and_a_perturbed_twin_is_not(mix0_1, published):
    tr, k = mix0_1, mix0_1.n_sessions
    args = (tr.s, tr.sess, k, published.ensembles, published.baseline)
    same = ts.score(published.x, published.x_raw, tr.r, *args)
    assert same["err_x_sample"] == [0.0] * k  # the twin's own sample equals the culture's x
    assert same["err_x_culture_norm"] == same["err_x_floor"]
    np.testing.assert_allclose(same["err_x"], same["err_x_floor"], atol=1e-15)
    assert same["err_x_floor_last10"] < same["err_x_constant_last10"]
    # a twin whose G1 electrodes fire 50 % more from session 51 on: worse on the late sessions only
    r = tr.r.copy()
    late = tr.sess >= 50
    r[np.ix_(late, published.ensembles.g1)] = np.round(1.5 * r[np.ix_(late, published.ensembles.g1)])
    bad = ts.score(published.x, published.x_raw, r, *args)
    assert bad["err_x_sample"][:50] == [0.0] * 50 or max(bad["err_x_sample"][:50]) < 0.05
    assert bad["err_x_sample_last10"] > 0.01
    assert bad["err_x_culture_norm_last10"] > same["err_x_culture_norm_last10"] + 0.01
    # and a twin with independent noise is worse than the floor everywhere
    rng = np.random.default_rng(0)
    noisy = rng.poisson(tr.r + 0.5).astype(float)
    assert ts.score(published.x, published.x_raw, noisy, *args)["err_x_last10"] > same["err_x_floor_last10"]


def test_err_x_by_session_is_the_spec_metric():
    rng = np.random.default_rng(1)
    x, xp = rng.random((512, 2)), rng.random((512, 2))
    sess = np.repeat([0, 1], 256)
    got = ts.err_x_by_session(x, xp, sess, 2)
    assert got[0] == pytest.approx(np.mean((x[:256] - xp[:256]) ** 2))
    assert got[1] == pytest.approx(np.mean((x[256:] - xp[256:]) ** 2))


def test_conditional_prediction_is_the_per_session_state_mean():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 2, (40, 2))
    sess = np.repeat([0, 1], 20)
    x = rng.random((40, 2))
    p = ts.conditional_prediction(x, s, sess, 2)
    code = s[:, 0] * 2 + s[:, 1]
    for t in (0, 7, 25, 39):
        m = (sess == sess[t]) & (code == code[t])
        np.testing.assert_allclose(p[t], x[m].mean(axis=0))


def _profile(rng, n=64):
    return rng.gamma(2.0, 1.0, (2, 4, n))


def test_profile_loss_ignores_record_only_positions_but_not_stimulating_ones():
    rng = np.random.default_rng(3)
    c = _profile(rng)
    assert ts.profile_loss(c, c) == 0.0
    perm = c.copy()
    perm[..., :32] = c[..., rng.permutation(32)]
    assert ts.profile_loss(perm, c) == pytest.approx(0.0, abs=1e-15)
    swap = c.copy()
    swap[..., 32:] = c[..., 32 + rng.permutation(32)]
    assert ts.profile_loss(swap, c) > 0.01
    assert ts.profile_loss(2 * c, c) > ts.profile_loss(1.1 * c, c) > 0
    # exact value for a uniform log offset: every entry differs by log1p(e) - 0 ... (twin 1 vs culture 0)
    assert ts.profile_loss(np.full((2, 4, 64), np.e - 1), np.zeros((2, 4, 64))) == pytest.approx(1.0)


def test_evoked_profile_halves_and_states():
    s = np.array([[1, 1], [1, 0], [0, 1], [0, 0]] * 4, np.uint8)
    sess = np.repeat([0, 1, 2, 3], 4)
    r = np.zeros((16, 64))
    r[sess >= 2, 40] = 3.0  # electrode column 40 responds in the second half only
    r[(s[:, 0] == 1) & (s[:, 1] == 0), 5] = 2.0  # column 5 in state 10 only
    p = ts.evoked_profile(r, s, sess, 4)
    assert p.shape == (2, 4, 64)
    assert (p[0, :, 40] == 0).all() and (p[1, :, 40] == 3).all()
    assert (p[:, 1, 5] == 2).all() and (p[:, [0, 2, 3], 5] == 0).all()


# ---- parameters and driver --------------------------------------------------------------------------------------
def test_params_apply_and_unit_box_roundtrip():
    from rigctl.sim.culture import CultureConfig
    from rigctl.twin import params as P

    P.check_params()
    vals = P.from_unit([0.25] * len(P.PARAMS))
    back = P.to_unit(vals)
    np.testing.assert_allclose(back, 0.25)
    cfg, eff = P.apply(vals)
    for p in P.PARAMS:
        got = eff[0] if p.target == "efficacy_a" else eff[1] if p.target == "efficacy_b" else getattr(cfg, p.target)
        assert got == pytest.approx(vals[p.name])
    assert cfg.n_neurons == CultureConfig().n_neurons  # the rest untouched
    assert P.to_unit(P.defaults()) == pytest.approx(P.to_unit(P.defaults()))
    bad = (replace(P.PARAMS[0], target="no_such_field"),)
    with pytest.raises(ModelInputError, match="no_such_field.*not a CultureConfig field"):
        P.check_params(bad)


def test_setup_maps_columns_to_the_protocols_electrodes():
    from rigctl.protocol import load_protocol
    from rigctl.twin.drive import default_setup

    st = default_setup()
    proto = load_protocol("isomura2023_bss")
    assert st.stim.tolist() == list(proto.stim_electrodes)  # columns 33..64 = o1..o32
    assert st.record.tolist() == sorted(set(range(64)) - set(proto.stim_electrodes))  # columns 1..32 row-major
    assert sorted(st.column_electrode.tolist()) == list(range(64))


def test_group_efficacy_acts_on_its_own_group_only():
    from rigctl.twin.drive import simulate

    o = np.zeros((12, 32), np.uint8)
    o[:, 16:] = 1  # only group B (o17..o32) is stimulated
    a = simulate(o, 1, "none", None, (0.25, 4.0), seed=3)
    b = simulate(o, 1, "none", None, (4.0, 4.0), seed=3)  # group A's efficacy: no effect
    np.testing.assert_array_equal(a, b)
    other = simulate(o, 1, "none", None, (4.0, 0.25), seed=3)  # group B's efficacy: changes the response
    assert np.abs(a[:, 48:] - other[:, 48:]).sum() > 100
    o2 = 1 - o  # now only group A
    np.testing.assert_array_equal(simulate(o2, 1, "none", None, (4.0, 0.25), seed=3),
                                  simulate(o2, 1, "none", None, (4.0, 4.0), seed=3))


# ---- end to end --------------------------------------------------------------------------------------------------
@needs_data
def test_tiny_fit_writes_twin_json_log_and_figure(tmp_path, capsys):
    out = tmp_path / "twins"
    code, stdout, err = run_cli(["twin", "fit", "--culture", "mix0:1", "--out", out, "--budget", "4",
                                 "--workers", "1", "--fit-sessions", "2", "--sessions", "3"], capsys)
    assert code == 0, err
    d = out / "mix0_1"
    rec = json.loads((d / "twin.json").read_text())
    for key in ("culture", "seed", "budget", "params", "loss", "err_x", "err_x_last10", "wall_time_s", "config",
                "model", "err_x_floor_last10", "err_x_constant_last10"):
        assert key in rec, key
    assert rec["culture"] == "mix0:1" and rec["budget"] == 4 and rec["evaluations"] == 4
    assert len(rec["err_x"]) == 3 and rec["err_x_last10"] == pytest.approx(np.mean(rec["err_x"]))
    log = [json.loads(line) for line in (d / "evaluations.jsonl").read_text().splitlines()]
    assert len(log) == 4 and [e["evaluation"] for e in log] == [1, 2, 3, 4]
    best = min(log, key=lambda e: e["loss"])
    assert rec["loss"] == best["loss"] and rec["params"] == best["params"]
    assert rec["loss_defaults"] == rec["defaults"]["loss"] == log[0]["loss"]
    if rec["best_evaluation"] == 1:  # the untuned twin won: its err_x is the twin's, bit for bit
        assert rec["defaults"]["err_x"] == rec["err_x"]
    counts = np.load(d / "twin_counts.npy")
    assert counts.shape == (3 * 256, 64) and counts.dtype == np.uint8
    assert rec["config"]["v_th_mV"] == pytest.approx(rec["params"]["v_th_mV"])
    assert (d / "twin.png").stat().st_size > 10000
    assert "evaluation 4/4" in err
    assert "| mix0:1 |" in stdout
    code, table, _ = run_cli(["twin", "table", out], capsys)
    assert code == 0 and f"| mix0:1 | {rec['err_x_last10']:.4f} |" in table


@needs_data
def test_fit_is_deterministic_and_parallel_does_not_change_it(mix0_1, tmp_path):
    from rigctl.twin import params as P
    from rigctl.twin.fit import make_target, optimise

    target = make_target(mix0_1, "none", 1, seed=0)
    quiet = dict(progress=lambda line: None)
    a = optimise(target, 3, 5, 1, tmp_path / "a.jsonl", **quiet)
    c = optimise(target, 3, 5, 2, tmp_path / "c.jsonl", **quiet)
    d = optimise(target, 3, 6, 1, tmp_path / "d.jsonl", **quiet)
    logs = {k: [json.loads(x) for x in (tmp_path / f"{k}.jsonl").read_text().splitlines()] for k in "acd"}
    assert a["best"]["params"] == c["best"]["params"]  # same seed, 1 or 2 worker processes: the same fit
    assert [e["u"] for e in logs["a"]] == [e["u"] for e in logs["c"]]
    assert [e["loss"] for e in logs["a"]] == [e["loss"] for e in logs["c"]]
    assert len({e["loss"] for e in logs["a"]}) == 3  # three different candidates, not one repeated
    assert logs["a"][0]["params"] == pytest.approx(P.defaults())  # evaluation 1: the defaults
    assert logs["a"][1]["u"] != logs["d"][1]["u"]  # another seed, other candidates
