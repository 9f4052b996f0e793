"""twin.png: the twin beside the culture, per session (from a twin.json record; Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rigctl.model.plots import _plt, _save

COLOURS = ("tab:red", "tab:orange", "tab:blue", "tab:grey")


def plot_twin(rec: dict, path: Path) -> Path:
    """Three panels: raw ensemble response per state (culture solid, twin dashed) for ensembles 1 and 2,
    and err_x per session of the twin and of the model (published, online)."""
    plt = _plt()
    er = rec["ensemble_response"]
    twin, cult = np.array(er["twin"]), np.array(er["culture"])  # [2, K, 4]
    k = twin.shape[1]
    sessions = np.arange(1, k + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i in range(2):
        ax = axes[i]
        for j, lab in enumerate(er["states"]):
            ax.plot(sessions, cult[i, :, j], color=COLOURS[j], label=f"culture s={lab}")
            ax.plot(sessions, twin[i, :, j], color=COLOURS[j], ls="--", label=f"twin s={lab}")
        ax.set_title(f"ensemble {i + 1} (G{i + 1}, {len(rec['ensembles'][f'g{i + 1}'])} electrodes)")
        ax.set_xlabel("session")
        ax.set_ylabel("spikes / stimulus")
        ax.legend(fontsize=7, ncol=2)
    ax = axes[2]
    ax.plot(sessions, rec["err_x"], color="k", label=f"twin ({rec['err_x_last10']:.3f})")
    for mode, ls in (("published", "-"), ("online", ":")):
        e = rec["model_err_x"][mode][:k]
        ax.plot(sessions, e, ls=ls, color="tab:green", label=f"model {mode} ({rec['model'][mode]:.3f})")
    ax.set_title("err_x per session (legend: sessions 91-100)")
    ax.set_xlabel("session")
    ax.legend(fontsize=8)
    fig.suptitle(f"{rec['culture']}: twin (dashed) vs culture (solid); fit loss {rec['loss']:.4f}")
    return _save(fig, Path(path), plt)
