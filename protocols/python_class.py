"""`kind: python`: a protocol written as a Python class by the lab, named in the YAML file.

    kind: python
    name: paired_pulse
    class: paired_pulse.py:PairedPulse   # a file (relative to this YAML file) or an importable module:Class
    params: {electrode: 9, pairs: 20}    # checked by the class's `Params` dataclass, if it has one

The class subclasses `rigctl.engine.Protocol` and is made as `Class(config, seed, sample_rate_hz)`;
`config.params` holds the validated parameters. docs/protocols.md has a complete worked example.
Importing the class runs the lab's code: resuming a run of a Python protocol imports it again from the
path recorded in the run's protocol.yaml.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from rigctl.config import spec
from rigctl.engine import Protocol, ProtocolConfig
from rigctl.errors import ProtocolError
from rigctl.protocol import common_values, parse_file
from rigctl.protocol_schema import ProtocolFile
from rigctl.yamlcheck import LocatedDoc

KIND = "python"
CLASS_REF = re.compile(r"(?P<where>[^:]{1,400}):(?P<name>[A-Za-z_][A-Za-z0-9_]{0,99})")

class PythonFile(ProtocolFile):
    """What a `kind: python` file may say; `params` are checked by the class's own `Params`."""

    kind: Literal["python"] = KIND
    class_ref: str = spec(alias="class", about="FILE.py:Class (relative to this file) or module:Class")
    params: dict = spec({}, about="a mapping of the class's parameters")
    sessions: int = spec(1, ge=1, le=100000)
    trial_spacing_s: float | None = spec(None, ge=0.001, le=3600,
                                         about="the shortest time between trials, for the window checks")


@dataclass(frozen=True)
class PythonProtocolConfig(ProtocolConfig):
    KIND: ClassVar[str] = KIND

    class_ref: str  # resolved: an absolute FILE.py:Class, or module:Class
    params: Any = None  # the class's Params instance, or the plain mapping
    raw_params: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in super().to_dict().items() if k not in ("class_ref", "params", "raw_params")}
        return {**out, "class": self.class_ref, "params": dict(self.raw_params)}

    def make_protocol(self, seed: int, sample_rate_hz: float) -> Protocol:
        return protocol_class(self.class_ref)(self, seed, sample_rate_hz)

    def describe(self, plan: Protocol) -> list[str]:
        return [f"{self.name}: Python protocol {self.class_ref}, {plan.n_trials} trials, "
                f"{'open' if plan.open_loop else 'closed'} loop; params {self.raw_params}"]


_LOADED: dict[str, type] = {}


def protocol_class(class_ref: str) -> type:
    """Import `FILE.py:Class` or `module:Class` and check it is a Protocol (ProtocolError otherwise)."""
    if class_ref in _LOADED:
        return _LOADED[class_ref]
    match = CLASS_REF.fullmatch(class_ref)
    if match is None:
        raise ProtocolError(f"class {class_ref[:80]!r}; allowed: FILE.py:Class or module:Class")
    where, name = match["where"], match["name"]
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ProtocolError(f"class {class_ref[:200]}: no such file {where[:200]}")
            module_name = f"rigctl_protocol_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling-free state need the module registered
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ProtocolError:
        raise
    except Exception as exc:  # the lab's module failed to import: say where, never a traceback
        raise ProtocolError(f"class {class_ref[:200]}: importing it failed ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from exc
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ProtocolError(f"class {class_ref[:200]}: {name} is not a subclass of rigctl.engine.Protocol")
    _LOADED[class_ref] = cls
    return cls


def load(doc: LocatedDoc, path: Path) -> PythonProtocolConfig:
    top = parse_file(PythonFile, doc)
    ref = top.class_ref
    match = CLASS_REF.fullmatch(ref)
    if match is None:
        raise ProtocolError(f"{doc.where('class')}: field 'class' has value {ref[:80]!r}; allowed: FILE.py:Class "
                            "(relative to this file) or module:Class")
    if match["where"].endswith(".py"):
        ref = f"{(path.parent / match['where']).resolve()}:{match['name']}"
    try:
        cls = protocol_class(ref)
    except ProtocolError as exc:
        raise ProtocolError(f"{doc.where('class')}: {exc}") from None
    raw_params = top.params
    params: Any = dict(raw_params)
    params_type = getattr(cls, "Params", None)
    if params_type is not None and dataclasses.is_dataclass(params_type):
        try:
            params = params_type(**raw_params)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{doc.where('params')}: field 'params' {str(exc)[:300]}") from None
    common = common_values(doc, top, path, top.trial_spacing_s)
    return PythonProtocolConfig(**common, sessions=top.sessions, class_ref=ref, params=params,
                                raw_params=dict(raw_params))
