"""Fit a batch of cultures in one mode: the batch baseline (spec 2.3), then each culture. Pure compute;
the CLI does the loading and writing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from rigctl.errors import ModelInputError
from rigctl.model import network as nn
from rigctl.model.data import Trials
from rigctl.model.online_batch import fit_online, online_baseline
from rigctl.model.published import fit_published, published_baseline
from rigctl.model.result import CultureFit

MODES = ("published", "online")


@dataclass(frozen=True)
class FitFailure:
    name: str
    error: str


def batch_baseline(batch: list[Trials], mode: str, train_sessions: int = nn.N_INIT) -> float:
    """B from every culture of the batch (spec 2.3); in online mode with ensembles from sessions 1..Ninit."""
    if mode == "published":
        return published_baseline(batch, train_sessions)
    if mode == "online":
        return online_baseline(batch, train_sessions)
    raise ModelInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def fit_one(tr: Trials, mode: str, baseline: float | None, train_sessions: int = nn.N_INIT,
            lam: float = nn.LAMBDA, gain: float = nn.GAIN) -> CultureFit:
    if mode == "published":
        if baseline is None:
            raise ModelInputError("published mode needs a baseline")
        return fit_published(tr, baseline, train_sessions, lam, gain)
    if mode == "online":
        return fit_online(tr, baseline, train_sessions, lam, gain)
    raise ModelInputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def fit_batch(batch: list[Trials], picked: list[Trials], mode: str, baseline: float | None = None,
              train_sessions: int = nn.N_INIT, skip_bad: bool = False,
              wrap: Callable[[Iterable], Iterable] = lambda it: it) -> tuple[float, list[CultureFit | FitFailure]]:
    """Baseline from `batch` (unless given), then fit each of `picked`. With skip_bad a culture whose
    input is unusable becomes a FitFailure instead of aborting the batch. `wrap` may add a progress bar."""
    if baseline is None:
        baseline = batch_baseline(batch, mode, train_sessions)
    if not (np.isfinite(baseline) and baseline > 0):
        raise ModelInputError(f"baseline must be a positive number of spikes/stim, got {baseline}")
    out: list[CultureFit | FitFailure] = []
    for tr in wrap(picked):
        try:
            out.append(fit_one(tr, mode, baseline, train_sessions))
        except ModelInputError as exc:
            if not skip_bad:
                raise ModelInputError(f"{tr.name}: {exc}") from exc
            out.append(FitFailure(tr.name, str(exc)))
    return baseline, out
