"""Fuzz the protocol loader with seeded mutants of the shipped protocols (protocols/*.yaml).

Each case writes one or more files (byte flips, truncations, swapped field values and types, NaN / inf /
huge / negative numbers, deep nesting, alias bombs, bad keys, `extends` to a FIFO, /dev/zero, a directory,
a symlink loop, long names, oversized files, random valid protocols...), loads it with `load_protocol`
and, when accepted, builds its schedule (what `rigctl validate` does) and reloads its resolved YAML.
Outcomes:

    accepted   loaded, scheduled and round-tripped
    refused    one-line ProtocolError shorter than 1000 characters
    traceback  any other exception (a bug)        bad-error  a multi-line or >= 1000-character ProtocolError
    leak       an error quoting the secret file   roundtrip  the resolved YAML reloads differently
    slow       longer than 5 s (a 20 s alarm stops hangs)
    blow-up    more than 200 MB: an address-space cap per case turns it into MemoryError (or, with
               --memory tracemalloc, a traced peak above the limit)

Cases run in this process, one at a time; case N is a pure function of (--seed, N), so `--replay N` shows
and reruns one case with its traceback.

    python bench/fuzz_protocols.py --cases 100000 --seed 0
    python bench/fuzz_protocols.py --seed 0 --replay 1234
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import rigctl.yamlcheck
from rigctl.errors import ProtocolError
from rigctl.engine import ProtocolConfig
from rigctl.protocol import library_dir, load_protocol

# sizes around the loader's file limit (a default when fuzzing a loader that predates it)
MAX_FILE_BYTES = getattr(rigctl.yamlcheck, "MAX_FILE_BYTES", 256 * 1024)

SLOW_S = 5.0
HANG_S = 20.0
BLOWUP_MB = 200
MAX_ERROR_CHARS = 1000
SECRET = "S3CRET-shadow-hash"
OUTCOMES = ("accepted", "refused", "traceback", "bad-error", "leak", "roundtrip", "slow", "blow-up")
BUGS = frozenset(OUTCOMES[2:])
CASE = "case.yaml"


class Overtime(BaseException):
    """Raised by the per-case alarm (a BaseException, so no `except Exception` in the code under test eats it)."""


@dataclass
class Case:
    index: int
    kind: str
    files: dict[str, bytes]  # written into the work directory, then removed
    target: str  # what load_protocol is given: a name in the work directory, or an absolute path


@dataclass
class Result:
    outcome: str
    seconds: float
    detail: str


@dataclass
class Report:
    cases: int = 0
    seconds: float = 0.0
    counts: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    slowest: tuple[float, int, str] = (0.0, -1, "")

    @property
    def bugs(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome in BUGS)

    def add(self, case: Case, result: Result) -> None:
        self.cases += 1
        self.counts[result.outcome] += 1
        self.by_kind[case.kind][result.outcome] += 1
        if result.outcome in BUGS and len(self.examples[result.outcome]) < 5:
            self.examples[result.outcome].append(f"case {case.index} ({case.kind}): {result.detail[:300]}")
        if result.seconds > self.slowest[0]:
            self.slowest = (result.seconds, case.index, case.kind)

    def table(self) -> str:
        cols = [o for o in OUTCOMES if self.counts[o] or o in ("accepted", "refused", "traceback", "slow", "blow-up")]
        width = max([len("total")] + [len(k) for k in self.by_kind])
        rows = [f"{'kind':<{width}} " + " ".join(f"{c:>10}" for c in cols) + f" {'total':>8}"]
        for kind in sorted(self.by_kind):
            c = self.by_kind[kind]
            rows.append(f"{kind:<{width}} " + " ".join(f"{c[o]:>10}" for o in cols) + f" {sum(c.values()):>8}")
        rows.append(f"{'total':<{width}} " + " ".join(f"{self.counts[o]:>10}" for o in cols) + f" {self.cases:>8}")
        rows.append(f"{self.cases} cases in {self.seconds:.1f} s ({self.cases / max(self.seconds, 1e-9):.0f}/s); "
                    f"slowest case {self.slowest[1]} ({self.slowest[2]}) {self.slowest[0] * 1000:.0f} ms; "
                    f"bugs: {self.bugs}")
        for outcome, lines in self.examples.items():
            rows += [f"  {outcome}: {line}" for line in lines]
        return "\n".join(rows)


# ---- value pools -------------------------------------------------------------------------------------------

BIG = "1" + "0" * 400
NUMBERS = [".nan", ".NaN", ".NAN", ".inf", ".Inf", "-.inf", "+.inf", "1.0e+400", "-1.0e+400", "1.0e-400", "0",
           "-0", "-0.0", "1", "-1", "0.5", "0.02", "0.019999", "0.1", "3600", "3600.0001", "86400", "86401",
           "100000", "100001", "1000000", "1000001", "4095", "4096", "-100000", "-100001", "2147483648",
           "9223372036854775807", "9223372036854775808", "18446744073709551616", BIG, "-" + BIG, "0x7fffffffffffffff",
           "0x" + "f" * 900, "0o777", "0b1010", "1_000_000", "190:20:30", "1:" * 40 + "1", "1" + ":1" * 2000,
           "1" * 999, "1" * 1001, "1" * 5000, "1." + "0" * 2000, "1.5e3", "1e3", "+12", "012", "0.", ".5"]
SCALARS = ["true", "false", "yes", "no", "on", "off", "null", "~", "''", '""', "x", "'x'", '"\\0"', '"a\\0b"',
           '"\\x01"', "'../../x'", "/etc/passwd", "..", "a..b", "'-x'", "'a b'", "x" * 64, "x" * 65, "2020-13-45",
           "2001-12-14", "2001-12-14t21:59:43.10-05:00", "!!binary aGVsbG8=", "!!binary '@@@'", "!!binary a",
           "!!float abc", "!!float ''", "!!int ''", "!!int 0x", "!!int abc", "!!bool maybe", "!!null x", "!!str 5",
           "!!timestamp x", "!!timestamp 2020-02-30", "!python/object/apply:os.system ['true']",
           "!!python/name:os.system ''", "!custom x", "!<tag:yaml.org,2002:int> 5", "!!merge x", "!!value x",
           "*undefined", "&a 1", "&a [1, 2]", "'" + "x" * 3000 + "'", "|\n  block\n  text", ">-\n  folded",
           "'multi\n  line'", '"\\uD800"', '"\\U0010FFFF"', '"\\ud83d\\ude00"', "'é'", "\u202e", "\u0085",
           "\ufeff", "@x", "`x", "%x", "- x", "? x", ": x", "x: y", "'x' y", '"unclosed',
           "'unclosed", "[unclosed", "{unclosed", "]", "}", "&", "*", "!", "|", ">", "#", ",", "!!set {a, b}",
           "!!omap [a: 1, b: 2]", "!!omap [1]", "!!pairs [a: 1]", "!!pairs x", "!!seq x", "!!map x"]
COLLECTIONS = ["[]", "{}", "[1]", "[1, 2]", "[1, 2, 3]", "[.nan, 1]", "[1, .nan]", "[-.inf, 5]", "[0, 1.0e+400]",
               "[10, 30]", "[30, 10]", "[-10, 40]", "[-50, 100]", "[0, 10000]", "[-10001, 0]", "[1.0e+15, 1.1e+15]",
               f"[0, {BIG}]", f"[{BIG}, {BIG[:-1]}1]", "[x, y]", "[true, false]", "[[1, 2], 3]", "[{a: 1}, 2]",
               "{a: 1}", "{A: [0], B: [1]}", "{A: [], B: []}", "{A: [0, 0], B: [1]}", "{A: [-1], B: [1]}",
               "{A: [4096], B: [1]}", "{A: [true], B: [1]}", "{A: [1.5], B: [2]}", f"{{A: [{BIG}], B: [2]}}",
               "{A: [0], B: [1], C: [2]}", "{1: [0], B: [1]}", "{~: [0]}", "{A: 1, B: 2}", "{A: x, B: y}",
               "{unit: uA, phase1_amplitude: .nan}", "[" * 70 + "]" * 70, "{a: " * 70 + "1" + "}" * 70,
               "[" + ", ".join(["0"] * 3000) + "]", "[" + ", ".join(map(str, range(5000))) + "]"]
KEYS = ["1", "~", "null", "true", "1.5", ".nan", "-1", "? [1, 2]", "? {a: 1}", "? !!set {a}", "'" + "k" * 1000 + "'",
        "k" * 1100, '"\\0"', '""', "''", "<<", "2020-01-01", "!!binary aGk=", "!!int 5", "&k a", "*k", "A", "B", "C",
        "unit", "phase1_amplitude", "mixing", "name", "extends", "pulse", "stim_groups", "'mixing '", '"mix\\ting"']
MERGE_VALUES = ["{mixing: .nan}", "{name: ../x}", "*undefined", "5", "[1, 2]", "[{a: 1}, 5]", "{sessions: 0}", "~",
                "{extends: /dev/zero}", "[*a]"]
EXTENDS = ["fifo.yaml", "dir.yaml", "dir.yaml/", ".", "/", "''", "loop.yaml", "dangling.yaml", "zero.yaml",
           "/dev/zero", "/dev/null", "/dev/urandom", "/dev/stdin", "/proc/self/mem", "/proc/self/status",
           "status.yaml", "urandom.yaml", "secret", "secret.yaml", "big.yaml", "binary.yaml", "self.yaml",
           "chain0.yaml", "chain5.yaml", "a" * 200 + ".yaml", "a" * 250 + ".yaml", "a" * 251 + ".yaml",
           "a" * 5000 + ".yaml", "../" * 60 + "x.yaml", "sub/../isomura2023_bss.yaml", '"a\\0b.yaml"', "5", "[a]",
           "{a: b}", "~", "true", "isomura2023_bss", "isomura2023_bss.yaml", "ISOMURA2023_BSS.YAML",
           "isomura2023_bss_mix0.yaml", "nope.yaml", "parent.yaml", "x.yml", '"é.yaml"', "*undefined",
           "!!binary aGk=", "'%s.yaml'" % ("x/" * 2000)]
TOP_PATHS = ["fifo.yaml", "dir.yaml", "loop.yaml", "dangling.yaml", "zero.yaml", "secret", "big.yaml", "binary.yaml",
             "self.yaml", "chain0.yaml", "/dev/zero", "/dev/null", "/proc/self/status", "/proc/self/mem", "", ".",
             "a" * 5000, "a\0b", "nope", "isomura2023_bss", "isomura2023_bss_mix0", "isomura2023_bss_mix50.yaml",
             "/", "/etc/passwd"]
INTERESTING_BYTES = b"\x00\x01\x09\x0a\x0d\x1b\x20\x22\x23\x25\x26\x27\x2a\x2c\x2d\x3a\x3e\x3f\x40\x5b\x5d\x60" \
                    b"\x7b\x7c\x7d\x7f\x80\x85\xa0\xbf\xc0\xc3\xe2\xed\xef\xf0\xf4\xf5\xfe\xff"


def _bases() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(library_dir().glob("*.yaml"))]


BASES = _bases()
FIELD_LINE = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*):( *)([^#\n]*?)( *#.*)?$", re.M)


def _value(rng: random.Random) -> str:
    pool = rng.choice([NUMBERS, NUMBERS, SCALARS, COLLECTIONS])
    if pool is NUMBERS and rng.random() < 0.3:
        return rng.choice([repr(rng.uniform(-1e6, 1e6)), str(rng.randint(-10 ** 7, 10 ** 7)), f"{rng.random():.3g}",
                           f"{rng.choice(['', '-'])}1{'0' * rng.randint(15, 420)}", f"{rng.uniform(0, 2):.6f}"])
    return rng.choice(pool)


def _indent_value(value: str, indent: str) -> str:
    return value.replace("\n", "\n" + indent)


# ---- mutators: (rng) -> (files, target) ----------------------------------------------------------------------

def _base(rng: random.Random) -> str:
    return rng.choice(BASES)[1]


def m_bytes(rng: random.Random, text: str | None = None) -> dict[str, bytes]:
    data = bytearray((text if text is not None else _base(rng)).encode())
    for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 20])):
        if not data:
            break
        i = rng.randrange(len(data))
        byte = rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
        op = rng.random()
        if op < 0.5:
            data[i] = byte
        elif op < 0.75:
            data.insert(i, byte)
        elif op < 0.9:
            del data[i]
        else:
            data[i] ^= 1 << rng.randrange(8)
    return {CASE: bytes(data)}


def m_truncate(rng: random.Random) -> dict[str, bytes]:
    data = _base(rng).encode()
    cut = rng.randrange(len(data) + 1)
    tail = rng.choice([b"", b"\n", b"[", b"{", b"'", b'"', b"&a", b"*", b": ", b"\xc3", b"\xe2\x82"])
    return {CASE: data[:cut] + tail}


def _swap_values(rng: random.Random, text: str, n: int) -> str:
    matches = list(FIELD_LINE.finditer(text))
    for m in rng.sample(matches, min(n, len(matches))):
        indent = m.group(1)
        value = _value(rng)
        if m.group(4) and m.group(4).startswith("[") and rng.random() < 0.4:  # one element of a list
            items = m.group(4).strip("[]").split(",")
            items[rng.randrange(len(items))] = " " + rng.choice(NUMBERS + ["x", "~", "true", "[1]", "-1"])
            value = "[" + ",".join(items).strip() + "]"
        new_line = f"{indent}{m.group(2)}: {_indent_value(value, indent + '  ')}"
        text = text.replace(m.group(0), new_line, 1)
    return text


def m_values(rng: random.Random) -> dict[str, bytes]:
    return {CASE: _swap_values(rng, _base(rng), rng.choice([1, 1, 1, 2, 3])).encode()}


def m_lines(rng: random.Random) -> dict[str, bytes]:
    lines = _base(rng).split("\n")
    for _ in range(rng.choice([1, 2, 3])):
        i = rng.randrange(len(lines))
        op = rng.randrange(6)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])  # duplicate (duplicate keys, wrong section)
        elif op == 2:
            lines[i] = " " * rng.choice([1, 2, 3, 4, 8]) + lines[i]
        elif op == 3:
            lines[i] = lines[i].lstrip()
        elif op == 4:
            lines[i] = "\t" + lines[i]
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    return {CASE: "\n".join(lines).encode()}


def _nest(rng: random.Random, n: int) -> str:
    style = rng.choice(["flowseq", "flowmap", "blockseq", "blockmap", "unclosed", "mixed"])
    if style == "flowseq":
        return "[" * n + "]" * n
    if style == "flowmap":
        return "{a: " * n + "1" + "}" * n
    if style == "blockseq":
        return "- " * n + "x"
    if style == "blockmap":
        n = min(n, 700)
        return "\n" + "".join(" " * (i + 1) + "k:\n" for i in range(n)) + " " * (n + 1) + "v"
    if style == "unclosed":
        return "[" * n
    return "".join(rng.choice(["[", "{a: ", "[{a: "]) for _ in range(n)) + "1"


def m_deep(rng: random.Random) -> dict[str, bytes]:
    n = rng.choice([10, 60, 63, 64, 65, 100, 499, 500, 999, 1000, 1001, 5000, 60000])
    nested = _nest(rng, n)
    where = rng.random()
    if where < 0.2:
        return {CASE: nested.encode()}
    key = rng.choice(["description", "pulse", "stim_groups", "mixing", "extra", "response_window_ms"])
    return {CASE: f"extends: isomura2023_bss.yaml\nname: fz\n{key}: {nested}\n".encode()}


def _laughs(rng: random.Random) -> tuple[str, str]:
    """Anchor definitions of a `billion laughs` (block or flow) and the alias of its top level."""
    levels, width = rng.randint(3, 14), rng.randint(2, 12)
    if rng.random() < 0.5:
        defs = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
        defs += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
        return "\n".join(defs) + "\n", f"*l{levels - 1}"
    inner = [f"&l0 [{', '.join(['lol'] * width)}]"]
    inner += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "", "[" + ", ".join(inner) + "]"


def m_alias(rng: random.Random) -> dict[str, bytes]:
    head = "extends: isomura2023_bss.yaml\nname: fz\n"
    kind = rng.choice(["laughs", "laughs", "merge", "recursive", "many", "undefined", "duplicate", "keys", "benign",
                       "chain"])
    if kind == "laughs":
        defs, top = _laughs(rng)
        key = rng.choice(["description", "stim_groups", "pulse", "response_window_ms", "name", "extends"])
        body = defs + (f"{key}: {top}\n" if key != "stim_groups" else f"stim_groups: {{A: {top}, B: [1]}}\n")
        return {CASE: (head + body).encode()}
    if kind == "merge":
        levels, width = rng.randint(3, 14), rng.randint(2, 6)
        lines = ["m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(width)) + "}"]
        for i in range(1, levels):
            merges = ", ".join([f"*m{i - 1}"] * rng.randint(1, 3))
            keys = ", ".join(f"x{j}: *m{i - 1}" for j in range(width))
            lines.append(f"m{i}: &m{i} {{<<: [{merges}], {keys}}}")
        lines.append(f"pulse: {{<<: *m{levels - 1}}}")
        return {CASE: (head + "\n".join(lines) + "\n").encode()}
    if kind == "recursive":
        return {CASE: (head + rng.choice(["pulse: &p {unit: mV, self: *p}\n", "description: &d [*d]\n",
                                          "stim_groups: &g\n  A: *g\n  B: [1]\n", "pulse: &p\n  <<: *p\n",
                                          "x: &x [[[*x]]]\n"])).encode()}
    if kind == "many":
        n = rng.choice([10, 999, 1000, 1001, 5000])
        return {CASE: (head + "a: &a x\ndescription: [" + ", ".join(["*a"] * n) + "]\n").encode()}
    if kind == "undefined":
        return {CASE: (head + rng.choice(["mixing: *nope\n", "pulse: {<<: *nope}\n", "*nope : 1\n"])).encode()}
    if kind == "duplicate":
        return {CASE: (head + "a: &x 1\nb: &x 2\nmixing: *x\n").encode()}
    if kind == "keys":
        return {CASE: (head + "&k mixing: 0.5\n*k : 0.7\n").encode()}
    if kind == "chain":  # a long chain of aliases inside the budget, used by a real field
        n = rng.choice([5, 50, 500])
        defs = "".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [10, 30]\n" for i in range(n))
        return {CASE: (head + defs + f"response_window_ms: *a{n - 1}\n").encode()}
    return {CASE: (head + "stim_groups:\n  A: &g [0, 2]\n  B: [4, 6]\nresponse_window_ms: &w [10, 30]\n"
                   "spike_window_ms: *w\nraw_window_ms: *w\n").encode()}


def m_keys(rng: random.Random) -> dict[str, bytes]:
    text = _base(rng)
    key = rng.choice(KEYS)
    value = rng.choice(MERGE_VALUES) if key == "<<" else _value(rng)
    section = rng.choice(["top", "pulse", "stim_groups"])
    if section == "top" or f"\n{section}:" not in text:
        line = f"{key}: {_indent_value(value, '  ')}\n"
        return {CASE: (text + line).encode()}
    line = f"\n  {key}: {_indent_value(value, '    ')}"
    return {CASE: text.replace(f"\n{section}:", f"\n{section}:{line}", 1).encode()}


def _yaml_str(s: str) -> str:
    return s if s.startswith(("'", '"', "[", "{", "!", "*")) or s in ("5", "~", "true") else json.dumps(s)


def m_extends(rng: random.Random) -> dict[str, bytes]:
    target = rng.choice(EXTENDS)
    files: dict[str, bytes] = {}
    if target == "parent.yaml":
        parent = rng.choice([m_bytes, m_values, m_keys, m_lines, m_alias])(rng)
        files["parent.yaml"] = parent[CASE]
    extra = _swap_values(rng, "mixing: 0.5\n", 1) if rng.random() < 0.3 else ""
    files[CASE] = f"extends: {_yaml_str(target)}\nname: fz\n{extra}".encode()
    return files


def m_top(rng: random.Random) -> tuple[dict[str, bytes], str]:
    return {}, rng.choice(TOP_PATHS)


def m_size(rng: random.Random) -> dict[str, bytes]:
    base = _base(rng)
    kind = rng.choice(["pad", "flow", "long_string", "many_keys"])
    target = rng.choice([MAX_FILE_BYTES - 200, MAX_FILE_BYTES, MAX_FILE_BYTES + 1, 2 * MAX_FILE_BYTES, 100_000])
    if kind == "pad":
        body = base + "#" * max(0, target - len(base.encode()) - 1) + "\n"
    elif kind == "flow":
        body = base + "description: [" + "0," * max(1, (target - len(base)) // 2 - 20) + "0]\n"
    elif kind == "long_string":
        body = base.replace("description: >", "description: '" + "x" * max(1, target - len(base) - 40) + "'\nold: >")
    else:
        body = base + "".join(f"k{i}: {i}\n" for i in range(max(1, (target - len(base)) // 12)))
    return {CASE: body.encode()}


def m_valid(rng: random.Random) -> dict[str, bytes]:
    """A random protocol inside (or just at) the schema's limits, to exercise acceptance and the schedule."""
    n_a, n_b = rng.choice([1, 2, 16, 100, 2048]), rng.choice([1, 3, 16, 2048])
    electrodes = rng.sample(range(4096), n_a + n_b)
    tps = rng.choice([1, 2, 256, 1000, 65_536, 1_000_000])
    sessions = rng.choice([1, 2, 100, 10_000, 100_000])
    isi = rng.choice([0.02, 0.05, 1.0, 3600])
    lines = [f"name: fz{rng.randrange(10 ** 6)}", f"sessions: {sessions}", f"trials_per_session: {tps}",
             f"isi_s: {isi}", f"rest_s: {rng.choice([0, 1.5, 86400])}", f"first_trial_s: {rng.choice([0.1, 1, 3600])}",
             f"sequence: {rng.choice(['repeat', 'fresh'])}", f"mixing: {rng.random():.4f}",
             f"source_p_on: {rng.random():.4f}", f"seed: {rng.choice([0, 1, 2 ** 63 - 1])}",
             f"stim_groups:\n  A: {electrodes[:n_a]}\n  B: {electrodes[n_a:]}",
             "pulse:\n  unit: uA\n  phase1_amplitude: -10\n  phase1_us: 5\n  phase2_amplitude: 10\n  phase2_us: 5",
             "response_window_ms: [1, 15]", "raw_window_ms: [-5, 15]", "spike_window_ms: [-10, 19]",
             f"raw: {rng.choice(['all', 'trials', 'none'])}", f"checkpoint_every_trials: {rng.choice([1, 1000000])}"]
    return {CASE: ("\n".join(lines) + "\n").encode()}


def m_combo(rng: random.Random) -> dict[str, bytes]:
    text = _swap_values(rng, _base(rng), rng.choice([1, 2, 4]))
    if rng.random() < 0.5:
        text += f"{rng.choice(KEYS)}: {_indent_value(_value(rng), '  ')}\n"
    return m_bytes(rng, text) if rng.random() < 0.5 else {CASE: text.encode()}


MUTATORS: list[tuple[str, Callable, int]] = [
    ("bytes", m_bytes, 14), ("truncate", m_truncate, 5), ("values", m_values, 18), ("lines", m_lines, 6),
    ("deep", m_deep, 6), ("alias", m_alias, 8), ("keys", m_keys, 10), ("extends", m_extends, 10),
    ("top-path", m_top, 3), ("size", m_size, 2), ("valid", m_valid, 6), ("combo", m_combo, 12),
]


def make_case(seed: int, index: int) -> Case:
    """Case `index` of run `seed`: a pure function of the two."""
    rng = random.Random(seed * 1_000_003 + index)
    kind, fn, _ = rng.choices(MUTATORS, weights=[w for _, _, w in MUTATORS])[0]
    made = fn(rng)
    files, target = made if isinstance(made, tuple) else (made, CASE)
    return Case(index, kind, files, target)


# ---- fixtures: the odd files `extends` and top-level paths point at --------------------------------------------

def make_fixtures(work: Path) -> None:
    os.mkfifo(work / "fifo.yaml")
    (work / "dir.yaml").mkdir()
    (work / "sub").mkdir()
    os.symlink("loop2.yaml", work / "loop.yaml")
    os.symlink("loop.yaml", work / "loop2.yaml")
    os.symlink("missing-target.yaml", work / "dangling.yaml")
    os.symlink("/dev/zero", work / "zero.yaml")
    os.symlink("/dev/urandom", work / "urandom.yaml")
    os.symlink("/proc/self/status", work / "status.yaml")
    (work / "secret").write_text(f"root:$6${SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    os.symlink("secret", work / "secret.yaml")
    (work / "self.yaml").write_text("extends: self.yaml\nname: loop\n")
    for i in range(12):
        (work / f"chain{i}.yaml").write_text(f"extends: chain{i + 1}.yaml\nname: chain{i}\n")
    (work / "chain12.yaml").write_text("extends: isomura2023_bss.yaml\nname: chain12\n")
    base = BASES[0][1]
    (work / "big.yaml").write_text(base + "#" * (MAX_FILE_BYTES + 1 - len(base)) + "\n")
    (work / "binary.yaml").write_bytes(random.Random(0).randbytes(4096))


# ---- running one case under limits -----------------------------------------------------------------------------

def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextlib.contextmanager
def limits(memory: str) -> Iterator[Callable[[], float]]:
    """Alarm after HANG_S; cap memory growth at BLOWUP_MB (address space, or traced peak). Yields a function
    returning the traced peak in MB (0 when not tracing)."""
    def alarm(signum, frame):  # noqa: ARG001
        raise Overtime(f"no result after {HANG_S} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    base = 0
    if memory == "as":
        cap = _vm_bytes() + (BLOWUP_MB << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    else:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        yield lambda: (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20 if memory != "as" else 0.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if memory == "as":
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def exercise(protocol: ProtocolConfig, work: Path) -> str | None:
    """What `rigctl validate` and a resume do with an accepted protocol; a mismatch description or None."""
    plan = protocol.make_protocol(protocol.seed, 25000.0)
    protocol.describe(plan)
    if plan.n_trials and plan.open_loop:
        plan.trial(0, 0)
        plan.trial(plan.n_trials - 1, 0)
    for session in (1, protocol.sessions):
        plan.session_context(session)
    again = work / "roundtrip.yaml"
    again.write_text(protocol.to_yaml())
    reloaded = load_protocol(again)
    if reloaded.to_dict() != protocol.to_dict():
        return f"reloaded {reloaded.to_dict()} != {protocol.to_dict()}"
    return None


def run_case(case: Case, work: Path, memory: str = "as",
             loader: Callable[[str | Path], ProtocolConfig] = load_protocol) -> Result:
    for name, data in case.files.items():
        (work / name).write_bytes(data)
    target = case.target if case.target.startswith("/") or not case.target else str(work / case.target)
    outcome, detail = "accepted", ""
    start = time.perf_counter()
    peak_mb = 0.0
    try:
        with limits(memory) as peak:
            try:
                problem = exercise(loader(target), work)
                if problem:
                    outcome, detail = "roundtrip", problem
            except ProtocolError as exc:
                detail = str(exc)
                if "\n" in detail or len(detail) >= MAX_ERROR_CHARS:
                    outcome = "bad-error"
                elif SECRET in detail:
                    outcome = "leak"
                else:
                    outcome = "refused"
            except MemoryError:
                outcome, detail = "blow-up", "MemoryError"
            except Overtime as exc:
                outcome, detail = "slow", str(exc)
            except Exception as exc:  # noqa: BLE001  (anything else is the bug being hunted)
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                outcome = "traceback"
                detail = f"{type(exc).__name__}: {str(exc)[:200]} at {Path(frame.filename).name}:{frame.lineno}"
            peak_mb = peak()
    except Overtime as exc:  # the alarm fired in the instant between the result and its cancellation
        outcome, detail = "slow", str(exc)
    finally:
        for name in [*case.files, "roundtrip.yaml"]:
            with contextlib.suppress(FileNotFoundError):
                (work / name).unlink()
    seconds = time.perf_counter() - start
    # a traced peak over the cap outranks slowness: tracing slows the case, so a hog often overruns HANG_S too
    if outcome in (*OUTCOMES[:2], "slow") and peak_mb > BLOWUP_MB:
        outcome, detail = "blow-up", f"traced peak {peak_mb:.0f} MB ({detail[:200]})"
    elif outcome not in BUGS and seconds > SLOW_S:
        outcome, detail = "slow", f"{seconds:.1f} s ({detail[:200]})"
    return Result(outcome, seconds, detail)


def fuzz(cases: int, seed: int = 0, memory: str = "as", progress: bool = False, first: int = 0,
         loader: Callable[[str | Path], ProtocolConfig] = load_protocol) -> Report:
    """Run cases first..first+cases-1 of run `seed` in a fresh work directory; return the counts."""
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="fuzz_protocols_"))
    if memory == "tracemalloc":
        tracemalloc.start()
    start = last = time.perf_counter()
    try:
        make_fixtures(work)
        for index in range(first, first + cases):
            case = make_case(seed, index)
            report.add(case, run_case(case, work, memory, loader))
            now = time.perf_counter()
            if progress and (now - last > 5 or index == first + cases - 1):
                last = now
                done = index - first + 1
                print(f"{done}/{cases} cases, {done / (now - start):.0f}/s, bugs {report.bugs}", file=sys.stderr,
                      flush=True)
    finally:
        report.seconds = time.perf_counter() - start
        if memory == "tracemalloc":
            tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report


def replay(seed: int, index: int, memory: str) -> int:
    case = make_case(seed, index)
    print(f"case {index} of seed {seed}: kind {case.kind}, target {case.target[:200]!r}")
    for name, data in case.files.items():
        text = data[:2000].decode("utf-8", "backslashreplace")
        print(f"--- {name} ({len(data)} bytes)\n{text}{' ...' if len(data) > 2000 else ''}")
    work = Path(tempfile.mkdtemp(prefix="fuzz_protocols_"))
    try:
        make_fixtures(work)
        result = run_case(case, work, memory)
        print(f"=> {result.outcome} in {result.seconds * 1000:.1f} ms: {result.detail}")
        if result.outcome == "traceback":
            for name, data in case.files.items():
                (work / name).write_bytes(data)
            load_protocol(case.target if case.target.startswith("/") else work / case.target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result.outcome in BUGS else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first", type=int, default=0, help="index of the first case (to split a run)")
    ap.add_argument("--memory", choices=["as", "tracemalloc"], default="as",
                    help="blow-up detection: address-space cap per case (fast) or traced peak (about 4x slower)")
    ap.add_argument("--replay", type=int, metavar="N", help="show case N, run it and print its traceback")
    args = ap.parse_args(argv)
    if args.cases < 1:
        ap.error("--cases: allowed: 1 or more")
    if args.replay is not None:
        return replay(args.seed, args.replay, args.memory)
    report = fuzz(args.cases, args.seed, args.memory, progress=True, first=args.first)
    print(report.table())
    return 1 if report.bugs else 0


if __name__ == "__main__":
    sys.exit(main())
