"""PNG plots of one fitted culture (the panels of the authors' fig3, spec 2.5). Writes files: kept out of
the core model modules. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rigctl.model.data import STATE_LABELS
from rigctl.model.result import CultureFit


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_fit(fit: CultureFit, out_dir: Path) -> list[Path]:
    """ensemble_responses.png, calibration.png, weights.png, free_energy.png in out_dir."""
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = fit.trials.session_labels
    title = f"{fit.name} ({fit.mode})"
    paths = []

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for i in range(2):
        ax = axes[0, i]
        for j, lab in enumerate(STATE_LABELS):
            ax.plot(sessions, fit.state_means[i, :, j], label=f"s={lab}")
        ax.set_title(f"ensemble {i + 1}: raw response per state")
        ax.set_ylabel("spikes / stimulus")
        ax.legend(fontsize=8)
        ax = axes[1, i]
        on, off = fit.selectivity[f"x_s{i + 1}_on"], fit.selectivity[f"x_s{i + 1}_off"]
        ax.plot(sessions, on, color="tab:red", label=f"x{i + 1} | s{i + 1}=1")
        ax.plot(sessions, off, color="tab:blue", label=f"x{i + 1} | s{i + 1}=0")
        ax.set_ylim(0, 1)
        ax.set_xlabel("session")
        ax.set_ylabel("normalised activity x")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: ensemble responses (spec 2.4)")
    paths.append(_save(fig, out_dir / "ensemble_responses.png", plt))

    cal = fit.calibration()
    fig, ax = plt.subplots(figsize=(5, 5))
    c = np.array(cal["centres"])
    ok = np.array([m is not None for m in cal["mean"]])
    mean = np.array([m for m in cal["mean"] if m is not None])
    sd = np.array([s for s, k in zip(cal["sd"], ok) if k])
    ax.errorbar(c[ok], mean, yerr=sd, fmt="o", ms=3, capsize=2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("observed x (last 10 sessions)")
    ax.set_ylabel("predicted x$^P$ (mean ± SD)")
    ax.set_title(f"{title}\nerr_x last 10 = {fit.err_x_last():.4f}")
    paths.append(_save(fig, out_dir / "calibration.png", plt))

    t = fit.traj
    w, wp = (t.w1[-1] - t.w0[-1]).ravel(), (t.w1p[-1] - t.w0p[-1]).ravel()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(w[:w.size // 2], wp[:w.size // 2], s=10, label="ensemble 1")
    ax.scatter(w[w.size // 2:], wp[w.size // 2:], s=10, label="ensemble 2")
    lim = max(np.abs(w).max(), np.abs(wp).max(), 1e-3) * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set_xlabel(f"W (empirical), session {sessions[-1]}")
    ax.set_ylabel("W$^P$ (predicted)")
    ax.set_title(f"{title}\nweight correlation {t.weight_corr:.3f}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "weights.png", plt))

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    a1.plot(sessions, t.L)
    a1.set_ylabel("L (free energy, spec 3.4.4)")
    a1.set_title(f"{title}: L {t.L[0]:.1f} -> {t.L[-1]:.1f}")
    a2.plot(sessions, t.err_x, label="err_x")
    a2.plot(sessions, t.err_w, label="err_W")
    a2.axvline(sessions[min(fit.train_sessions, len(sessions)) - 1] + 0.5, color="k", lw=0.6, ls=":")
    a2.set_xlabel("session")
    a2.set_ylabel("prediction error")
    a2.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "free_energy.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
