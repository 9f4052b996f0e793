"""The protocol fuzzer (bench/fuzz_protocols.py) at CI size: a few hundred seeded mutants of the shipped
protocols give no traceback, no slow case and no memory blow-up; and the fuzzer itself notices each kind
of bug, so a quiet run means something."""

from __future__ import annotations

import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from rigctl.errors import ProtocolError
from rigctl.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_protocols", ROOT / "bench" / "fuzz_protocols.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_protocols"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


fz = _load_fuzzer()


def test_ci_sized_fuzz_finds_no_bug():
    report = fz.fuzz(cases=1000, seed=0)
    assert report.bugs == 0, report.table()
    assert report.counts["traceback"] == report.counts["slow"] == report.counts["blow-up"] == 0
    # the run exercised both paths and every mutator
    assert report.counts["accepted"] >= 20 and report.counts["refused"] >= 200, report.table()
    assert set(report.by_kind) == {kind for kind, _, _ in fz.MUTATORS}, report.table()


def test_cases_are_a_pure_function_of_seed_and_index():
    a, b, c = fz.make_case(7, 123), fz.make_case(7, 123), fz.make_case(8, 123)
    assert (a.kind, a.files, a.target) == (b.kind, b.files, b.target)
    assert (a.kind, a.files, a.target) != (c.kind, c.files, c.target)


def _raise(exc: BaseException):
    raise exc


def _spin(_path):
    while True:
        pass


def _hog(_path):
    hog = bytearray(300 << 20)
    return load_protocol("isomura2023_bss") if hog else None


def _slow(_path):
    time.sleep(0.3)
    return load_protocol("isomura2023_bss")


@pytest.mark.parametrize("loader, outcome", [
    (lambda p: load_protocol("isomura2023_bss"), "accepted"),
    (lambda p: load_protocol(p), "refused"),
    (lambda p: _raise(KeyError("missing")), "traceback"),
    (lambda p: _raise(RecursionError("deep")), "traceback"),
    (lambda p: _raise(ProtocolError("x" * 1000)), "bad-error"),
    (lambda p: _raise(ProtocolError("two\nlines")), "bad-error"),
    (lambda p: _raise(ProtocolError(f"f:1: unknown field '{fz.SECRET}'")), "leak"),
    (_slow, "slow"),
    (_spin, "slow"),
    (_hog, "blow-up"),
])
@pytest.mark.parametrize("memory", ["as", "tracemalloc"])
def test_fuzzer_classifies_each_outcome(tmp_path, monkeypatch, loader, outcome, memory):
    monkeypatch.setattr(fz, "SLOW_S", 0.2)
    monkeypatch.setattr(fz, "HANG_S", 0.5)
    case = fz.Case(0, "t", {fz.CASE: b"name: x\n"}, fz.CASE)
    if memory == "tracemalloc":
        tracemalloc.start()
    try:
        result = fz.run_case(case, tmp_path, memory, loader)
    finally:
        if memory == "tracemalloc":
            tracemalloc.stop()
    assert result.outcome == outcome, result
    assert not (tmp_path / fz.CASE).exists()  # the case's files are removed


def test_report_table_counts_by_kind_and_outcome():
    report = fz.Report()
    report.add(fz.Case(1, "alias", {}, ""), fz.Result("refused", 0.01, "x"))
    report.add(fz.Case(2, "alias", {}, ""), fz.Result("traceback", 0.02, "KeyError"))
    report.add(fz.Case(3, "bytes", {}, ""), fz.Result("accepted", 0.03, ""))
    table = report.table()
    assert report.bugs == 1 and "case 2 (alias): KeyError" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:4]}
    assert rows["alias"][:3] == ["0", "1", "1"] and rows["total"][-1] == "3"
