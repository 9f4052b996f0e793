"""The twin's free parameters: ONE table (`PARAMS`) of (name, target, low, high, log). `target` is a
`CultureConfig` field name (applied with `dataclasses.replace`) or one of the driver's own knobs
`efficacy_a` / `efficacy_b` (pulse amplitude scale on stimulus group A = o1..o16 / B = o17..o32).
When the culture model's fields change, edit this table only (docs/twin.md has the same table, with reasons).

The optimiser works in the unit box: u in [0, 1] per parameter maps to low..high, linearly or in log space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from rigctl.errors import ModelInputError
from rigctl.sim.culture import CultureConfig

#: Driver-side knobs (not CultureConfig fields).
EFFICACY = ("efficacy_a", "efficacy_b")


@dataclass(frozen=True)
class Param:
    name: str  # the name in twin.json and the evaluation log
    target: str  # CultureConfig field, or efficacy_a / efficacy_b
    low: float
    high: float
    log: bool


#: The free parameters. Bounds and reasons: docs/twin.md (the table there mirrors this one).
PARAMS: tuple[Param, ...] = (
    Param("v_th_mV", "v_th_mV", 12.0, 18.0, False),  # excitability: firing threshold above rest
    Param("epsp_ee_mV", "epsp_ee_mV", 0.5, 2.5, True),  # E->E connection strength
    Param("eta_plus", "eta_plus", 0.002, 0.032, True),  # plasticity (LTP) rate
    Param("local_drive_mV", "local_drive_mV", 30.0, 300.0, True),  # a pulse's drive near its electrode
    Param("spont_exc_hz", "spont_exc_hz", 0.2, 3.0, True),  # spontaneous rate of E neurons
    Param("efficacy_a", "efficacy_a", 0.25, 4.0, True),  # pulse amplitude scale, group A (o1..o16)
    Param("efficacy_b", "efficacy_b", 0.25, 4.0, True),  # pulse amplitude scale, group B (o17..o32)
)


def check_params(params: tuple[Param, ...] = PARAMS) -> None:
    """Every target exists (a CultureConfig field or an efficacy) and every range is valid."""
    known = {f.name for f in fields(CultureConfig)} | set(EFFICACY)
    for p in params:
        if p.target not in known:
            raise ModelInputError(f"twin parameter {p.name}: {p.target!r} is not a CultureConfig field "
                                  f"nor one of {', '.join(EFFICACY)} (edit rigctl/twin/params.py PARAMS)")
        if not (p.low < p.high) or (p.log and p.low <= 0):
            raise ModelInputError(f"twin parameter {p.name}: bad range {p.low}..{p.high}")


def from_unit(u, params: tuple[Param, ...] = PARAMS) -> dict[str, float]:
    """Unit-box point (clipped to [0, 1]) -> {name: value}."""
    out = {}
    for p, v in zip(params, u):
        v = min(max(float(v), 0.0), 1.0)
        out[p.name] = (math.exp(math.log(p.low) + v * (math.log(p.high) - math.log(p.low))) if p.log
                       else p.low + v * (p.high - p.low))
    return out


def to_unit(values: dict[str, float], params: tuple[Param, ...] = PARAMS) -> list[float]:
    """{name: value} -> unit-box point (clipped)."""
    out = []
    for p in params:
        v = values[p.name]
        u = ((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)) if p.log
             else (v - p.low) / (p.high - p.low))
        out.append(min(max(u, 0.0), 1.0))
    return out


def defaults(params: tuple[Param, ...] = PARAMS) -> dict[str, float]:
    """The untuned starting point: the CultureConfig defaults, efficacies 1."""
    base = CultureConfig()
    return {p.name: (1.0 if p.target in EFFICACY else float(getattr(base, p.target))) for p in params}


def apply(values: dict[str, float], params: tuple[Param, ...] = PARAMS,
          base: CultureConfig | None = None) -> tuple[CultureConfig, tuple[float, float]]:
    """{name: value} -> (CultureConfig with the fields replaced, (efficacy_a, efficacy_b))."""
    base = base or CultureConfig()
    eff = {"efficacy_a": 1.0, "efficacy_b": 1.0}
    changes = {}
    for p in params:
        if p.target in EFFICACY:
            eff[p.target] = float(values[p.name])
        else:
            kind = type(getattr(base, p.target))
            changes[p.target] = kind(values[p.name])
    return replace(base, **changes), (eff["efficacy_a"], eff["efficacy_b"])
