"""Plate files: one protocol on every well of a multi-well plate, a condition per well (drug, protocol variant,
any protocol field), validated whole before any well starts.

    kind: plate
    name: culture_conditions_24
    layout: {rows: 4, cols: 6}       # wells A1..D6 (rows lettered, columns numbered)
    protocol: isomura2023_bss        # every well's protocol unless its condition names another
    set: {sessions: 10}              # on every well, as `rigctl run --set`
    conditions:                      # each fills `replicates` wells in column order (A1, B1, C1, D1, A2, ...)
      - {drug: none}
      - {protocol: isomura2023_bss_mix0}
    replicates: 4                    # the k-th well of a condition has seed first_seed + k
    first_seed: 0
    wells: {D6: {drug: apv}}         # optional: a well's own keys, over its condition's

A condition's keys are `protocol`, `drug`, `seed` or any protocol field (dotted for nested fields, becoming
`--set`), as a sweep point's. Wells the conditions do not fill stay empty (no culture, nothing run).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from rigctl.config import ConfigModel, located, parse, protocol_line
from rigctl.errors import RigctlError
from rigctl.protocol import DRUGS, load_protocol
from rigctl.sweep import Point
from rigctl.yamlcheck import load_located, show

KIND = "plate"
MAX_WELLS = 384
PLATE_META = "plate.json"  # a plate directory: plate.json and wells/<well>/, each an ordinary run directory
WELLS_DIR = "wells"
RUN_KEYS = ("protocol", "drug", "seed")


class PlateError(RigctlError):
    """A plate file or plate directory that cannot be used; one line naming the place."""


class LayoutModel(ConfigModel):
    rows: StrictInt = Field(ge=1, le=16, description="rows of wells (lettered A, B, ...)")
    cols: StrictInt = Field(ge=1, le=24, description="columns of wells (numbered 1, 2, ...)")


class PlateModel(ConfigModel):
    kind: Literal["plate"]
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")
    description: StrictStr = ""
    layout: LayoutModel
    protocol: StrictStr = Field(min_length=1, max_length=4096)
    set: dict[StrictStr, Any] = Field(default_factory=dict)
    conditions: list[dict[StrictStr, Any]] = Field(min_length=1, max_length=MAX_WELLS)
    replicates: StrictInt = Field(1, ge=1, le=MAX_WELLS)
    first_seed: StrictInt = Field(0, ge=0, le=2**62)
    wells: dict[StrictStr, dict[StrictStr, Any]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Well:
    """One well of a plate: its name (A1), its condition's label, and what `rigctl run` would be given."""

    name: str
    condition: str
    protocol: str
    seed: int
    drug: str | None
    overrides: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"well": self.name, "condition": self.condition, "protocol": self.protocol, "seed": self.seed,
                "drug": self.drug, "set": list(self.overrides)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Well":
        return Well(d["well"], d["condition"], d["protocol"], int(d["seed"]), d["drug"], tuple(d["set"]))


@dataclass(frozen=True)
class Plate:
    source: Path
    name: str
    rows: int
    cols: int
    wells: list[Well]

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "name": self.name, "rows": self.rows, "cols": self.cols,
                "wells": [w.to_json() for w in self.wells]}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Plate":
        return Plate(Path(d["source"]), d["name"], int(d["rows"]), int(d["cols"]),
                     [Well.from_json(w) for w in d["wells"]])


def well_names(rows: int, cols: int) -> list[str]:
    """Column order, as a plate is usually filled: A1, B1, ..., then A2, ..."""
    return [f"{string.ascii_uppercase[r]}{c + 1}" for c in range(cols) for r in range(rows)]


def is_plate_dir(path: str | Path) -> bool:
    return (Path(path) / PLATE_META).is_file()


def read_plate_meta(plate_dir: Path) -> dict[str, Any]:
    """plate.json of a plate directory (the plate, its rig, its status); a one-line PlateError if unreadable."""
    try:
        return json.loads((Path(plate_dir) / PLATE_META).read_text())
    except (OSError, ValueError) as exc:
        raise PlateError(f"{plate_dir}: not a plate directory ({exc})") from None


def condition_label(condition: dict[str, Any]) -> str:
    """A condition as read on a plate map: its values, a protocol by its file's stem (`isomura2023_bss_mix0 none`)."""
    values = [Path(v).stem if isinstance(v, str) and v.endswith((".yaml", ".yml")) else str(v)
              for v in condition.values()]
    return " ".join(values) or "default"


def is_plate_file(path: str | Path) -> bool:
    """Whether `path` is a YAML file whose `kind` is `plate` (read bounded; anything unreadable is not)."""
    p = Path(path)
    if p.suffix not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        data = load_located(p, error=PlateError).data
    except RigctlError:
        return False
    return isinstance(data, dict) and data.get("kind") == KIND


def load_plate(path: str | Path, max_wells: tuple[int, str] | None = None) -> Plate:
    """`max_wells`: (wells the rig has, where that number comes from), checked like the layout's."""
    path = Path(path)
    doc = load_located(path, error=PlateError)
    if not isinstance(doc.data, dict):
        raise PlateError(f"{path}: a plate file is a mapping with kind: plate")
    model = parse(PlateModel, doc.data, located(doc, PlateError, protocol_line))
    names = well_names(model.layout.rows, model.layout.cols)
    needed = len(model.conditions) * model.replicates
    if needed > len(names):
        raise PlateError(f"{doc.where('replicates')}: {len(model.conditions)} conditions x {model.replicates} "
                         f"replicates = {needed} wells; allowed: at most the layout's {len(names)}")
    if max_wells is not None and needed > max_wells[0]:
        raise PlateError(f"{doc.where('replicates')}: {len(model.conditions)} conditions x {model.replicates} "
                         f"replicates = {needed} wells; allowed: at most {max_wells[0]} ({max_wells[1]})")
    for name in model.wells:
        if name not in names:
            raise PlateError(f"{doc.where('wells')}: well {show(name)}; allowed: {names[0]} to {names[-1]} "
                             f"(layout {model.layout.rows} x {model.layout.cols})")
    base = path.resolve().parent
    wells = []
    for i, name in enumerate(names[:needed]):
        condition = model.conditions[i // model.replicates]
        params = {"seed": model.first_seed + i % model.replicates, **condition, **model.wells.get(name, {})}
        wells.append(_well(doc, name, condition_label(condition), params, model, base))
    return Plate(path, model.name, model.layout.rows, model.layout.cols, wells)


def _well(doc, name: str, label: str, params: dict[str, Any], model: PlateModel, base: Path) -> Well:
    protocol = str(params.get("protocol", model.protocol))
    candidate = base / protocol
    if protocol.endswith((".yaml", ".yml")) and candidate.is_file():
        protocol = str(candidate.resolve())
    seed, drug = params.get("seed"), params.get("drug")
    where = doc.where("conditions")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise PlateError(f"{where}: well {name}: seed {show(seed)}; allowed: an integer 0 to 2**63 - 1")
    if drug is not None and drug not in DRUGS:
        raise PlateError(f"{where}: well {name}: drug {show(drug)}; allowed: {', '.join(DRUGS)}")
    overrides = Point(name, {k: v for k, v in params.items() if k not in RUN_KEYS}).overrides(dict(model.set))
    try:
        load_protocol(protocol, overrides)
    except RigctlError as exc:
        raise PlateError(f"{where}: well {name} ({label}): {exc}") from None
    return Well(name, label, protocol, seed, drug, overrides)
