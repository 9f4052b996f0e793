"""The canonical neural network of [NC23]/[NECO20] (spec 3.2-3.4): activity, thresholds, the closed-form
Hebbian/homeostatic plasticity, the cost L (= variational free energy without the parameter-complexity term,
spec 3.3) and threshold-factor estimation. Pure numpy, no I/O.

Shapes: x [n, 2] ensemble activity in [0, 1]; o [n, M] binary stimuli; W1, W0 [2, M]; phi1, phi0, h1, h0 [2].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rigctl.checkpoint import checkpointable
from rigctl.errors import ModelInputError

#: Epsilon inside ln(x), ln(1 - x) of the cost (spec 3.4.4, 4.1).
LOG_EPS = 1e-6
#: Prior pseudo-count λ (initial Hebb λ/2, initial Home λ; spec 3.4.3, 4.1).
LAMBDA = 3000.0
#: Gain on the prior and the empirical sessions in forward prediction (spec 3.5, 4.1).
GAIN = 2.0
#: Sessions used to estimate φ and the starting weights (spec 1.3 Ninit, 3.4.2, 3.5).
N_INIT = 10
#: Bound on <x> before taking logs in φ estimation, so φ stays finite (rigctl's guard; not in the spec).
PHI_CLIP = 1e-6


def sigmoid(v: np.ndarray) -> np.ndarray:
    """σ(v) = 1 / (1 + e^-v) (spec 3.2)."""
    return 1.0 / (1.0 + np.exp(-v))


def logit(p: np.ndarray) -> np.ndarray:
    """σ⁻¹(p) = ln p - ln(1 - p) (spec 3.2)."""
    return np.log(p) - np.log1p(-p)


def estimate_phi(x_init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """φ1 = ln<x>, φ0 = ln(1 - <x>) over the steps of sessions 1..Ninit, per ensemble (spec 3.4.2,
    [NECO20]: the network's mean activity equals exp(φ1)). <x> is bounded to [1e-6, 1 - 1e-6]."""
    if x_init.shape[0] == 0:
        raise ModelInputError("φ estimation needs at least one step in the training sessions")
    m = np.clip(x_init.mean(axis=0), PHI_CLIP, 1.0 - PHI_CLIP)
    return np.log(m), np.log1p(-m)


def thresholds(w1: np.ndarray, w0: np.ndarray, phi1: np.ndarray,
               phi0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h1 = Σ_i ln(1 - σ(W1)) + φ1 and h0 = Σ_i ln(1 - σ(W0)) + φ0 (spec 3.2, 3.4.3)."""
    return (np.log1p(-sigmoid(w1)).sum(axis=1) + phi1, np.log1p(-sigmoid(w0)).sum(axis=1) + phi0)


def activity(o: np.ndarray, w1: np.ndarray, w0: np.ndarray, h1: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """Fixed point of the activity equation, x = σ((W1 - W0) o + h1 - h0) (spec 3.2, 3.5)."""
    return sigmoid(o @ (w1 - w0).T + (h1 - h0))


def cost(x: np.ndarray, o: np.ndarray, w1: np.ndarray, w0: np.ndarray, h1: np.ndarray,
         h0: np.ndarray) -> float:
    """L = Σ_t Σ_j [x (ln(x + ε) - W1 o - h1) + x̄ (ln(x̄ + ε) - W0 o - h0)], ε = 1e-6 (spec 3.4.4)."""
    xb = 1.0 - x
    term1 = x * (np.log(x + LOG_EPS) - o @ w1.T - h1)
    term0 = xb * (np.log(xb + LOG_EPS) - o @ w0.T - h0)
    return float(term1.sum() + term0.sum())


@checkpointable
@dataclass
class Plasticity:
    """Closed-form Hebbian/homeostatic accumulators (spec 3.2 fixed point, 3.4.3):
    σ(W1) = Hebb1 ⊘ Home1, Hebb1 = λ/2 + Σ x oᵀ, Home1 = λ + Σ x 1ᵀ; the 0 copies use x̄ = 1 - x.
    Home is stored as one value per ensemble ([2]); it is the same for every input (broadcast)."""

    hebb1: np.ndarray
    hebb0: np.ndarray
    home1: np.ndarray
    home0: np.ndarray

    @staticmethod
    def prior(n_stimuli: int, lam: float = LAMBDA, gain: float = 1.0, n_ensembles: int = 2) -> "Plasticity":
        """Hebb = gλ/2, Home = gλ (spec 3.4.3 with g = 1; spec 3.5 with g = 2)."""
        hebb = np.full((n_ensembles, n_stimuli), gain * lam / 2.0)
        home = np.full(n_ensembles, gain * lam)
        return Plasticity(hebb.copy(), hebb.copy(), home.copy(), home.copy())

    def add(self, x: np.ndarray, o: np.ndarray, weight: float = 1.0) -> None:
        """Hebb1 += w X Oᵀ, Home1 += w row-sums of X; Hebb0, Home0 with 1 - X (spec 3.4.3, 3.5)."""
        of = o.astype(np.float64)
        xb = 1.0 - x
        self.hebb1 += weight * (x.T @ of)
        self.hebb0 += weight * (xb.T @ of)
        self.home1 += weight * x.sum(axis=0)
        self.home0 += weight * xb.sum(axis=0)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """W1 = logit(Hebb1 ⊘ Home1), W0 = logit(Hebb0 ⊘ Home0) (spec 3.4.3)."""
        return (logit(self.hebb1 / self.home1[:, None]), logit(self.hebb0 / self.home0[:, None]))

    def copy(self) -> "Plasticity":
        return Plasticity(self.hebb1.copy(), self.hebb0.copy(), self.home1.copy(), self.home0.copy())
