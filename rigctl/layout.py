"""Electrode layout of an MEA: where each recording channel sits, and its name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ElectrodeLayout:
    """Channel i of the amplifier is electrode i here; positions in micrometres."""

    positions_um: np.ndarray  # float64 [n, 2] (x, y)
    names: tuple[str, ...]

    @property
    def n_electrodes(self) -> int:
        return len(self.names)

    @staticmethod
    def grid(rows: int = 8, cols: int = 8, pitch_um: float = 150.0) -> "ElectrodeLayout":
        """Row-major grid: electrode index = row * cols + col, named by 1-based (col, row) like MED64."""
        ys, xs = np.divmod(np.arange(rows * cols), cols)
        positions = np.stack([xs * pitch_um, ys * pitch_um], axis=1).astype(np.float64)
        names = tuple(f"{c + 1}{r + 1}" for r, c in zip(ys, xs))
        return ElectrodeLayout(positions, names)

    def to_dict(self) -> dict:
        return {"positions_um": self.positions_um.tolist(), "names": list(self.names)}
