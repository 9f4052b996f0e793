"""What a protocol file may say, declared: the fields every kind shares (`ProtocolFile`), the pulse
(`PulseFile`) and the BSS protocol (`BssFile`); the other kinds extend `ProtocolFile` in their own module.

The numbers are the ranges rigctl has always allowed. Checks that need more than one field (windows
against the trial spacing, the work caps) run after the model, in the kind's loader, where they can
name the line of the field they refuse.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, model_validator
from pydantic_core import PydanticCustomError

from rigctl.config import ConfigModel, refusal, spec
from rigctl.types import BiphasicPulse
from rigctl.yamlcheck import show

DRUGS = ("none", "bicuculline", "diazepam", "apv")
MAX_ELECTRODE = 4095
# The name becomes the run directory runs/<name>-seed...: an identifier, so it cannot leave runs/.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
NAME_ALLOWED = ("an identifier matching ^[A-Za-z][A-Za-z0-9_.-]{0,63}$ without '..' "
                "(it names the run directory runs/<name>-seed...)")
MAX_WINDOW_MS = 10_000  # raw and spike windows lie within +-10 s of their pulse (the run waits for them)
WINDOW_ALLOWED = "a list [start_ms, end_ms] of two finite numbers"


def name_problem(v: str) -> str | None:
    """Why `v` cannot name a protocol (and so its run directory), or None."""
    return None if NAME_PATTERN.fullmatch(v) and ".." not in v else f"allowed: {NAME_ALLOWED}"


def _name(v: str) -> str:
    if name_problem(v):
        raise refusal(NAME_ALLOWED)
    return v


def is_window(v: Any) -> bool:
    """A list [start_ms, end_ms] of two finite numbers (bools are not numbers)."""
    return isinstance(v, list) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and (isinstance(x, int) or math.isfinite(x))
        for x in v)


def _window(v: list) -> list:
    """A raw or spike window: within +-MAX_WINDOW_MS of the pulse (its length is checked against the
    trial spacing by the kind's loader)."""
    if not is_window(v):
        raise refusal(WINDOW_ALLOWED)
    if not -MAX_WINDOW_MS <= v[0] < v[1] <= MAX_WINDOW_MS:
        raise refusal(f"{-MAX_WINDOW_MS} <= start_ms < end_ms <= {MAX_WINDOW_MS}")
    return v


def electrode_problem(v: list) -> dict[str, str] | None:
    """Why `v` is not a non-empty list of unique electrode indices 0..MAX_ELECTRODE, as `refusal` keywords."""
    if not v:
        return {"allowed": "a non-empty list of electrode indices"}
    for e in v:
        if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e <= MAX_ELECTRODE:
            return {"allowed": f"integers 0 to {MAX_ELECTRODE}", "phrase": f"has electrode {show(e)}"}
    if len(set(v)) != len(v):
        return {"allowed": "unique indices", "phrase": "repeats an electrode"}
    return None


def stim_groups_problem(v: dict) -> PydanticCustomError | None:
    """Why `v` is not exactly groups A and B, each a list of electrodes, no electrode in both; or None."""
    if set(v) != {"A", "B"}:  # also catches non-string keys (1:, ~:) without sorting mixed types
        return refusal("exactly A and B", field="stim_groups", phrase=f"has groups {show(sorted(v, key=str))}")
    for g in ("A", "B"):
        problem = electrode_problem(v[g]) if isinstance(v[g], list) else {
            "allowed": "a non-empty list of electrode indices"}
        if problem:
            return refusal(**problem, field=f"stim_groups.{g}", value=v[g])
    both = set(v["A"]) & set(v["B"])
    if both:
        return refusal("disjoint groups", field="stim_groups", line=f"electrodes {show(sorted(both))} are in both "
                                                                    "groups A and B; allowed: disjoint groups")
    return None


Name = Annotated[str, AfterValidator(_name)]
Window = Annotated[list, AfterValidator(_window)]


class FileSection(ConfigModel):
    """A mapping of a protocol file; a field written as null counts as not written (its default applies).
    An unknown field stays, null or not, to be refused."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {info.alias or name for name, info in cls.model_fields.items()}
        return {k: v for k, v in data.items() if v is not None or k not in known}


class ProtocolFile(FileSection):
    """The fields every protocol kind shares (identity and recording policy)."""

    name: Name = spec(about=NAME_ALLOWED)
    kind: str = "bss"
    description: str = ""
    reference: str = ""
    extends: str | None = None
    seed: int = spec(0, ge=0, le=2**63 - 1)
    first_trial_s: float = spec(1.0, ge=0.1, le=3600)
    response_window_ms: list = [10.0, 30.0]  # checked against the trial spacing by the kind's loader
    raw: Literal["all", "trials", "none"] = "trials"
    raw_window_ms: Window = [-10.0, 40.0]
    spikes: Literal["all", "trials"] = "trials"
    spike_window_ms: Window = [-50.0, 100.0]
    drug: Literal[DRUGS] = "none"
    checkpoint_every_trials: int = spec(64, ge=1, le=1000000)

    def windows(self) -> dict[str, tuple[float, float]]:
        return {name: (float(w[0]), float(w[1])) for name, w in
                (("response_window_ms", self.response_window_ms), ("raw_window_ms", self.raw_window_ms),
                 ("spike_window_ms", self.spike_window_ms))}


class PulseFile(FileSection):
    """A biphasic pulse as written in a protocol file (signed amplitudes in `unit`, phases in µs)."""

    unit: Literal["uA", "mV"] = "mV"
    phase1_amplitude: float = spec(about="signed amplitude in `unit`", ge=-100000, le=100000)
    phase1_us: float = spec(ge=1, le=100000)
    phase2_amplitude: float = spec(ge=-100000, le=100000)
    phase2_us: float = spec(ge=1, le=100000)
    interphase_us: float = spec(0.0, ge=0, le=100000)

    def to_pulse(self) -> BiphasicPulse:
        return BiphasicPulse(self.phase1_amplitude, self.phase1_us, self.phase2_amplitude, self.phase2_us,
                             self.interphase_us, self.unit)


class BssFile(ProtocolFile):
    """`kind: bss`: the blind-source-separation protocol of Isomura et al. (2023)."""

    kind: Literal["bss"] = "bss"
    sessions: int = spec(100, ge=1, le=100000)
    trials_per_session: int = spec(256, ge=1, le=1000000)
    isi_s: float = spec(1.0, ge=0.02, le=3600)
    rest_s: float = spec(244.0, ge=0, le=86400)
    sequence: Literal["repeat", "fresh"] = "repeat"
    n_sources: int = spec(2, ge=2, le=2, allowed="2")
    source_p_on: float = spec(0.5, ge=0, le=1)
    mixing: float = spec(0.75, ge=0, le=1, about="P(a group-A stimulus copies source 1); group B uses 1 - mixing")
    stim_groups: dict = spec(about="mapping A: [electrodes], B: [electrodes]")
    pulse: PulseFile

    @model_validator(mode="after")
    def _groups(self) -> "BssFile":
        """The groups' electrodes, once every field is valid (as the file is read: the pulse first)."""
        problem = stim_groups_problem(self.stim_groups)
        if problem is not None:
            raise problem
        return self
