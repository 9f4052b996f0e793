"""Configuration as declared pydantic models, and the one adapter from a pydantic `ValidationError` to
rigctl's one-line error (file:line, field, value, what is allowed).

Every configuration model (protocol files, rig files, safety limits, the signal path) derives from
`ConfigModel`: nothing is coerced (a bool is no number, '3' is no int; an int given for a float is
accepted and becomes a float), NaN and infinity never pass, unknown fields are refused. A field says
what it is with `spec(about=...)` and what passes with its constraints (or `allowed=` where they do not
say it well); a check that is not a constraint raises `refusal(...)`.

`first_problem` reduces a ValidationError to the first `Problem` as the user wrote it (a dotted field
path, the value, what is allowed); each family of files words it (`protocol_line`, `rig_line`, ...).
Only the first problem is reported, as one line, top-level fields before nested ones.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from rigctl.yamlcheck import LocatedDoc, show

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)
CUSTOM = "rigctl"  # the error type of `refusal`
# A key worth echoing in an error (a typo); anything else may be someone else's file (extends: /etc/shadow
# parses as a mapping keyed by its lines) and is given by position and length only.
ECHOABLE_KEY = re.compile(r"[A-Za-z0-9_. -]{1,64}")

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every configuration model: strict, finite, closed (see the module docstring)."""

    model_config = STRICT


def spec(default: Any = PydanticUndefined, *, about: str = "", allowed: str = "", **constraints: Any) -> Any:
    """A model field. `about` says what the field is (shown when it is missing or of the wrong type);
    `allowed` replaces the text derived from the constraints when a value is refused."""
    return Field(default, description=about or None, json_schema_extra={"allowed": allowed} if allowed else None,
                 **constraints)


def refusal(allowed: str, **how: Any) -> PydanticCustomError:
    """The error a field check raises. `how` may hold `value` (the value to show, default: the input),
    `field` (a sub-path of the field, e.g. an output number), `phrase` (replaces "has value V") or `line`
    (the whole message after the file and line)."""
    return PydanticCustomError(CUSTOM, "allowed: {allowed}", {"allowed": allowed, **how})


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a document, as the user wrote it."""

    kind: Literal["unknown", "key", "missing", "type", "value", "finite"]
    field: str  # dotted path as in the file ("pulse.phase1_us"); for unknown/key: the section's path
    value: Any = None  # as shown (an int given for a float field shown as the float it became)
    raw: Any = None  # as given
    allowed: str = ""  # what passes (value, finite)
    about: str = ""  # what the field is (missing, type)
    expected: str = ""  # the type a value must have (type): float, int, str, dict, list, bool
    fields: tuple[str, ...] = ()  # the section's fields, in declaration order (unknown, key)
    key: Any = None  # the refused field name (unknown, key)
    phrase: str = ""  # custom wording instead of "has value V"
    line: str = ""  # custom whole message

    @property
    def section(self) -> str:
        return self.field.rpartition(".")[0] if self.kind not in ("unknown", "key") else self.field

    @property
    def shown_key(self) -> str | None:
        """The refused key if it is safe to echo, else None."""
        return self.key if isinstance(self.key, str) and ECHOABLE_KEY.fullmatch(self.key) else None


def parse(model: type[M], data: Any, error: Callable[[Problem], Exception]) -> M:
    """`model.model_validate(data)`; the first problem raised as `error(problem)`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(first_problem(model, exc)) from None


def located(doc: LocatedDoc, error: type[Exception], wording: Callable[[LocatedDoc, Problem], str]
            ) -> Callable[[Problem], Exception]:
    """An `error` maker for `parse` that words a problem of `doc` with `wording`."""
    return lambda problem: error(wording(doc, problem))


# ---- reading a ValidationError --------------------------------------------------------------------------

def _strip(annotation: Any) -> Any:
    """X for Optional[X] (and X | None); the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the name written in files (the alias, if any), in declaration order."""
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def _variants(info: FieldInfo) -> dict[str, type[BaseModel]] | None:
    """tag -> model of a discriminated union field, else None."""
    if not isinstance(info.discriminator, str):
        return None
    out = {}
    for member in typing.get_args(_strip(info.annotation)):
        for tag in typing.get_args(member.model_fields[info.discriminator].annotation):
            out[str(tag)] = member
    return out


def _nested(info: FieldInfo) -> Any:
    """What a path continues into below this field: a model, a tag -> model mapping, or None."""
    t = _strip(info.annotation)
    return t if _is_model(t) else _variants(info)


def _expected(info: FieldInfo | None) -> str:
    t = _strip(info.annotation) if info is not None else None
    if typing.get_origin(t) is Literal:
        return type(typing.get_args(t)[0]).__name__
    if _is_model(t) or (info is not None and _variants(info)):
        return "dict"
    origin = typing.get_origin(t)
    t = origin or t
    return t.__name__ if isinstance(t, type) else "a value of another type"


_BOUNDS = ((">=", at.Ge, "ge"), (">", at.Gt, "gt"), ("<=", at.Le, "le"), ("<", at.Lt, "lt"))


def allowed_text(info: FieldInfo | None) -> str:
    """What a field allows: its `allowed` text, else its Literal options, else its bounds."""
    if info is None:
        return ""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and extra.get("allowed"):
        return str(extra["allowed"])
    t = _strip(info.annotation)
    if typing.get_origin(t) is Literal:
        return ", ".join(map(str, typing.get_args(t)))
    bounds: dict[str, Any] = {}
    for m in info.metadata:
        for word, kind, attr in _BOUNDS:
            if isinstance(m, kind):
                bounds[word] = getattr(m, attr)
    if ">=" in bounds and "<=" in bounds:
        return f"{bounds['>=']} to {bounds['<=']}"
    return " and ".join(f"{word} {bounds[word]}" for word, _, _ in _BOUNDS if word in bounds)


def _as_float(value: Any) -> Any:
    """An int given for a float field, shown as the float it becomes (unless it is beyond float range)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error"}


def first_problem(model: type[BaseModel], exc: ValidationError) -> Problem:
    """The problem to report: unknown fields of a section before its values, a section before its
    sub-sections (the order a reader checks a file in)."""
    errors = exc.errors(include_url=False)
    rank = {"extra_forbidden": 0, "invalid_key": 0}
    err = min(enumerate(errors), key=lambda ie: (len(ie[1]["loc"]), rank.get(ie[1]["type"], 1), ie[0]))[1]
    names: list[str] = []
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    below: Any = model
    for part in err["loc"]:
        if isinstance(below, dict) and part in below:  # a discriminated union's tag: not written in the file
            below = below[part]
            continue
        names.append(str(part))
        if _is_model(below):
            owner, info = below, _fields(below).get(str(part))
            below = _nested(info) if info is not None else None
        else:  # inside a list or mapping value: the field it belongs to stays the one to explain
            owner, below = None, None
    field = ".".join(names)
    kind, value = err["type"], err["input"]
    ctx = err.get("ctx") or {}
    is_float = _expected(info) == "float"
    if kind in ("extra_forbidden", "invalid_key"):
        section = ".".join(names[:-1])
        key = value if kind == "invalid_key" else names[-1]
        return Problem("unknown" if kind == "extra_forbidden" else "key", section, key=key,
                       fields=tuple(_fields(owner)) if owner else ())
    if kind == "missing":
        return Problem("missing", field, about=info.description or "" if info else "")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        variants = _variants(info) if info else None
        tag = value.get(info.discriminator) if isinstance(value, dict) and info else None
        return Problem("value", f"{field}.{info.discriminator}" if info else field, value=tag, raw=tag,
                       allowed=", ".join(sorted(variants or ())))
    if kind == CUSTOM:
        sub = ctx.get("field")
        shown = ctx.get("value", value)
        path = ".".join(filter(None, (field, "" if sub is None else str(sub))))
        return Problem("value", path, value=shown, raw=shown,
                       allowed=ctx["allowed"], phrase=ctx.get("phrase", ""), line=ctx.get("line", ""))
    if kind == "finite_number":
        return Problem("finite", field, value=value, raw=value, allowed=allowed_text(info),
                       about=(info.description or "") if info else "")
    options = typing.get_args(_strip(info.annotation)) if info and kind == "literal_error" else ()
    mistyped = kind.endswith("_type") or (options and type(value) not in {type(o) for o in options})
    if mistyped and not (is_float and isinstance(value, int) and not isinstance(value, bool)):
        return Problem("type", field, value=value, raw=value, about=(info.description or "") if info else "",
                       expected=_expected(info))
    if kind in _RANGE or mistyped:  # mistyped here: an int beyond float range in a float field
        return Problem("value", field, value=_as_float(value) if is_float else value, raw=value,
                       allowed=allowed_text(info))
    return Problem("value", field, value=value, raw=value, allowed=str(err.get("msg", kind)))


# ---- wordings -------------------------------------------------------------------------------------------

def _unknown_name(problem: Problem, section_word: str) -> str:
    """`'pulse.phse1_us'`, or where a key that is no name was (never the key itself)."""
    key = problem.shown_key
    if key is not None:
        return f"'{problem.field + '.' if problem.field else ''}{key}'"
    length = f"a {len(problem.key)}-character name" if isinstance(problem.key, str) else "a name"
    return f"in '{problem.field or section_word}' ({length} that is not an identifier, not shown)"


def protocol_line(doc: LocatedDoc, p: Problem) -> str:
    """`file:line: field 'pulse.phase1_us' has value 0.0; allowed: 1 to 100000` (protocol files)."""
    about = f" ({p.about})" if p.about else ""
    if p.kind == "unknown":
        where = doc.where(f"{p.field}.{p.key}" if p.field else str(p.key))  # a position, never the key
        return (f"{where}: unknown field {_unknown_name(p, 'the top level')}; "
                f"allowed fields: {', '.join(sorted(p.fields))}")
    if p.kind == "key":
        return (f"{doc.where(p.field)}: field name {show(p.key)} in '{p.field or 'the top level'}' is a "
                f"{type(p.key).__name__}; allowed fields: {', '.join(sorted(p.fields))}")
    where = doc.where(p.field)
    if p.kind == "missing":
        return f"{doc.where(p.section or p.field)}: missing required field '{p.field}'{about}"
    if p.line:
        return f"{where}: {p.line}"
    said = p.phrase or f"has value {show(p.value)}"
    if p.kind == "type":
        return f"{where}: field '{p.field}' {said}; expected {p.expected}{about}"
    if p.kind == "finite":
        return f"{where}: field '{p.field}' {said}; allowed: {p.allowed or 'a finite number'} (finite)"
    return f"{where}: field '{p.field}' {said}; allowed: {p.allowed}"
