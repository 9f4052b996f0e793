"""Protocol files (YAML) and the BSS protocol engine of Isomura et al. (2023).

A protocol file is validated whole before anything touches a rig; a variant may `extends:` another file
and override fields (the 0 % and 50 % mixing variants override `mixing`). The schedule is a pure function
of (protocol, seed, sample rate): trial k always gets the same sources, stimuli and sample index, which
is what makes resume and the hardware-in-the-loop comparisons exact.

Protocol files may come from anyone, so loading is bounded (rigctl.yamlcheck), each kind's fields are
declared (rigctl.protocol_schema: every number finite and in range), the name must be an identifier (it names the run directory), `extends` only reaches .yaml
files, and the work a valid protocol may ask for is capped (MAX_TRIALS, MAX_SEQUENCE_CELLS, MAX_WINDOW_MS).
"""

from __future__ import annotations

import copy
import errno
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np
import yaml

from rigctl.config import located, parse, protocol_line
from rigctl.engine import PlannedTrial, Protocol, ProtocolConfig, TrialField
from rigctl.errors import ProtocolError
from rigctl.protocol_schema import DRUGS  # noqa: F401  (the commands' --drug choices)
from rigctl.protocol_schema import MAX_WINDOW_MS, WINDOW_ALLOWED, BssFile, ProtocolFile, is_window, name_problem
from rigctl.types import BiphasicPulse, StimCommand
from rigctl.yamlcheck import LocatedDoc, clip, load_located, show, show_path

# Work a valid protocol may ask for (a protocol file must not be able to exhaust the machine):
MAX_TRIALS = 10_000_000  # sessions x trials_per_session
MAX_SEQUENCE_CELLS = 1 << 22  # trials_per_session x stimuli: one session's draw is 8 bytes per cell
SESSION_CACHE = 4  # `sequence: fresh` sessions kept drawn (they are recomputed identically on demand)
MAX_EXTENDS_DEPTH = 8
MAX_EXTENDS_NAME = 255
YAML_SUFFIXES = (".yaml", ".yml")
EXTENDS_ALLOWED = f"the file name of another protocol (ending .yaml or .yml, at most {MAX_EXTENDS_NAME} characters)"

M = TypeVar("M", bound=ProtocolFile)


def parse_file(model: type[M], doc: LocatedDoc) -> M:
    """`doc` validated against a kind's model; the first problem raised as a one-line ProtocolError."""
    return parse(model, doc.data, located(doc, ProtocolError, protocol_line))


def window_problem(w: Any, lo: float, hi: float) -> str | None:
    """Why `w` is not a window [start_ms, end_ms] with lo <= start_ms < end_ms <= hi, or None (NaN and
    infinity never pass)."""
    if not is_window(w):
        return f"allowed: {WINDOW_ALLOWED}"
    return None if lo <= w[0] < w[1] <= hi else f"allowed: {lo} <= start_ms < end_ms <= {hi}"


def work_problem(sessions: int, trials_per_session: int, n_stimuli: int) -> str | None:
    """Why a protocol of this size would ask for too much (trials, or memory for one session's draw), or None."""
    if sessions * trials_per_session > MAX_TRIALS:
        return f"allowed: sessions x trials_per_session <= {MAX_TRIALS} (sessions = {sessions})"
    if trials_per_session * n_stimuli > MAX_SEQUENCE_CELLS:
        return (f"allowed: trials_per_session x stimulating electrodes <= {MAX_SEQUENCE_CELLS} "
                f"({n_stimuli} electrodes)")
    return None


def common_values(doc: LocatedDoc, top: ProtocolFile, path: Path, trial_spacing_s: float | None,
                  pulse_duration_us: float = 0.0) -> dict[str, Any]:
    """The ProtocolConfig fields every kind has, from the validated file, with the window checks that need
    the trial spacing (windows no longer than the spacing; the pulse ends before the response window)."""
    for name in ("response_window_ms", "raw_window_ms", "spike_window_ms"):
        w = getattr(top, name)
        problem = window_problem(w, -MAX_WINDOW_MS, MAX_WINDOW_MS)
        if problem is None and trial_spacing_s is not None:
            limit = trial_spacing_s * 1000.0
            if name == "response_window_ms" and not (0 <= w[0] and w[1] <= limit):
                problem = f"allowed: 0 <= start_ms < end_ms <= {limit:g} (the trial spacing)"
            elif name != "response_window_ms" and w[1] - w[0] > limit:
                problem = f"allowed: a window no longer than the trial spacing ({limit:g} ms)"
        if problem:
            raise ProtocolError(f"{doc.where(name)}: field '{name}' has value {str(w)[:80]}; {problem}")
    windows = top.windows()
    if pulse_duration_us / 1000.0 >= windows["response_window_ms"][0] and pulse_duration_us > 0:
        raise ProtocolError(f"{doc.where('pulse')}: the pulse ({pulse_duration_us} µs) must end before the "
                            f"response window starts ({windows['response_window_ms'][0]} ms)")
    return {"name": top.name, "description": top.description, "reference": top.reference, "seed": top.seed,
            "first_trial_s": top.first_trial_s, "raw": top.raw, "spikes": top.spikes, "drug": top.drug,
            "checkpoint_every_trials": top.checkpoint_every_trials, "source_file": str(path), **windows}


@dataclass(frozen=True)
class BssProtocol(ProtocolConfig):
    """A validated BSS protocol (all fields resolved, `extends` applied)."""

    KIND: ClassVar[str] = "bss"

    trials_per_session: int
    isi_s: float
    rest_s: float
    sequence: str
    source_p_on: float
    mixing: float
    group_a: tuple[int, ...]
    group_b: tuple[int, ...]
    pulse: BiphasicPulse

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

    def make_protocol(self, seed: int, sample_rate_hz: float) -> "BssSchedule":
        return BssSchedule(self, seed, sample_rate_hz)

    def describe(self, plan: "BssSchedule") -> list[str]:
        s, o = plan.session_sequence(1)
        hours = plan.trial_time_s(self.n_trials - 1) / 3600.0
        p = self.pulse
        return [f"{self.name}: {self.sessions} sessions x {self.trials_per_session} trials, isi {self.isi_s} s, "
                f"rest {self.rest_s} s, about {hours:.1f} h on a real rig",
                f"mixing {self.mixing}; {len(self.group_a)} + {len(self.group_b)} stimulating electrodes; pulse "
                f"{p.phase1_amplitude:g}/{p.phase2_amplitude:g} {p.unit}, {p.phase1_us:g}/{p.phase2_us:g} us",
                f"response window {self.response_window_ms} ms; raw: {self.raw}; spikes: {self.spikes}; "
                f"drug: {self.drug}; sequence: {self.sequence}",
                f"session 1 (seed {self.seed}): P(s1)={s[:, 0].mean():.2f} P(s2)={s[:, 1].mean():.2f}, "
                f"mean stimuli per step {o.sum(axis=1).mean():.1f}"]

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


MAX_SET_TEXT = 1000  # characters of one --set FIELD=VALUE


def add_set_argument(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a protocol field (repeatable; dotted paths for nested fields, e.g. "
                             "pulse.phase1_us=100; VALUE is YAML: 3, 0.5, [10, 30], none); validated as the file")


def apply_overrides(doc: LocatedDoc, overrides: Sequence[str]) -> LocatedDoc:
    """`FIELD=VALUE` settings applied to the (merged) protocol document before validation, so a bad value is
    reported exactly as in the file, with `--set FIELD=VALUE` as its place."""
    data = copy.deepcopy(doc.data)
    lines = dict(doc.lines)
    for text in overrides:
        shown = text if len(text) <= 80 else text[:79] + "…"
        if len(text) > MAX_SET_TEXT or "=" not in text:
            raise ProtocolError(f"--set {shown!r}: allowed: FIELD=VALUE (at most {MAX_SET_TEXT} characters)")
        path, value_text = text.split("=", 1)
        keys = path.strip().split(".")
        if not all(FIELD_NAME.fullmatch(k) for k in keys) or len(keys) > 4:
            raise ProtocolError(f"--set {shown!r}: field {path.strip()[:80]!r}; allowed: a field name or a dotted "
                                "path of up to 4 names (e.g. pulse.phase1_us)")
        if "&" in value_text or "*" in value_text:
            raise ProtocolError(f"--set {shown!r}: anchors and aliases (& *) are not allowed in a --set value")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as exc:
            raise ProtocolError(f"--set {shown!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if isinstance(value, (dict, list)) and len(repr(value)) > MAX_SET_TEXT:
            raise ProtocolError(f"--set {shown!r}: the value is too large")
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if not isinstance(child, dict):
                raise ProtocolError(f"--set {shown!r}: {'.'.join(keys[:depth + 1])} is not a mapping of fields")
            node = child
        node[keys[-1]] = value
        lines[".".join(keys)] = f"--set {shown}"
    return LocatedDoc(doc.path, data, lines)


FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def load_protocol(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ProtocolConfig:
    """Load and validate a protocol file of any kind, with `--set` overrides; raise ProtocolError naming file,
    line (or the --set), field, value and what is allowed."""
    path = resolve_protocol_path(name_or_path)
    if os.path.isdir(path):  # `rigctl validate runs/x`: point at the run's protocol
        stored = path / "protocol.yaml"
        hint = f" (a run directory? its protocol is {show_path(stored)})" if os.path.isfile(stored) else ""
        raise ProtocolError(f"{show_path(path)}: is a directory, not a protocol file{hint}")
    doc = apply_overrides(_merged_doc(path), overrides)
    kind = doc.data.get("kind", "bss")
    loader = protocol_kinds().get(kind) if isinstance(kind, str) else None
    if loader is None:
        raise ProtocolError(f"{doc.where('kind')}: field 'kind' has value {str(kind)[:80]!r}; allowed: "
                            f"{', '.join(sorted(protocol_kinds()))}")
    return loader(doc, path)


def protocol_kinds() -> dict[str, Callable[[LocatedDoc, Path], ProtocolConfig]]:
    """Every protocol kind and its loader: `bss` here, the others in the library package (rigctl.protocols)."""
    from rigctl.protocols import electrode_scan, maze, pong, python_class, spontaneous

    return {"bss": load_bss, electrode_scan.KIND: electrode_scan.load, spontaneous.KIND: spontaneous.load,
            maze.KIND: maze.load, pong.KIND: pong.load, python_class.KIND: python_class.load}


def load_bss(doc: LocatedDoc, path: Path) -> BssProtocol:
    """Validate a BSS protocol document: the model, then the checks across fields."""
    top = parse_file(BssFile, doc)
    pulse = top.pulse.to_pulse()
    groups = {g: tuple(top.stim_groups[g]) for g in ("A", "B")}
    isi_ms = top.isi_s * 1000.0
    problem = window_problem(top.response_window_ms, 0, isi_ms)
    if problem:
        raise ProtocolError(f"{doc.where('response_window_ms')}: field 'response_window_ms' has value "
                            f"{show(top.response_window_ms)}; {problem} (isi_s = {top.isi_s})")
    for field_name in ("raw_window_ms", "spike_window_ms"):
        w = getattr(top, field_name)
        if w[1] - w[0] > isi_ms:
            raise ProtocolError(f"{doc.where(field_name)}: field '{field_name}' has value {show(w)}; allowed: "
                                f"a window no longer than isi_s ({isi_ms} ms)")
    if pulse.duration_us / 1000.0 >= top.response_window_ms[0]:
        raise ProtocolError(f"{doc.where('pulse')}: the pulse ({pulse.duration_us} µs) must end before the "
                            f"response window starts ({top.response_window_ms[0]} ms)")
    problem = work_problem(top.sessions, top.trials_per_session, len(groups["A"]) + len(groups["B"]))
    if problem:
        raise ProtocolError(f"{doc.where('trials_per_session')}: field 'trials_per_session' has value "
                            f"{top.trials_per_session}; {problem}")
    windows = top.windows()
    return BssProtocol(
        name=top.name, description=top.description, reference=top.reference, seed=top.seed,
        sessions=top.sessions, trials_per_session=top.trials_per_session, isi_s=top.isi_s, rest_s=top.rest_s,
        first_trial_s=top.first_trial_s, sequence=top.sequence, source_p_on=top.source_p_on, mixing=top.mixing,
        group_a=groups["A"], group_b=groups["B"], pulse=pulse, response_window_ms=windows["response_window_ms"],
        raw=top.raw, raw_window_ms=windows["raw_window_ms"], spikes=top.spikes,
        spike_window_ms=windows["spike_window_ms"], drug=top.drug,
        checkpoint_every_trials=top.checkpoint_every_trials, source_file=str(path),
    )


def protocol_from_text(text: str, directory: Path) -> BssProtocol:
    """Reload a resolved protocol stored with a run (protocol.yaml)."""
    path = Path(directory) / "protocol.yaml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return load_protocol(path)


# ---- the schedule -------------------------------------------------------------------------------

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


class BssSchedule(Protocol):
    """The deterministic schedule of a BSS run: a pure function of protocol, seed and sample rate (open loop:
    responses change nothing)."""

    def __init__(self, protocol: BssProtocol, seed: int, sample_rate_hz: float):
        _check_work(protocol, protocol.sessions, protocol.trials_per_session)
        self.protocol = self.config = protocol
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

    @property
    def trial_fields(self) -> tuple[TrialField, ...]:
        return (TrialField("sources", "u1", (2,), csv="s"),
                TrialField("stimuli", "u1", (self.protocol.n_stimuli,), csv="o"))

    def session_context(self, session: int) -> dict[str, Any]:
        return {"stimuli": self.session_sequence(session)[1]}

    def trial(self, index: int, now_sample: int = 0) -> PlannedTrial:
        if not 0 <= index < self.n_trials:
            raise IndexError(f"trial index {index} outside 0..{self.n_trials - 1}")
        p = self.protocol
        session0, trial0 = divmod(index, p.trials_per_session)
        s, o = self.session_sequence(session0 + 1)
        stimuli = o[trial0]
        sample = self.trial_sample(index)
        electrodes = tuple(int(e) for e, on in zip(p.stim_electrodes, stimuli) if on)
        command = StimCommand(sample, electrodes, p.pulse) if electrodes else None
        return PlannedTrial(index, session0 + 1, trial0 + 1, sample, command,
                            {"sources": s[trial0].copy(), "stimuli": stimuli.copy()},
                            last_in_session=trial0 + 1 == p.trials_per_session)


