"""Load YAML keeping line numbers, so validation errors can name file, line, field, value and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from rigctl.errors import ProtocolError


@dataclass
class LocatedDoc:
    """A parsed YAML mapping plus the 1-based line of every key path ("pulse.phase1_us"); a field set on the
    command line has its origin instead ("--set pulse.phase1_us=100")."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int | str]

    def where(self, field: str) -> str:
        line = self.lines.get(field)
        while line is None and "." in field:
            field = field.rsplit(".", 1)[0]
            line = self.lines.get(field)
        if isinstance(line, str):
            return f"{self.path}: {line}"
        return f"{self.path}:{line}" if line else f"{self.path}"


def _collect_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1


def load_located(path: Path, error: type[Exception] = ProtocolError) -> LocatedDoc:
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise error(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return LocatedDoc(path, data, lines)


@dataclass(frozen=True)
class Field:
    """One allowed field: its type, default (None = required) and a check returning an error or None."""

    kind: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None
    allowed: str = ""


def in_range(lo: float | None, hi: float | None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"allowed: {lo if lo is not None else '-inf'} to {hi if hi is not None else 'inf'}"
        return None
    return check


def one_of(options: Sequence[Any]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"allowed: {', '.join(map(str, options))}"
    return check


def validate_fields(doc: LocatedDoc, data: dict[str, Any], schema: dict[str, Field], prefix: str = "",
                    error: type[Exception] = ProtocolError) -> dict[str, Any]:
    """Check `data` against `schema`; return a new dict with defaults filled in."""
    out: dict[str, Any] = {}
    for key in data:
        if key not in schema:
            raise error(f"{doc.where(prefix + str(key))}: unknown field '{prefix}{key}'; "
                        f"allowed fields: {', '.join(sorted(schema))}")
    for key, spec in schema.items():
        name = prefix + key
        if key not in data or data[key] is None:
            if spec.required:
                raise error(f"{doc.where(prefix.rstrip('.') or name)}: missing required field '{name}'"
                            + (f" ({spec.allowed})" if spec.allowed else ""))
            out[key] = spec.default
            continue
        value = data[key]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            kind_names = " or ".join(k.__name__ for k in kinds)
            raise error(f"{doc.where(name)}: field '{name}' has value {value!r}; expected {kind_names}"
                        + (f" ({spec.allowed})" if spec.allowed else ""))
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise error(f"{doc.where(name)}: field '{name}' has value {value!r}; {problem}")
        out[key] = value
    return out
