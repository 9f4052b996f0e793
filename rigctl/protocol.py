"""Protocol files (YAML) and the BSS protocol engine of Isomura et al. (2023).

A protocol file is validated whole before anything touches a rig; a variant may `extends:` another file
and override fields (the 0 % and 50 % mixing variants override `mixing`). The schedule is a pure function
of (protocol, seed, sample rate): trial k always gets the same sources, stimuli and sample index, which
is what makes resume and the hardware-in-the-loop comparisons exact.

Protocol files may come from anyone, so loading is bounded (rigctl.yamlcheck), every number must be finite
and in range, the name must be an identifier (it names the run directory), `extends` only reaches .yaml
files, and the work a valid protocol may ask for is capped (MAX_TRIALS, MAX_SEQUENCE_CELLS, MAX_WINDOW_MS).
"""

from __future__ import annotations

import errno
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from rigctl.errors import ProtocolError
from rigctl.types import BiphasicPulse, StimCommand
from rigctl.yamlcheck import (Field, LocatedDoc, clip, in_range, is_finite_number, load_located, one_of, show,
                              show_path, validate_fields)

DRUGS = ("none", "bicuculline", "diazepam", "apv")
MAX_ELECTRODE = 4095
# The name becomes the run directory runs/<name>-seed...: an identifier, so it cannot leave runs/.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
NAME_ALLOWED = ("an identifier matching ^[A-Za-z][A-Za-z0-9_.-]{0,63}$ without '..' "
                "(it names the run directory runs/<name>-seed...)")
# Work a valid protocol may ask for (a protocol file must not be able to exhaust the machine):
MAX_TRIALS = 10_000_000  # sessions x trials_per_session
MAX_SEQUENCE_CELLS = 1 << 22  # trials_per_session x stimuli: one session's draw is 8 bytes per cell
MAX_WINDOW_MS = 10_000  # raw and spike windows lie within +-10 s of their pulse (the run waits for them)
SESSION_CACHE = 4  # `sequence: fresh` sessions kept drawn (they are recomputed identically on demand)
MAX_EXTENDS_DEPTH = 8
MAX_EXTENDS_NAME = 255
YAML_SUFFIXES = (".yaml", ".yml")
EXTENDS_ALLOWED = f"the file name of another protocol (ending .yaml or .yml, at most {MAX_EXTENDS_NAME} characters)"


def _identifier(v: str) -> str | None:
    return None if NAME_PATTERN.fullmatch(v) and ".." not in v else f"allowed: {NAME_ALLOWED}"


def _window(max_ms: float | None = None) -> Callable[[Any], str | None]:
    """[start_ms, end_ms] relative to the pulse: within 0..max_ms when given (the response window, which must
    end before the next trial), else within +-MAX_WINDOW_MS. Written so NaN and infinity never pass."""
    lo, hi = (0, max_ms) if max_ms is not None else (-MAX_WINDOW_MS, MAX_WINDOW_MS)

    def check(v: Any) -> str | None:
        if not isinstance(v, list) or len(v) != 2 or not all(is_finite_number(x) for x in v):
            return "allowed: a list [start_ms, end_ms] of two finite numbers"
        if not lo <= v[0] < v[1] <= hi:
            return f"allowed: {lo} <= start_ms < end_ms <= {hi}"
        return None
    return check


def work_problem(sessions: int, trials_per_session: int, n_stimuli: int) -> str | None:
    """Why a protocol of this size would ask for too much (trials, or memory for one session's draw), or None."""
    if sessions * trials_per_session > MAX_TRIALS:
        return f"allowed: sessions x trials_per_session <= {MAX_TRIALS} (sessions = {sessions})"
    if trials_per_session * n_stimuli > MAX_SEQUENCE_CELLS:
        return (f"allowed: trials_per_session x stimulating electrodes <= {MAX_SEQUENCE_CELLS} "
                f"({n_stimuli} electrodes)")
    return None


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
    "name": Field(str, required=True, check=_identifier, allowed=NAME_ALLOWED),
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


def _present(path: Path) -> bool:
    """True when `path` names something the loader should open and explain (a symlink loop or an unreadable
    file included); False when nothing is there. Never raises (too-long names, NUL bytes)."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)
    except ValueError:
        return False
    return True


def _library_names() -> str:
    return ", ".join(sorted(q.stem for q in library_dir().glob("*.yaml")))


def resolve_protocol_path(name_or_path: str | Path) -> Path:
    """A path as given, else a name in the library (with or without `.yaml`)."""
    p = Path(name_or_path)
    if _present(p):
        return p
    lib = library_dir()
    for candidate in (lib / str(name_or_path), lib / f"{name_or_path}.yaml"):
        if _present(candidate):
            return candidate
    raise ProtocolError(f"{show_path(str(name_or_path))}: no such protocol file, and no library protocol of that name "
                        f"(library: {_library_names()})")


def _merged_doc(path: Path, depth: int = 0, chain: tuple[str, ...] = ()) -> LocatedDoc:
    """Load a file and apply `extends` (the child's fields win; nested mappings merge). A parent must be a
    .yaml/.yml file (also after symlinks): `extends` written by someone else must not make the loader read,
    and echo in errors, files such as /etc/shadow or /dev/zero."""
    if depth > MAX_EXTENDS_DEPTH:
        raise ProtocolError(f"{show_path(path)}: `extends` chain is longer than {MAX_EXTENDS_DEPTH}; "
                            f"allowed: at most {MAX_EXTENDS_DEPTH} levels")
    doc = load_located(path)
    chain = chain + (os.path.realpath(path),)
    parent_name = doc.data.get("extends")
    if parent_name is None:
        return doc

    def refuse(allowed: str) -> ProtocolError:
        return ProtocolError(f"{doc.where('extends')}: field 'extends' has value {show(parent_name)}; "
                             f"allowed: {allowed}")

    if (not isinstance(parent_name, str) or not parent_name or len(parent_name) > MAX_EXTENDS_NAME
            or "\0" in parent_name or not parent_name.endswith(YAML_SUFFIXES)):
        raise refuse(EXTENDS_ALLOWED)
    parent_path = path.parent / parent_name
    if not _present(parent_path):
        try:
            parent_path = resolve_protocol_path(parent_name)
        except ProtocolError:
            raise refuse(f"{EXTENDS_ALLOWED} next to this file or in the library ({_library_names()})") from None
    target = os.path.realpath(parent_path)
    if not target.endswith(YAML_SUFFIXES):
        raise refuse(f"{EXTENDS_ALLOWED}; it links to {show_path(target)}")
    if target in chain:
        cycle = " -> ".join(os.path.basename(p) for p in chain[chain.index(target):] + (target,))
        raise refuse(f"a file not already in the chain (cycle: {clip(cycle, 200)})")
    parent = _merged_doc(parent_path, depth + 1, chain)
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
    if os.path.isdir(path):  # `rigctl validate runs/x`: point at the run's protocol
        stored = path / "protocol.yaml"
        hint = f" (a run directory? its protocol is {show_path(stored)})" if os.path.isfile(stored) else ""
        raise ProtocolError(f"{show_path(path)}: is a directory, not a protocol file{hint}")
    doc = _merged_doc(path)
    top = validate_fields(doc, doc.data, BSS_SCHEMA)
    pulse_raw = validate_fields(doc, top["pulse"], PULSE_SCHEMA, prefix="pulse.")
    pulse = BiphasicPulse(pulse_raw["phase1_amplitude"], pulse_raw["phase1_us"], pulse_raw["phase2_amplitude"],
                          pulse_raw["phase2_us"], pulse_raw["interphase_us"], pulse_raw["unit"])
    groups = top["stim_groups"]
    if set(groups) != {"A", "B"}:  # also catches non-string keys (1:, ~:) without sorting mixed types
        raise ProtocolError(f"{doc.where('stim_groups')}: field 'stim_groups' has groups "
                            f"{show(sorted(groups, key=str))}; allowed: exactly A and B")
    group_lists = {}
    for g in ("A", "B"):
        electrodes = groups[g]
        where = doc.where(f"stim_groups.{g}")
        if not isinstance(electrodes, list) or not electrodes:
            raise ProtocolError(f"{where}: field 'stim_groups.{g}' has value {show(electrodes)}; "
                                "allowed: a non-empty list of electrode indices")
        for e in electrodes:
            if not isinstance(e, int) or isinstance(e, bool) or not 0 <= e <= MAX_ELECTRODE:
                raise ProtocolError(f"{where}: field 'stim_groups.{g}' has electrode {show(e)}; "
                                    f"allowed: integers 0 to {MAX_ELECTRODE}")
        if len(set(electrodes)) != len(electrodes):
            raise ProtocolError(f"{where}: field 'stim_groups.{g}' repeats an electrode; allowed: unique indices")
        group_lists[g] = tuple(electrodes)
    both = set(group_lists["A"]) & set(group_lists["B"])
    if both:
        raise ProtocolError(f"{doc.where('stim_groups')}: electrodes {show(sorted(both))} are in both groups A and B; "
                            "allowed: disjoint groups")
    isi_ms = top["isi_s"] * 1000.0
    for field_name, limit in (("response_window_ms", isi_ms),):
        problem = _window(limit)(top[field_name])
        if problem:
            raise ProtocolError(f"{doc.where(field_name)}: field '{field_name}' has value {show(top[field_name])}; "
                                f"{problem} (isi_s = {top['isi_s']})")
    for field_name in ("raw_window_ms", "spike_window_ms"):
        w = top[field_name]
        if w[1] - w[0] > isi_ms:
            raise ProtocolError(f"{doc.where(field_name)}: field '{field_name}' has value {show(w)}; allowed: "
                                f"a window no longer than isi_s ({isi_ms} ms)")
    if pulse.duration_us / 1000.0 >= top["response_window_ms"][0]:
        raise ProtocolError(f"{doc.where('pulse')}: the pulse ({pulse.duration_us} µs) must end before the "
                            f"response window starts ({top['response_window_ms'][0]} ms)")
    problem = work_problem(top["sessions"], top["trials_per_session"], len(group_lists["A"]) + len(group_lists["B"]))
    if problem:
        raise ProtocolError(f"{doc.where('trials_per_session')}: field 'trials_per_session' has value "
                            f"{top['trials_per_session']}; {problem}")
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
    _check_work(protocol, 1, n_steps)
    s = (rng.random((n_steps, 2)) < protocol.source_p_on).astype(np.uint8)
    omega = rng.random((n_steps, protocol.n_stimuli))
    p_copy_s1 = np.concatenate([np.full(len(protocol.group_a), protocol.mixing),
                                np.full(len(protocol.group_b), 1.0 - protocol.mixing)])
    o = np.where(omega < p_copy_s1[None, :], s[:, :1], s[:, 1:2]).astype(np.uint8)
    return s, o


def _check_work(protocol: BssProtocol, sessions: int, trials_per_session: int) -> None:
    """Refuse, before allocating, a protocol built with overrides (not loaded) that asks for too much."""
    problem = work_problem(sessions, trials_per_session, protocol.n_stimuli)
    if problem:
        raise ProtocolError(f"{show_path(protocol.source_file or protocol.name)}: field 'trials_per_session' has "
                            f"value {trials_per_session}; {problem}")


class BssSchedule:
    """The deterministic schedule of a BSS run: a pure function of protocol, seed and sample rate."""

    def __init__(self, protocol: BssProtocol, seed: int, sample_rate_hz: float):
        _check_work(protocol, protocol.sessions, protocol.trials_per_session)
        self.protocol = protocol
        self.seed = seed
        self.sample_rate_hz = sample_rate_hz
        self._root = np.random.SeedSequence([seed, 0x5EED])
        n = protocol.trials_per_session
        if protocol.sequence == "repeat":
            s, o = draw_sequence(protocol, np.random.default_rng(self._root.spawn(1)[0]), n)
            self._repeat: tuple[np.ndarray, np.ndarray] | None = (s, o)
        else:
            self._repeat = None
        self._sessions: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def n_trials(self) -> int:
        return self.protocol.n_trials

    def session_sequence(self, session: int) -> tuple[np.ndarray, np.ndarray]:
        """(s [n,2], o [n,n_stimuli]) of a 1-based session."""
        if self._repeat is not None:
            return self._repeat
        if session in self._sessions:
            self._sessions.move_to_end(session)
            return self._sessions[session]
        child = np.random.SeedSequence([self.seed, 0x5EED, session])
        drawn = draw_sequence(self.protocol, np.random.default_rng(child), self.protocol.trials_per_session)
        self._sessions[session] = drawn
        if len(self._sessions) > SESSION_CACHE:  # bounded memory over a long run; a redraw is identical
            self._sessions.popitem(last=False)
        return drawn

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
