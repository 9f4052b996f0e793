"""Error metrics and summaries of spec 3.6. Pure numpy, no I/O."""

from __future__ import annotations

import numpy as np

from rigctl.model.network import sigmoid

#: Calibration histogram: 25 bins on [0, 1], centres 0.02..0.98 (spec 3.6, 4.1).
CALIBRATION_BINS = 25


def err_x(x: np.ndarray, xp: np.ndarray) -> float:
    """Mean over the 2 x n entries of one session of (x - x^P)^2 (spec 3.6)."""
    return float(np.mean((x - xp) ** 2))


def err_w(w1: np.ndarray, w0: np.ndarray, w1p: np.ndarray, w0p: np.ndarray) -> float:
    """‖σ([W1; W0]) - σ([W1p; W0p])‖²_F / ‖σ([W1; W0])‖²_F over the 4 x M entries (spec 3.6)."""
    a = sigmoid(np.concatenate([w1, w0]))
    b = sigmoid(np.concatenate([w1p, w0p]))
    return float(((a - b) ** 2).sum() / (a ** 2).sum())


def weight_correlation(w: np.ndarray, wp: np.ndarray) -> float:
    """Pearson correlation over the 2 x M entries of W = W1 - W0 and W^P (spec 3.6, rigctl's summary).
    0.0 when either side is constant (correlation undefined)."""
    a, b = w.ravel() - w.mean(), wp.ravel() - wp.mean()
    den = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def calibration(x: np.ndarray, xp: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Bin observed x into n_bins on [0, 1]; mean and SD (N-1; 0 for a single entry) of x^P per bin
    (spec 3.6). Empty bins are reported with count 0 and mean/sd None (JSON null), never NaN."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(x.ravel(), edges) - 1, 0, n_bins - 1)
    xpf = xp.ravel()
    mean, sd, count = [], [], []
    for b in range(n_bins):
        v = xpf[idx == b]
        count.append(int(v.size))
        mean.append(float(v.mean()) if v.size else None)
        sd.append(float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else None))
    return {"centres": ((edges[:-1] + edges[1:]) / 2).round(6).tolist(), "mean": mean, "sd": sd,
            "count": count}


#: Mixing parameter a per released condition tag (spec 1.2, 4.1).
MIXING_BY_CONDITION: dict[str, float] = {"ctrl": 0.75, "bic": 0.75, "dzp": 0.75, "apv": 0.75,
                                         "mix0": 1.0, "mix50": 0.5}


def ideal_likelihood(mixing_a: float, n_stimuli: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """qA^Id in the weights' layout [2, M]: A11 = P(o_i = 1 | s_j = 1), A10 = P(o_i = 1 | s_j = 0), the other
    source averaged out (spec 1.2 "marginal likelihood per source"). Inputs of source j's own group copy
    s_j with probability a: A11 = (1 + a)/2, A10 = (1 - a)/2; the other group: A11 = 1 - a/2, A10 = a/2."""
    own = np.arange(n_stimuli) < n_stimuli // 2
    a11 = np.empty((2, n_stimuli))
    a10 = np.empty((2, n_stimuli))
    for j, mine in enumerate((own, ~own)):
        a11[j] = np.where(mine, (1 + mixing_a) / 2, 1 - mixing_a / 2)
        a10[j] = np.where(mine, (1 - mixing_a) / 2, mixing_a / 2)
    return a11, a10


def err_w_qa(w1: np.ndarray, w0: np.ndarray, qa11: np.ndarray, qa10: np.ndarray) -> np.ndarray:
    """Distance of σ(W) from the ideal Bayes likelihood (spec 3.6), one value per column c = (W1 ens1,
    W1 ens2, W0 ens1, W0 ens2): mean_i (σ(W)_{i,c} - qA^Id_{i,c})² / mean(qA^Id²), the denominator taken
    over the whole 32 x 4 qA^Id (rigctl's reading of the spec's mean(qA^Id²))."""
    got = sigmoid(np.concatenate([w1, w0]))  # rows = columns c
    ideal = np.concatenate([qa11, qa10])
    return ((got - ideal) ** 2).mean(axis=1) / (ideal ** 2).mean()
