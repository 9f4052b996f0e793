"""Online mode (OnlineFreeEnergy): strictly predictive, per-trial path equal to the vectorised equations,
resumable, JSON-able, and on the released mix0 cultures within 25 % of published mode's error."""

import json
from roundtrip import through_checkpoint
from pathlib import Path

import numpy as np
import pytest

from rigctl.model import normalise as nz
from rigctl.model.data import make_trials
from rigctl.model.ensembles import ensemble_response, select_ensembles
from rigctl.model.online import OnlineFreeEnergy
from rigctl.model.online_batch import fit_online, replay
from rigctl.model.synthetic import canonical_culture
from rigctl.model.trajectory import fit_trajectory
from rigctl.types import TrialRecord

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "isomura2023"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"released data not found at {DATA} (../shared absent)")
N_INIT = 5


def spiking(n_sessions=14, steps=64, seed=1, drift_per_session=0.05):
    """Poisson counts from a canonical network: electrodes 0-5 follow ensemble 1, 6-11 ensemble 2, 12-15
    unselective; a slow gain drift across sessions."""
    c = canonical_culture(n_sessions=n_sessions, session_steps=steps, lam=300.0, bias=0.05, noise_sd=0.0,
                          seed=seed)
    rng = np.random.default_rng(seed)
    gain = 1.0 + drift_per_session * c.sess
    rate = np.empty((len(c.s), 16))
    rate[:, :6] = gain[:, None] * (0.5 + 4.0 * c.x_true[:, [0]])
    rate[:, 6:12] = gain[:, None] * (0.5 + 4.0 * c.x_true[:, [1]])
    rate[:, 12:] = 2.0
    return make_trials(c.s, c.o, rng.poisson(rate), c.sess + 1, name="synthetic:1")


def vectorised_online_x(tr, n_init, baseline):
    """The online preprocessing written with the batch functions (module docstring of rigctl.model.online)."""
    keep = tr.sess < n_init
    ens = select_ensembles(tr.r[keep], tr.sess[keep], tr.state[keep], n_init)
    x_raw = ensemble_response(tr.r, ens)
    xbar = nz.session_means(x_raw, tr.sess, tr.n_sessions)
    drift = np.where((tr.sess < n_init)[:, None], nz.drift_own_session(xbar, tr.sess),
                     nz.drift_previous_session(xbar, tr.sess))
    stats = nz.fit_stats(x_raw, tr.sess, tr.state, drift, keep, baseline)
    return ens, nz.apply_stats(x_raw, tr.state, drift, stats)


def test_per_trial_path_equals_vectorised_equations():
    tr = spiking()
    model = replay(tr, OnlineFreeEnergy(32, N_INIT, lam=300.0, gain=2.0, baseline=3.0))
    assert model.status == "active", model.reason
    ens, x = vectorised_online_x(tr, N_INIT, 3.0)
    assert model.ensembles.g1.tolist() == ens.g1.tolist() == list(range(6))
    assert model.ensembles.g2.tolist() == ens.g2.tolist() == list(range(6, 12))
    traj = fit_trajectory(x, tr.o, tr.sess, tr.n_sessions, N_INIT, lam=300.0, gain=2.0)
    assert np.allclose(np.concatenate(model.hist["x"]), x, atol=1e-12)
    assert np.allclose([p["L"] for p in model.sessions], traj.L, rtol=1e-12)
    assert np.allclose([p["err_x"] for p in model.sessions], traj.err_x, atol=1e-12)
    assert np.allclose(np.concatenate(model.hist["xp"]), traj.xp, atol=1e-12)


def test_predictions_use_nothing_from_the_future():
    tr = spiking()
    cut = 9  # sessions 1..9 identical, later responses replaced by noise
    r2 = tr.r.copy()
    late = tr.sess >= cut
    r2[late] = np.random.default_rng(7).poisson(3.0, (int(late.sum()), r2.shape[1]))
    tr2 = make_trials(tr.s, tr.o, r2, tr.session)
    payloads = []
    for data in (tr, tr2):
        m = OnlineFreeEnergy(32, N_INIT, lam=300.0)
        got = []
        for k, label in enumerate(data.session_labels):
            idx = np.flatnonzero(data.sess == k)
            got.append(m.begin_session(int(label), data.o[idx]))
            for n, t in enumerate(idx, 1):
                m.update(TrialRecord.bss(int(label), n, int(t), data.s[t], data.o[t], data.r[t].astype(np.int32)))
            m.end_session(int(label))
        payloads.append(got)
    a, b = payloads
    assert all(p is None for p in a[:N_INIT])  # no prediction before the model is fitted
    for k in range(N_INIT, tr.n_sessions):
        assert a[k]["x_pred"] == b[k]["x_pred"], k  # predictions never depend on responses of their session
    assert a[cut - 1]["x_pred"] != a[N_INIT]["x_pred"]  # and they do evolve across sessions


def test_state_round_trip_mid_session_resumes_identically():
    tr = spiking(n_sessions=10)
    full = replay(tr, OnlineFreeEnergy(32, N_INIT, lam=300.0))
    m = OnlineFreeEnergy(32, N_INIT, lam=300.0)
    stop = int(np.flatnonzero(tr.sess == 7)[20])  # inside session 8
    for k, label in enumerate(tr.session_labels):
        idx = np.flatnonzero(tr.sess == k)
        if idx[0] <= stop:
            m.begin_session(int(label), tr.o[idx])
        for n, t in enumerate(idx, 1):
            if t == stop:
                state = through_checkpoint(m.get_state())
                m = OnlineFreeEnergy(32, N_INIT, lam=300.0)
                m.set_state(state)
            m.update(TrialRecord.bss(int(label), n, int(t), tr.s[t], tr.o[t], tr.r[t].astype(np.int32)))
        m.end_session(int(label))
    assert [p["L"] for p in m.sessions] == [p["L"] for p in full.sessions]
    assert m.summary() == full.summary()


def test_payloads_are_json_and_summary_complete():
    tr = spiking()
    m = OnlineFreeEnergy(32, N_INIT, lam=300.0)
    for k, label in enumerate(tr.session_labels):
        idx = np.flatnonzero(tr.sess == k)
        p = m.begin_session(int(label), tr.o[idx])
        json.dumps(p, allow_nan=False)
        for n, t in enumerate(idx, 1):
            m.update(TrialRecord.bss(int(label), n, int(t), tr.s[t], tr.o[t], tr.r[t].astype(np.int32)))
        e = m.end_session(int(label))
        json.dumps(e, allow_nan=False)
        if k >= N_INIT:
            assert e["predicted"] and e["prediction_as_announced"]
            assert {"L", "err_x", "err_W", "separation", "x_s1_on", "x_s1_off"} <= set(e)
    s = m.summary()
    json.dumps(s, allow_nan=False)
    assert s["status"] == "active" and len(s["L"]) == tr.n_sessions and len(s["phi1"]) == 2


def test_no_selective_electrodes_makes_the_model_inactive_not_a_crash():
    rng = np.random.default_rng(0)
    t = 8 * 64
    s = rng.integers(0, 2, (t, 2))
    o = rng.integers(0, 2, (t, 32))
    tr = make_trials(s, o, rng.poisson(2.0, (t, 10)), np.arange(t) // 64 + 1)
    m = replay(tr, OnlineFreeEnergy(32, N_INIT))
    assert m.status == "inactive" and "empty" in m.reason
    assert m.begin_session(9, o[:64]) is None
    json.dumps(m.summary(), allow_nan=False)
    with pytest.raises(Exception, match="empty"):
        fit_online(tr, None, N_INIT)


@needs_data
def test_mix0_online_error_within_25_percent_of_published():
    from rigctl.model.loading import load_mat
    from rigctl.model.online_batch import online_baseline
    from rigctl.model.published import fit_published, published_baseline

    cultures = load_mat(DATA / "response_data_mix0.mat").cultures
    bp, bo = published_baseline(cultures), online_baseline(cultures)
    pub = np.mean([fit_published(c, bp).err_x_last() for c in cultures])
    onl = np.mean([fit_online(c, bo).err_x_last() for c in cultures])
    assert abs(onl - pub) <= 0.25 * pub, (onl, pub)
