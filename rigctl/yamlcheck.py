"""Load YAML keeping line numbers, so that validation errors (`rigctl.config`) can name file, line, field,
value and what is allowed.

Protocol and rig files are untrusted input (shared, downloaded, fuzzed), so loading is bounded end to end:
only regular files of at most MAX_FILE_BYTES are read (never a FIFO, device or directory), nesting depth and
alias expansion are counted while composing, before any object is built, numbers have a length cap, and
every error is one line that quotes positions and short, truncated values, never a file's content.
"""

from __future__ import annotations

import errno
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from rigctl.errors import ProtocolError

MAX_FILE_BYTES = 256 * 1024  # protocol and rig files are a few KB; parsing 256 KiB takes well under a second
MAX_DEPTH = 64  # nesting levels (the schemas use 3); PyYAML's recursive composer overflows near 500
MAX_NODES = 50_000  # nodes after alias expansion: what validating, merging or printing the data can touch
MAX_ALIASES = 1_000
MAX_NUMBER_CHARS = 1_000  # longer int/float scalars cost quadratic time to convert (sexagesimal 1:2:3:...)
SHOW_CHARS = 80
PATH_CHARS = 200

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class LimitError(ComposerError):
    """A document exceeds a loader limit (depth, aliases, expanded size, number length)."""


# ---- bounded display ----------------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 6, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = SHOW_CHARS, SHOW_CHARS, 40


def clip(text: str, limit: int = SHOW_CHARS) -> str:
    """`text` cut to `limit` characters with an ellipsis (so an error line stays one short line)."""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def show(value: Any) -> str:
    """A bounded repr: never expands big or shared structures, never exceeds SHOW_CHARS characters."""
    try:
        if isinstance(value, str):
            text = repr(value[:2 * SHOW_CHARS])
        elif isinstance(value, int) and not isinstance(value, bool):
            text = repr(value)
        else:
            text = _repr.repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<int of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return clip(text)


def show_path(path: str | os.PathLike) -> str:
    """A path for an error line: its tail when it is very long (the file name is the useful part)."""
    text = clip(os.fsdecode(path), 10 * PATH_CHARS)
    return text if len(text) <= PATH_CHARS else "…" + text[-(PATH_CHARS - 1):]


# ---- the document -------------------------------------------------------------------------------------

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
            return f"{show_path(self.path)}: {line}"
        return f"{show_path(self.path)}:{line}" if line else show_path(self.path)


def _collect_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", out)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}{i}"] = item.start_mark.line + 1


# ---- bounded parsing ----------------------------------------------------------------------------------

class _BudgetComposer(Composer):
    """Counts nodes as the document is composed, an alias counting as the whole node it repeats, and refuses
    deep nesting, recursive aliases and documents beyond MAX_NODES / MAX_ALIASES. Composition is cheap (an
    alias is one shared node); the cost of an alias bomb comes later, when data is walked or printed."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._aliases = 0
        self._sizes: dict[str, int] = {}
        self._open: set[str] = set()

    def _charge(self, n: int, mark: yaml.Mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise LimitError(None, None, f"more than {MAX_NODES} values, counting each alias as the "
                             f"values it repeats (an alias bomb?); allowed: at most {MAX_NODES}", mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise LimitError(None, None, f"more than {MAX_ALIASES} aliases; allowed: at most {MAX_ALIASES}",
                                 event.start_mark)
            if event.anchor in self._open:
                raise LimitError(None, None, "a recursive alias (it refers to a node that contains it); "
                                 "allowed: aliases to finished nodes", event.start_mark)
            self._charge(self._sizes.get(event.anchor, 1), event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitError(None, None, f"nested deeper than {MAX_DEPTH} levels; allowed: at most {MAX_DEPTH}",
                             event.start_mark)
        first = self._nodes
        self._charge(1, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._nodes - first
        self._depth -= 1
        return node


class _BoundedConstructor(SafeConstructor):
    """SafeConstructor whose scalar conversions fail as YAML errors at the scalar's position, not as
    Python tracebacks (`!!int ''`, `!!float abc`, `2020-13-45`, 5000-digit integers)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if (isinstance(node, ScalarNode) and node.tag in (_INT_TAG, _FLOAT_TAG)
                and len(node.value) > MAX_NUMBER_CHARS):
            raise LimitError(None, None, f"a number of more than {MAX_NUMBER_CHARS} characters; "
                             f"allowed: at most {MAX_NUMBER_CHARS}", node.start_mark)
        try:
            return super().construct_object(node, deep)
        except (ValueError, ArithmeticError, TypeError, LookupError, AttributeError) as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(None, None, f"cannot convert a {clip(tag, 20)} value ({type(exc).__name__})",
                                   node.start_mark) from None


class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _BudgetComposer,
                _BoundedConstructor, Resolver):
    """Pure-Python parser (used when PyYAML was built without libyaml)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BudgetComposer.__init__(self)
        _BoundedConstructor.__init__(self)
        Resolver.__init__(self)


_LOADER: type = _PyLoader
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser

    class _CLoader(_BudgetComposer, CParser, _BoundedConstructor, Resolver):
        """libyaml's scanner and parser (about 6x faster) under the same Python composer and its budget."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BudgetComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            Resolver.__init__(self)

    _LOADER = _CLoader


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_HARMLESS = re.compile(r"['\"](?:\\[tnr0]|[^A-Za-z0-9]{1,2})['\"]")  # "':'", "'\\t'": syntax, not content


def _redact(problem: str) -> str:
    return _QUOTED.sub(lambda m: m.group(0) if _HARMLESS.fullmatch(m.group(0)) else "…", problem)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[yaml.Mark | None, str]:
    """(position, problem) of a parser error with quoted content removed: the file may not be the user's."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    if not isinstance(exc, LimitError):
        problem = _redact(str(problem))
    return mark, clip(str(problem), 200)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _refuse_unless_regular(st: os.stat_result, shown: str, error: type[Exception]) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{shown}: is {kind}; allowed: a regular file of at most {MAX_FILE_BYTES // 1024} KiB")
    if st.st_size > MAX_FILE_BYTES:
        raise error(f"{shown}: is {st.st_size} bytes; allowed: at most {MAX_FILE_BYTES // 1024} KiB")


def _os_problem(exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    return f"cannot read ({os.strerror(exc.errno) if exc.errno else type(exc).__name__})"


def read_bounded(path: Path, error: type[Exception] = ProtocolError) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; anything else is an `error`, never a hang:
    the type is checked before opening, the open cannot block (O_NONBLOCK) and is re-checked on the handle."""
    shown = show_path(path)
    try:
        _refuse_unless_regular(os.stat(path), shown, error)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(f"{shown}: {_os_problem(exc)}") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{shown}: no such file (the name contains a NUL byte)") from None
    try:
        _refuse_unless_regular(os.fstat(fd), shown, error)
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise error(f"{shown}: {_os_problem(exc)}") from None
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:  # grew, or a special file that reports size 0
        raise error(f"{shown}: is larger than {MAX_FILE_BYTES // 1024} KiB; allowed: at most "
                    f"{MAX_FILE_BYTES // 1024} KiB")
    return b"".join(chunks)


def _line_column(buf: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of `offset` in `buf`."""
    newline = "\n" if isinstance(buf, str) else b"\n"
    return buf.count(newline, 0, offset) + 1, offset - (buf.rfind(newline, 0, offset) + 1) + 1


def load_located(path: Path, error: type[Exception] = ProtocolError) -> LocatedDoc:
    """Read and parse one YAML mapping within the module's limits; every failure is one `error` line."""
    path = Path(path)
    shown = show_path(path)
    raw = read_bounded(path, error)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(raw, exc.start)
        raise error(f"{shown}: not a text file (invalid UTF-8 at line {line}, column {column}); allowed: UTF-8 "
                    "text") from None
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as exc:  # a control character; libyaml counts bytes, PyYAML characters
        line, column = _line_column(text if isinstance(loader, _PyLoader) else raw, exc.position)
        raise error(f"{shown}:{line}: not valid YAML (a control character at column {column}); allowed: "
                    "printable text") from None
    except yaml.YAMLError as exc:
        mark, problem = _yaml_problem(exc)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        if isinstance(exc, LimitError):
            raise error(f"{where}: {problem}") from None
        if "maximum nesting depth" in str(problem):  # libyaml >= 0.2.6 (PyYAML 6.0.4 wheels) stops first
            raise error(f"{where}: nested deeper than {MAX_DEPTH} levels; allowed: at most {MAX_DEPTH}") from None
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML ({problem}{column})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise error(f"{shown}: expected a mapping of fields at the top level, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise error(f"{shown}: top-level key {show(key)} is a {type(key).__name__}; allowed: field names "
                        "(strings)")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return LocatedDoc(path, data, lines)
