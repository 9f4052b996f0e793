"""What every report figure does last: title, layout, one PNG written, the figure closed (memory on long sweeps)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, title: str, path: Path, dpi: int = 100) -> list[Path]:
    """Title `fig`, write it to `path` and close it; returns [path] (a report's list of plots)."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return [Path(path)]
