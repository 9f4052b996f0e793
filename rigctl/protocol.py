"""Protocol files (YAML) and the BSS protocol engine of Isomura et al. (2023).

A protocol file is validated whole before anything touches a rig; a variant may `extends:` another file
and override fields (the 0 % and 50 % mixing variants override `mixing`). The schedule is a pure function
of (protocol, seed, sample rate): trial k always gets the same sources, stimuli and sample index, which
is what makes resume and the hardware-in-the-loop comparisons exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rigctl.errors import ProtocolError
from rigctl.types import BiphasicPulse, StimCommand
from rigctl.yamlcheck import Field, LocatedDoc, in_range, load_located, one_of, validate_fields

DRUGS = ("none", "bicuculline", "diazepam", "apv")
MAX_ELECTRODE = 4095


def _window(max_ms: float | None = None):
    def check(v: Any) -> str | None:
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            return "allowed: a list [start_ms, end_ms] of two numbers"
        if not v[0] < v[1]:
            return "allowed: start_ms < end_ms"
        if max_ms is not None and (v[0] < 0 or v[1] > max_ms):
            return f"allowed: 0 <= start_ms < end_ms <= {max_ms}"
        return None
    return check


PULSE_SCHEMA = {
    "unit": Field(str, "mV", check=one_of(["uA", "mV"])),
    "phase1_amplitude": Field(float, required=True, check=in_range(-100000, 100000),
                              allowed="signed amplitude in `unit`"),
    "phase1_us": Field(float, required=True, check=in_range(1, 100000)),
    "phase2_amplitude": Field(float, required=True, check=in_range(-100000, 100000)),
    "phase2_us": Field(float, required=True, check=in_range(1, 100000)),
    "interphase_us": Field(float, 0.0, check=in_range(0, 100000)),
}

BSS_SCHEMA = {
    "name": Field(str, required=True, allowed="a short identifier"),
    "kind": Field(str, "bss", check=one_of(["bss"])),
    "description": Field(str, ""),
    "reference": Field(str, ""),
    "extends": Field(str, None),
    "seed": Field(int, 0, check=in_range(0, 2**63 - 1)),
    "sessions": Field(int, 100, check=in_range(1, 100000)),
    "trials_per_session": Field(int, 256, check=in_range(1, 1000000)),
    "isi_s": Field(float, 1.0, check=in_range(0.02, 3600)),
    "rest_s": Field(float, 244.0, check=in_range(0, 86400)),
    "first_trial_s": Field(float, 1.0, check=in_range(0.1, 3600)),
    "sequence": Field(str, "repeat", check=one_of(["repeat", "fresh"])),
    "n_sources": Field(int, 2, check=one_of([2])),
    "source_p_on": Field(float, 0.5, check=in_range(0, 1)),
    "mixing": Field(float, 0.75, check=in_range(0, 1),
                    allowed="P(a group-A stimulus copies source 1); group B uses 1 - mixing"),
    "stim_groups": Field(dict, required=True, allowed="mapping A: [electrodes], B: [electrodes]"),
    "pulse": Field(dict, required=True),
    "response_window_ms": Field(list, [10.0, 30.0]),
    "raw": Field(str, "trials", check=one_of(["all", "trials", "none"])),
    "raw_window_ms": Field(list, [-10.0, 40.0], check=_window()),
    "spikes": Field(str, "trials", check=one_of(["all", "trials"])),
    "spike_window_ms": Field(list, [-50.0, 100.0], check=_window()),
    "drug": Field(str, "none", check=one_of(DRUGS)),
    "checkpoint_every_trials": Field(int, 64, check=in_range(1, 1000000)),
}


@dataclass(frozen=True)
class BssProtocol:
    """A validated BSS protocol (all fields resolved, `extends` applied)."""

    name: str
    description: str
    reference: str
    seed: int
    sessions: int
    trials_per_session: int
    isi_s: float
    rest_s: float
    first_trial_s: float
    sequence: str
    source_p_on: float
    mixing: float
    group_a: tuple[int, ...]
    group_b: tuple[int, ...]
    pulse: BiphasicPulse
    response_window_ms: tuple[float, float]
    raw: str
    raw_window_ms: tuple[float, float]
    spikes: str
    spike_window_ms: tuple[float, float]
    drug: str
    checkpoint_every_trials: int
    source_file: str = ""

    @property
    def stim_electrodes(self) -> tuple[int, ...]:
        """Electrode of stimulus channel o_i (0-based i): group A first, then group B."""
        return self.group_a + self.group_b

    @property
    def n_stimuli(self) -> int:
        return len(self.group_a) + len(self.group_b)

    @property
    def n_trials(self) -> int:
        return self.sessions * self.trials_per_session

    def with_overrides(self, **fields: Any) -> "BssProtocol":
        values = {**self.__dict__, **fields}
        return BssProtocol(**values)

    def to_dict(self) -> dict[str, Any]:
        """The resolved protocol as it would be written in a file (no `extends`)."""
        p = self.pulse
        return {
            "name": self.name, "kind": "bss", "description": self.description, "reference": self.reference,
            "seed": self.seed, "sessions": self.sessions, "trials_per_session": self.trials_per_session,
            "isi_s": self.isi_s, "rest_s": self.rest_s, "first_trial_s": self.first_trial_s,
            "sequence": self.sequence, "n_sources": 2, "source_p_on": self.source_p_on, "mixing": self.mixing,
            "stim_groups": {"A": list(self.group_a), "B": list(self.group_b)},
            "pulse": {"unit": p.unit, "phase1_amplitude": p.phase1_amplitude, "phase1_us": p.phase1_us,
                      "phase2_amplitude": p.phase2_amplitude, "phase2_us": p.phase2_us,
                      "interphase_us": p.interphase_us},
            "response_window_ms": list(self.response_window_ms), "raw": self.raw,
            "raw_window_ms": list(self.raw_window_ms), "spikes": self.spikes,
            "spike_window_ms": list(self.spike_window_ms), "drug": self.drug,
            "checkpoint_every_trials": self.checkpoint_every_trials,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---- loading ----------------------------------------------------------------------------------

def library_dir() -> Path:
    """The installed protocol library (rigctl.protocols)."""
    return Path(str(resources.files("rigctl.protocols")))


def resolve_protocol_path(name_or_path: str | Path) -> Path:
    """A path as given, else a name in the library (with or without `.yaml`)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    lib = library_dir()
    for candidate in (lib / str(name_or_path), lib / f"{name_or_path}.yaml"):
        if candidate.exists():
            return candidate
    available = ", ".join(sorted(q.stem for q in lib.glob("*.yaml")))
    raise ProtocolError(f"{name_or_path}: no such protocol file, and no library protocol of that name "
                        f"(library: {available})")


def _merged_doc(path: Path, depth: int = 0) -> LocatedDoc:
    """Load a file and apply `extends` (the child's fields win; nested mappings merge)."""
    if depth > 8:
        raise ProtocolError(f"{path}: `extends` chain is longer than 8 (a cycle?)")
    doc = load_located(path)
    parent_name = doc.data.get("extends")
    if parent_name is None:
        return doc
    if not isinstance(parent_name, str):
        raise ProtocolError(f"{doc.where('extends')}: field 'extends' has value {parent_name!r}; "
                            "expected the file name of another protocol")
    parent_path = path.parent / parent_name
    if not parent_path.exists():
        parent_path = resolve_protocol_path(parent_name)
    parent = _merged_doc(parent_path, depth + 1)
    merged = dict(parent.data)
    for key, value in doc.data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged.pop("extends", None)
    # fields the child sets are reported at the child's lines; inherited ones at the child file only
    return LocatedDoc(path, merged, dict(doc.lines))


def load_protocol(name_or_path: str | Path) -> BssProtocol:
    """Load and validate a protocol file; raise ProtocolError naming file, line, field, value, allowed."""
    path = resolve_protocol_path(name_or_path)
    doc = _merged_doc(path)
    top = validate_fields(doc, doc.data, BSS_SCHEMA)
    pulse_raw = validate_fields(doc, top["pulse"], PULSE_SCHEMA, prefix="pulse.")
    pulse = BiphasicPulse(pulse_raw["phase1_amplitude"], pulse_raw["phase1_us"], pulse_raw["phase2_amplitude"],
                          pulse_raw["phase2_us"], pulse_raw["interphase_us"], pulse_raw["unit"])
    groups = top["stim_groups"]
    extra = set(groups) - {"A", "B"}
    if extra or not {"A", "B"} <= set(groups):
        raise ProtocolError(f"{doc.where('stim_groups')}: field 'stim_groups' has groups {sorted(groups)}; "
                            "allowed: exactly A and B")
    group_lists = {}
    for g in ("A", "B"):
        electrodes = groups[g]
        where = doc.where(f"stim_groups.{g}")
        if not isinstance(electrodes, list) or not electrodes:
            raise ProtocolError(f"{where}: field 'stim_groups.{g}' has value {electrodes!r}; "
                                "allowed: a non-empty list of electrode indices")
        for e in electrodes:
            if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e <= MAX_ELECTRODE:
                raise ProtocolError(f"{where}: field 'stim_groups.{g}' has electrode {e!r}; "
                                    f"allowed: integers 0 to {MAX_ELECTRODE}")
        if len(set(electrodes)) != len(electrodes):
            raise ProtocolError(f"{where}: field 'stim_groups.{g}' repeats an electrode; allowed: unique indices")
        group_lists[g] = tuple(electrodes)
    both = set(group_lists["A"]) & set(group_lists["B"])
    if both:
        raise ProtocolError(f"{doc.where('stim_groups')}: electrodes {sorted(both)} are in both groups A and B; "
                            "allowed: disjoint groups")
    isi_ms = top["isi_s"] * 1000.0
    for field_name, limit in (("response_window_ms", isi_ms),):
        problem = _window(limit)(top[field_name])
        if problem:
            raise ProtocolError(f"{doc.where(field_name)}: field '{field_name}' has value {top[field_name]!r}; "
                                f"{problem} (isi_s = {top['isi_s']})")
    for field_name in ("raw_window_ms", "spike_window_ms"):
        w = top[field_name]
        if w[1] - w[0] > isi_ms:
            raise ProtocolError(f"{doc.where(field_name)}: field '{field_name}' has value {w!r}; allowed: "
                                f"a window no longer than isi_s ({isi_ms} ms)")
    if pulse.duration_us / 1000.0 >= top["response_window_ms"][0]:
        raise ProtocolError(f"{doc.where('pulse')}: the pulse ({pulse.duration_us} µs) must end before the "
                            f"response window starts ({top['response_window_ms'][0]} ms)")
    return BssProtocol(
        name=top["name"], description=top["description"], reference=top["reference"], seed=top["seed"],
        sessions=top["sessions"], trials_per_session=top["trials_per_session"], isi_s=top["isi_s"],
        rest_s=top["rest_s"], first_trial_s=top["first_trial_s"], sequence=top["sequence"],
        source_p_on=top["source_p_on"], mixing=top["mixing"], group_a=group_lists["A"],
        group_b=group_lists["B"], pulse=pulse, response_window_ms=tuple(map(float, top["response_window_ms"])),
        raw=top["raw"], raw_window_ms=tuple(map(float, top["raw_window_ms"])), spikes=top["spikes"],
        spike_window_ms=tuple(map(float, top["spike_window_ms"])), drug=top["drug"],
        checkpoint_every_trials=top["checkpoint_every_trials"], source_file=str(path),
    )


def protocol_from_text(text: str, directory: Path) -> BssProtocol:
    """Reload a resolved protocol stored with a run (protocol.yaml)."""
    path = Path(directory) / "protocol.yaml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return load_protocol(path)


# ---- the schedule -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedTrial:
    """Everything about trial `index` (0-based over the run) that is known before it happens."""

    index: int
    session: int  # 1-based
    trial: int  # 1-based within the session
    sample: int
    sources: np.ndarray  # uint8 [2]
    stimuli: np.ndarray  # uint8 [n_stimuli]
    command: StimCommand | None  # None when no stimulus channel is on


def draw_sequence(protocol: BssProtocol, rng: np.random.Generator, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden sources and stimuli by the mixing rule (spec §1.2): each stimulus copies s1 with
    probability `mixing` (group A) or 1 - `mixing` (group B), drawn independently per electrode and step."""
    s = (rng.random((n_steps, 2)) < protocol.source_p_on).astype(np.uint8)
    omega = rng.random((n_steps, protocol.n_stimuli))
    p_copy_s1 = np.concatenate([np.full(len(protocol.group_a), protocol.mixing),
                                np.full(len(protocol.group_b), 1.0 - protocol.mixing)])
    o = np.where(omega < p_copy_s1[None, :], s[:, :1], s[:, 1:2]).astype(np.uint8)
    return s, o


class BssSchedule:
    """The deterministic schedule of a BSS run: a pure function of protocol, seed and sample rate."""

    def __init__(self, protocol: BssProtocol, seed: int, sample_rate_hz: float):
        self.protocol = protocol
        self.seed = seed
        self.sample_rate_hz = sample_rate_hz
        self._root = np.random.SeedSequence([seed, 0x5EED])
        n = protocol.trials_per_session
        if protocol.sequence == "repeat":
            s, o = draw_sequence(protocol, np.random.default_rng(self._root.spawn(1)[0]), n)
            self._sessions = None
            self._repeat = (s, o)
        else:
            self._repeat = None
            self._sessions = {}

    @property
    def n_trials(self) -> int:
        return self.protocol.n_trials

    def session_sequence(self, session: int) -> tuple[np.ndarray, np.ndarray]:
        """(s [n,2], o [n,n_stimuli]) of a 1-based session."""
        if self._repeat is not None:
            return self._repeat
        if session not in self._sessions:
            child = np.random.SeedSequence([self.seed, 0x5EED, session])
            self._sessions[session] = draw_sequence(self.protocol, np.random.default_rng(child),
                                                    self.protocol.trials_per_session)
        return self._sessions[session]

    def trial_time_s(self, index: int) -> float:
        p = self.protocol
        session, trial = divmod(index, p.trials_per_session)
        cycle = p.trials_per_session * p.isi_s + p.rest_s
        return p.first_trial_s + session * cycle + trial * p.isi_s

    def trial_sample(self, index: int) -> int:
        return int(round(self.trial_time_s(index) * self.sample_rate_hz))

    def session_first_index(self, session: int) -> int:
        return (session - 1) * self.protocol.trials_per_session

    def trial(self, index: int) -> PlannedTrial:
        if not 0 <= index < self.n_trials:
            raise IndexError(f"trial index {index} outside 0..{self.n_trials - 1}")
        p = self.protocol
        session0, trial0 = divmod(index, p.trials_per_session)
        s, o = self.session_sequence(session0 + 1)
        stimuli = o[trial0]
        sample = self.trial_sample(index)
        electrodes = tuple(int(e) for e, on in zip(p.stim_electrodes, stimuli) if on)
        command = StimCommand(sample, electrodes, p.pulse) if electrodes else None
        return PlannedTrial(index, session0 + 1, trial0 + 1, sample, s[trial0].copy(), stimuli.copy(), command)

    def ms_to_samples(self, ms: float) -> int:
        return int(round(ms * 1e-3 * self.sample_rate_hz))
