"""Sweep files: what a sweep runs, validated whole (every point's protocol included) before any run starts.

    protocol: isomura2023_bss      # a library name or a path (relative paths: from the sweep file's folder)
    rig: sim-events
    set: {sessions: 5}             # applied to every point, as `rigctl run --set`
    grid:                          # the cartesian product of these
      seed: [1, 2, 3]
      drug: [none, apv]
    points:                        # and/or a list; each listed point is combined with every grid point
      - {protocol: isomura2023_bss_mix0}

A key of a point is `protocol`, `rig`, `seed`, `drug` (the `rigctl run` arguments) or any protocol field
(dotted for nested fields), which becomes `--set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, StrictStr

from rigctl.config import ConfigModel, located, parse, protocol_line
from rigctl.errors import RigctlError
from rigctl.protocol import DRUGS, load_protocol
from rigctl.sweep import Point, SweepError, expand
from rigctl.yamlcheck import LocatedDoc, load_located, show


class SweepModel(ConfigModel):
    """The sweep file's shape. The values of `set`, `grid` and `points` are checked afterwards, point by point,
    by the protocol's own validation (so they get its messages and ranges)."""

    protocol: StrictStr = Field(min_length=1, max_length=4096)
    rig: StrictStr = Field("sim-events", min_length=1, max_length=4096)
    set: dict[StrictStr, Any] = Field(default_factory=dict)
    grid: dict[StrictStr, list[Any]] = Field(default_factory=dict)
    points: list[dict[StrictStr, Any]] = Field(default_factory=list, max_length=100_000)
    retries: StrictInt = Field(1, ge=0, le=10, description="times the engine retries a failed point")
    description: StrictStr = ""


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its points and what every point shares."""

    source: Path
    defaults: dict[str, Any]  # protocol and rig, paths made absolute so a worker anywhere finds them
    common_set: dict[str, Any]
    points: list[Point]
    param_keys: list[str]
    retries: int

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "defaults": self.defaults, "set": self.common_set,
                "retries": self.retries, "points": [{"name": p.name, "params": p.params} for p in self.points]}


def _resolve(ref: str, base: Path) -> str:
    """A path that exists beside the sweep file, made absolute; anything else (a library name) as given."""
    candidate = base / ref
    return str(candidate.resolve()) if ref.endswith((".yaml", ".yml")) and candidate.is_file() else ref


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    doc = load_located(path, error=SweepError)
    if not isinstance(doc.data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with at least 'protocol'")
    model = parse(SweepModel, doc.data, located(doc, SweepError, protocol_line))
    for key, values in model.grid.items():
        if not values:
            raise SweepError(f"{doc.where('grid.' + key)}: grid '{key}' is empty; allowed: a non-empty list")
    base = path.resolve().parent
    defaults = {"protocol": _resolve(model.protocol, base), "rig": _resolve(model.rig, base)}
    try:
        expanded = expand(model.grid, model.points)
    except SweepError as exc:
        raise SweepError(f"{doc.where('points' if model.points else 'grid')}: {exc}") from None
    points = [Point(p.name, {k: _resolve(v, base) if k in ("protocol", "rig") and isinstance(v, str) else v
                             for k, v in p.params.items()})
              for p in expanded]
    for i, point in enumerate(points):
        _check_point(doc, point, defaults, model.set, i)
    keys = list(dict.fromkeys(k for p in points for k in p.params))
    return Sweep(path, defaults, dict(model.set), points, keys, model.retries)


def _check_point(doc: LocatedDoc, point: Point, defaults: dict[str, Any], common_set: dict[str, Any],
                 index: int) -> None:
    """What `rigctl run` would refuse, refused now: the seed, the drug and the protocol with its --set values."""
    where = doc.where("points" if "points" in doc.data else "grid")
    params = {**defaults, **point.params}
    seed = params.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise SweepError(f"{where}: point '{point.name}': seed {show(seed)}; allowed: an integer 0 to 2**63 - 1")
    drug = params.get("drug")
    if drug is not None and drug not in DRUGS:
        raise SweepError(f"{where}: point '{point.name}': drug {show(drug)}; allowed: {', '.join(DRUGS)}")
    if not isinstance(params["protocol"], str) or not isinstance(params["rig"], str):
        raise SweepError(f"{where}: point '{point.name}': protocol and rig are names or paths (strings)")
    try:
        load_protocol(params["protocol"], point.overrides(common_set))
    except RigctlError as exc:
        raise SweepError(f"{where}: point '{point.name}' (#{index + 1}): {exc}") from None
