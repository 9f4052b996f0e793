"""Published mode (spec 2.3, 3.4-3.6): the validation target of spec 4.3 and unit checks of the network."""

from pathlib import Path

import numpy as np
import pytest

from rigctl.model import metrics
from rigctl.model import network as nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "isomura2023"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"released data not found at {DATA} (../shared absent)")


def test_activity_is_the_stationary_point_of_the_cost():
    """-dL/dx = 0 at x = σ(W o + h) (spec 3.2); checked by finite differences away from the 1e-6 epsilon."""
    rng = np.random.default_rng(0)
    w1, w0 = rng.normal(0, 0.3, (2, 32)), rng.normal(0, 0.3, (2, 32))
    phi1, phi0 = np.log([0.4, 0.6]), np.log([0.6, 0.4])
    h1, h0 = nn.thresholds(w1, w0, phi1, phi0)
    o = rng.integers(0, 2, (1, 32)).astype(float)
    x = nn.activity(o, w1, w0, h1, h0)
    for j in range(2):
        for d in (1e-4, -1e-4):
            xd = x.copy()
            xd[0, j] += d
            assert nn.cost(xd, o, w1, w0, h1, h0) > nn.cost(x, o, w1, w0, h1, h0)  # a minimum in x


def test_cost_at_zero_weights_and_thresholds():
    """At W = 0 the cost of a session is ≈ 256·2·(32 ln 2 + ...) ≈ 11,450 (spec 3.4.4)."""
    pl = nn.Plasticity.prior(32)
    w1, w0 = pl.weights()
    assert np.allclose(w1, 0) and np.allclose(w0, 0)
    h1, h0 = nn.thresholds(w1, w0, np.log([0.5, 0.5]), np.log([0.5, 0.5]))
    assert np.allclose(h1, 32 * np.log(0.5) + np.log(0.5))
    x = np.full((256, 2), 0.5)
    o = np.random.default_rng(1).integers(0, 2, (256, 32))
    assert nn.cost(x, o, w1, w0, h1, h0) == pytest.approx(256 * 2 * (33 * np.log(2) - np.log(2)), rel=1e-5)


def test_plasticity_closed_form_is_the_hebbian_fixed_point():
    """σ(W1) (λ + Σx) = λ/2 + Σ x oᵀ (spec 3.2: Hebbian minus homeostatic term is zero)."""
    rng = np.random.default_rng(2)
    x, o = rng.random((100, 2)), rng.integers(0, 2, (100, 32))
    pl = nn.Plasticity.prior(32, lam=50.0)
    pl.add(x, o)
    w1, w0 = pl.weights()
    assert np.allclose(nn.sigmoid(w1) * (50.0 + x.sum(0))[:, None], 25.0 + x.T @ o)
    assert np.allclose(nn.sigmoid(w0) * (50.0 + (1 - x).sum(0))[:, None], 25.0 + (1 - x).T @ o)


def test_metrics():
    x = np.array([[0.1, 0.9], [0.5, 0.5]])
    assert metrics.err_x(x, x) == 0
    assert metrics.err_x(x, np.zeros_like(x)) == pytest.approx(np.mean(x ** 2))
    w = np.zeros((2, 3))
    assert metrics.err_w(w, w, w, w) == 0
    assert metrics.err_w(w, w, w + 100, w) == pytest.approx(0.5, rel=1e-3)  # σ: 0.5 -> 1 on half the rows
    a = np.arange(6.0).reshape(2, 3)
    assert metrics.weight_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.weight_correlation(a, np.zeros_like(a)) == 0.0
    cal = metrics.calibration(np.array([0.0, 0.01, 0.99, 1.0]), np.array([0.2, 0.4, 0.9, 0.7]))
    assert cal["centres"][0] == pytest.approx(0.02) and cal["centres"][-1] == pytest.approx(0.98)
    assert cal["count"][0] == 2 and cal["count"][-1] == 2 and sum(cal["count"]) == 4
    assert cal["mean"][0] == pytest.approx(0.3) and cal["mean"][5] is None


@pytest.fixture(scope="module")
def bic1():
    if not DATA.is_dir():
        pytest.skip(f"released data not found at {DATA} (../shared absent)")
    from rigctl.model.loading import load_mat
    from rigctl.model.published import fit_published
    return fit_published(load_mat(DATA / "response_data_bic.mat").cultures[0], baseline=2.64037)


@needs_data
def test_spec_4_3_validation_target(bic1):
    """bic culture 1, B = 2.64037: φ to 3 decimals, L to 2, err_x to 3 (spec 4.3)."""
    t = bic1.traj
    assert np.round(t.phi1, 3).tolist() == [-0.709, -0.592]
    assert np.round(t.phi0, 3).tolist() == [-0.677, -0.806]
    assert [round(float(t.L[k - 1]), 2) for k in (1, 10, 50, 100)] == [11463.44, 11429.27, 11248.14, 11171.37]
    assert [round(float(t.err_x[k - 1]), 3) for k in (1, 10, 11, 50, 100)] == [0.080, 0.097, 0.087, 0.151, 0.169]


@needs_data
def test_released_batch_baselines():
    """B_mix0 = 5.89021, B_mix50 = 4.94098; bic + dzp released give 2.72779, not the authors' 2.64037 (spec 2.3)."""
    from rigctl.model.loading import load_mat
    from rigctl.model.published import published_baseline
    got = {c: published_baseline(load_mat(DATA / f"response_data_{c}.mat").cultures) for c in ("mix0", "mix50")}
    assert round(got["mix0"], 5) == 5.89021 and round(got["mix50"], 5) == 4.94098
    both = load_mat(DATA / "response_data_bic.mat").cultures + load_mat(DATA / "response_data_dzp.mat").cultures
    assert round(published_baseline(both), 5) == 2.72779


@needs_data
def test_fit_json_is_complete_and_nan_free(bic1):
    import json
    d = bic1.to_json()
    text = json.dumps(d, allow_nan=False)  # raises on NaN/inf
    assert "NaN" not in text
    for key in ("phi1", "phi0"):
        assert len(d[key]) == 2
    for key in ("L", "err_x", "err_W"):
        assert len(d[key]) == 100
    assert d["mode"] == "published" and d["baseline"] == 2.64037 and d["train_sessions"] == 10
    assert d["err_W"][0] == 0.0 and d["err_W"][50] > 0
    assert -1.0 <= d["summary"]["weight_corr_last"] <= 1.0


def test_ideal_likelihood_matches_spec_1_2_and_err_w_qa():
    a11, a10 = metrics.ideal_likelihood(0.75)
    assert (a11[0, :16] == 0.875).all() and (a10[0, :16] == 0.125).all()  # own group, control
    assert (a11[0, 16:] == 0.625).all() and (a10[0, 16:] == 0.375).all()  # other group
    assert (a11[1, 16:] == 0.875).all() and (a11[1, :16] == 0.625).all()  # source 2 mirrored
    m11, m10 = metrics.ideal_likelihood(1.0)
    assert (m11[0, :16] == 1).all() and (m10[0, :16] == 0).all() and (m11[0, 16:] == 0.5).all()
    h11, h10 = metrics.ideal_likelihood(0.5)
    assert np.allclose(h11, 0.75) and np.allclose(h10, 0.25)
    exact = metrics.err_w_qa(nn.logit(a11), nn.logit(a10), a11, a10)
    assert exact.shape == (4,) and np.allclose(exact, 0)
    flat = metrics.err_w_qa(np.zeros((2, 32)), np.zeros((2, 32)), a11, a10)
    assert (flat > 0.1).all()
