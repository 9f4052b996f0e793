"""Hostile protocol files (issue 11, items 1, 8 and 9): each is refused with one short error line, within
seconds and a bounded amount of memory; never a traceback, a hang, a memory blow-up or an echo of a file
that is not the user's YAML.

Every case runs under `bounded()`: an interval timer turns a hang into a test failure and an address-space
limit turns a runaway read into MemoryError, so these tests fail fast (not the machine) on broken code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from rigctl.errors import ProtocolError
from rigctl.protocol import BssSchedule, draw_sequence, load_protocol

SECONDS = 5.0
MEMORY_MB = 200
BASE = "extends: isomura2023_bss.yaml\nname: hostile\n"


class Overtime(BaseException):
    """Raised by the interval timer inside the code under test (BaseException: no `except Exception` eats it)."""


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def bounded(seconds: float = SECONDS, memory_mb: int = MEMORY_MB) -> Iterator[None]:
    """Fail when the body runs longer than `seconds` or its traced allocations peak above `memory_mb`."""
    def alarm(signum, frame):  # noqa: ARG001
        raise Overtime(f"took longer than {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = _vm_bytes()
    if vm:
        cap = vm + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        peak = tracemalloc.get_traced_memory()[1] - base
        if started_tracing:
            tracemalloc.stop()
    assert peak < memory_mb << 20, f"allocated {peak / 2**20:.0f} MB"


def refused(target: str | Path, *needles: str, absent: tuple[str, ...] = ()) -> str:
    """Load `target` under limits; it must raise one short ProtocolError line containing every needle."""
    with bounded():
        with pytest.raises(ProtocolError) as err:
            load_protocol(target)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 1000, msg[:2000]
    for needle in needles:
        assert needle in msg, (needle, msg)
    for secret in absent:
        assert secret not in msg, (secret, msg)
    return msg


def write(tmp_path: Path, body: str | bytes, name: str = "hostile.yaml") -> Path:
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return path


# ---- item 1: every number finite and in range ---------------------------------------------------------------

NAN_FIELDS = ["pulse.phase1_amplitude", "pulse.phase1_us", "pulse.phase2_amplitude", "pulse.phase2_us",
              "pulse.interphase_us", "isi_s", "rest_s", "first_trial_s", "source_p_on", "mixing"]


def _set(field: str, text: str) -> str:
    if field.startswith("pulse."):
        return BASE + f"pulse:\n  {field.split('.', 1)[1]}: {text}\n"
    return BASE + f"{field}: {text}\n"


@pytest.mark.parametrize("field", NAN_FIELDS)
def test_nan_is_refused_in_every_float_field(tmp_path, field):
    refused(write(tmp_path, _set(field, ".nan")), f"field '{field}'", "nan", "allowed:")


@pytest.mark.parametrize("field", ["isi_s", "mixing", "pulse.phase1_amplitude", "pulse.interphase_us"])
def test_huge_integer_in_a_float_field_is_one_line(tmp_path, field):
    refused(write(tmp_path, _set(field, "1" + "0" * 400)), f"field '{field}'", "allowed:", "…")


@pytest.mark.parametrize("field", ["raw_window_ms", "spike_window_ms"])
def test_huge_integer_window_is_one_line(tmp_path, field):
    start, end = "1" + "0" * 400, "1" + "0" * 399 + "1"  # 1 ms long: only float() of it overflows
    refused(write(tmp_path, BASE + f"{field}: [{start}, {end}]\n"), f"field '{field}'", "allowed:")


@pytest.mark.parametrize("field", ["raw_window_ms", "spike_window_ms"])
def test_a_window_far_from_its_trial_is_refused(tmp_path, field):
    # 1 ms long, but 1e15 ms after the pulse: the run would wait forever for the window to close
    refused(write(tmp_path, BASE + f"{field}: [1.0e+15, 1.000000000000001e+15]\n"), f"field '{field}'",
            "-10000", "10000")


# ---- item 8: the name is an identifier (it names the run directory) -----------------------------------------

@pytest.mark.parametrize("name", ['"../../x"', "/tmp/abs", '"a/b"', '".."', '"a..b"', '"x\\n"', '"-x"', '"1x"',
                                  '""', '"a b"', "x" * 65, '"x\\0y"', '"ünï"'],
                         ids=lambda name: name if len(name) < 20 else f"{len(name)} characters")
def test_protocol_name_must_be_an_identifier(tmp_path, name):
    refused(write(tmp_path, f"extends: isomura2023_bss.yaml\nname: {name}\n"), "field 'name'",
            "^[A-Za-z][A-Za-z0-9_.-]{0,63}$", "'..'")


def test_identifier_names_are_accepted(tmp_path):
    for name in ("a", "A.b-c_d", "x" * 64, "isomura2023_bss_mix0"):
        assert load_protocol(write(tmp_path, f"extends: isomura2023_bss.yaml\nname: {name}\n")).name == name


# ---- item 9: malformed and hostile files -----------------------------------------------------------------------

def test_invalid_utf8_is_one_line(tmp_path):
    refused(write(tmp_path, BASE.encode() + b"description: caf\xc3\x28 \xff\xfe\n"), "hostile.yaml: not a text file",
            "invalid UTF-8 at line 3, column 17")


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_nesting_of_a_thousand_levels_is_one_line(tmp_path, opening, closing):
    refused(write(tmp_path, BASE + "description: " + opening * 1000 + closing * 1000 + "\n"),
            "hostile.yaml:3:", "nested deeper than")


def test_non_string_keys_in_stim_groups(tmp_path):
    refused(write(tmp_path, BASE + "stim_groups:\n  1: [3]\n"), "stim_groups", "1", "allowed: exactly A and B")
    refused(write(tmp_path, BASE + "stim_groups:\n  ~: [3]\n"), "stim_groups", "allowed: exactly A and B")


def test_extends_naming_a_directory(tmp_path):
    (tmp_path / "sub.yaml").mkdir()
    refused(write(tmp_path, "extends: sub.yaml\nname: x\n"), "sub.yaml", "is a directory")
    refused(write(tmp_path, "extends: .\nname: x\n"), "field 'extends'", ".yaml")


def test_extends_with_a_too_long_name(tmp_path):
    msg = refused(write(tmp_path, "extends: " + "a" * 5000 + ".yaml\nname: x\n"), "field 'extends'",
                  "255 characters")
    assert len(msg) < 400


BILLION_LAUGHS = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
                  + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
                            for i in range(8)))


def test_sequence_alias_bomb_is_refused_while_composing(tmp_path):
    """9 levels of 9 aliases in a field whose wrong type gets echoed: the old loader printed a 787 MB line."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    body = BASE + "description: [" + ", ".join(levels) + "]\n"
    assert len(body) < 3000
    refused(write(tmp_path, body), "hostile.yaml:3:", "alias")


def test_mapping_alias_bomb_with_merge_keys_is_refused(tmp_path):
    lines = ["m0: &m0 {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1}"]
    for i in range(1, 12):
        keys = ", ".join(f"x{j}: *m{i - 1}" for j in range(4))
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], {keys}}}")
    refused(write(tmp_path, BASE + "\n".join(lines) + "\n"), "hostile.yaml:", "alias")


def test_recursive_alias_is_refused(tmp_path):
    refused(write(tmp_path, BASE + "pulse: &p\n  unit: mV\n  self: *p\n"), "hostile.yaml:", "recursive")


def test_extends_dev_zero_and_dev_zero_itself(tmp_path):
    refused(write(tmp_path, "extends: /dev/zero\nname: x\n"), "field 'extends'", ".yaml")
    os.symlink("/dev/zero", tmp_path / "zero.yaml")
    refused(write(tmp_path, "extends: zero.yaml\nname: x\n"), "zero.yaml")
    refused("/dev/zero", "/dev/zero", "character device")


def test_extends_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")
    refused(write(tmp_path, "extends: pipe.yaml\nname: x\n"), "pipe.yaml", "FIFO")
    refused(tmp_path / "pipe.yaml", "pipe.yaml", "FIFO")


def test_rig_files_share_the_hardened_reader(tmp_path):
    from rigctl.rigfile import RigFileError
    from rigctl.yamlcheck import load_located

    os.mkfifo(tmp_path / "rig.yaml")
    with bounded():
        with pytest.raises(RigFileError, match="FIFO"):
            load_located(tmp_path / "rig.yaml", error=RigFileError)
    with bounded():
        with pytest.raises(RigFileError, match="alias"):
            load_located(write(tmp_path, BILLION_LAUGHS, "bomb.yaml"), error=RigFileError)


SECRET = "S3CRETHASH"


def test_a_file_that_is_not_yaml_is_not_echoed(tmp_path):
    """/etc/shadow parses as a mapping keyed by its lines: the old loader printed the first as a field name."""
    write(tmp_path, f"root:$6${SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n", "shadow")
    refused(write(tmp_path, "extends: shadow\nname: x\n"), "field 'extends'", absent=(SECRET,))
    os.symlink(tmp_path / "shadow", tmp_path / "shadow.yaml")
    refused(write(tmp_path, "extends: shadow.yaml\nname: x\n"), "field 'extends'", absent=(SECRET,))
    refused(tmp_path / "shadow", "shadow:1: unknown field", "not shown", absent=(SECRET,))


@pytest.mark.parametrize("line", [f"token: *{SECRET}", f"token: !{SECRET} x"])
def test_yaml_errors_quote_positions_not_content(tmp_path, line):
    refused(write(tmp_path, BASE + line + "\n"), "hostile.yaml:3:", absent=(SECRET,))


def test_too_many_trials_are_refused_before_any_allocation(tmp_path):
    refused(write(tmp_path, BASE + "sessions: 100000\ntrials_per_session: 1000000\n"), "'trials_per_session'",
            "10000000")
    groups = f"stim_groups:\n  A: {list(range(0, 2048))}\n  B: {list(range(2048, 4096))}\n"
    refused(write(tmp_path, BASE + "sessions: 1\ntrials_per_session: 1000000\n" + groups), "'trials_per_session'",
            "4194304")


def test_schedule_refuses_oversized_overrides_without_allocating():
    p = load_protocol("isomura2023_bss").with_overrides(sessions=1, trials_per_session=1_000_000,
                                                        group_a=tuple(range(2048)), group_b=tuple(range(2048, 4096)))
    with bounded():
        with pytest.raises(ProtocolError, match="4194304"):
            BssSchedule(p, 0, 25000.0)
    with bounded():
        with pytest.raises(ProtocolError, match="4194304"):
            draw_sequence(p, np.random.default_rng(0), 1_000_000)


def test_fresh_sequences_are_not_all_kept_in_memory():
    p = load_protocol("isomura2023_bss").with_overrides(sequence="fresh", trials_per_session=100_000)
    sched = BssSchedule(p, 0, 25000.0)
    first = sched.session_sequence(1)[1].copy()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(2, 32):
            sched.session_sequence(k)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 30 << 20, f"{kept / 2**20:.0f} MB kept for 30 sessions of 3.3 MB"
    assert np.array_equal(sched.session_sequence(1)[1], first)  # recomputed after eviction: identical


def test_schedule_outputs_are_unchanged_by_the_hardening():
    """The schedule of the shipped protocols, hashed on the code before the bounds were added."""
    h = hashlib.sha256()
    for name in ("isomura2023_bss", "isomura2023_bss_mix50"):
        p = load_protocol(name)
        for seq in ("repeat", "fresh"):
            sched = BssSchedule(p.with_overrides(sequence=seq), 7, 25000.0)
            for k in (1, 2, 3, 100, 2):
                s, o = sched.session_sequence(k)
                h.update(s.tobytes())
                h.update(o.tobytes())
            for i in (0, 1, 255, 256, 25599):
                t = sched.trial(i)
                h.update(np.int64(t.sample).tobytes())
                h.update(t.stimuli.tobytes())
                h.update(t.sources.tobytes())
    assert h.hexdigest() == "9466c7a902bbe77d15272c97e3b2eb9404fd5c50ba60244f516b8950502235e6"


def test_long_values_and_keys_are_truncated_in_errors(tmp_path):
    msg = refused(write(tmp_path, BASE + 'sessions: "' + "x" * 5000 + '"\n'), "field 'sessions'", "…")
    assert len(msg) < 300
    msg = refused(write(tmp_path, BASE + "y" * 1000 + ": 1\n"), "hostile.yaml:3: unknown field",
                  "1000-character name")
    assert len(msg) < 500 and "yyy" not in msg


def test_oversized_file_is_refused_unread(tmp_path):
    body = BASE + ("# padding\n" * 30_000)
    refused(write(tmp_path, body), "hostile.yaml", "256 KiB")


@pytest.mark.parametrize("line", ["seed: 1" + "0" * 5000, "seed: 1" + ":1" * 60_000, "seed: !!int ''",
                                  "isi_s: !!float abc", "description: 2020-13-45", "seed: !!int 0x"],
                         ids=["5000 digits", "60000 sexagesimal parts", "empty int", "float abc", "month 13",
                              "hex without digits"])
def test_numbers_and_tags_that_python_cannot_convert_are_one_line(tmp_path, line):
    refused(write(tmp_path, BASE + line + "\n"), "hostile.yaml:3:")


def test_extends_cycle_is_named(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    refused(tmp_path / "a.yaml", "field 'extends'", "cycle", "a.yaml -> b.yaml -> a.yaml")


def test_extends_symlink_loop_says_so(tmp_path):
    os.symlink(tmp_path / "loop2.yaml", tmp_path / "loop.yaml")
    os.symlink(tmp_path / "loop.yaml", tmp_path / "loop2.yaml")
    refused(write(tmp_path, "extends: loop.yaml\nname: x\n"), "loop.yaml", "symbolic links")


def test_pure_python_parser_is_bounded_too(tmp_path, monkeypatch):
    """Without libyaml the same limits hold (the loader falls back to PyYAML's pure-Python parser)."""
    from rigctl import yamlcheck

    monkeypatch.setattr(yamlcheck, "_LOADER", yamlcheck._PyLoader)
    refused(write(tmp_path, BASE + BILLION_LAUGHS), "alias")
    refused(write(tmp_path, BASE + "description: " + "[" * 1000 + "]" * 1000 + "\n"), "nested deeper than")
    refused(write(tmp_path, BASE + "mixing: .nan\n"), "'mixing'")
    assert load_protocol("isomura2023_bss_mix50").mixing == 0.5
