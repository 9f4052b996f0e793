"""Protocol files: validation messages, variants, and the schedule's statistics and determinism."""

import numpy as np
import pytest

from rigctl.cli import main
from rigctl.errors import ProtocolError
from rigctl.protocol import BssSchedule, load_protocol


def test_library_protocols_load_with_spec_constants():
    p = load_protocol("isomura2023_bss")
    assert (p.sessions, p.trials_per_session, p.isi_s, p.rest_s) == (100, 256, 1.0, 244.0)
    assert p.n_stimuli == 32 and len(p.group_a) == 16 and len(p.group_b) == 16
    assert p.mixing == 0.75 and p.response_window_ms == (10.0, 30.0)
    assert load_protocol("isomura2023_bss_mix0").mixing == 1.0
    mix50 = load_protocol("isomura2023_bss_mix50")
    assert mix50.mixing == 0.5 and mix50.group_a == p.group_a  # a variant inherits the rest


@pytest.mark.parametrize("seed", [1, 2])
def test_mixing_statistics_match_the_likelihood_table(seed):
    """P(o_i = 1 | s) for groups A and B (spec §1.2 table) within sampling error over many steps."""
    p = load_protocol("isomura2023_bss").with_overrides(sequence="fresh", sessions=40)
    sched = BssSchedule(p, seed, 25000.0)
    s = np.concatenate([sched.session_sequence(k)[0] for k in range(1, 41)])
    o = np.concatenate([sched.session_sequence(k)[1] for k in range(1, 41)])
    assert abs(s[:, 0].mean() - 0.5) < 0.02 and abs(s[:, 1].mean() - 0.5) < 0.02
    assert abs(np.corrcoef(s[:, 0], s[:, 1])[0, 1]) < 0.04
    expected_a = {(1, 1): 1.0, (1, 0): 0.75, (0, 1): 0.25, (0, 0): 0.0}
    for (s1, s2), pa in expected_a.items():
        m = (s[:, 0] == s1) & (s[:, 1] == s2)
        n = m.sum() * 16
        tol = 4 * np.sqrt(max(pa * (1 - pa), 1e-9) / n) + 1e-9
        assert abs(o[m, :16].mean() - pa) <= tol
        assert abs(o[m, 16:].mean() - (1 - pa if (s1, s2) in [(1, 0), (0, 1)] else pa)) <= tol
    # independence per electrode: given s=(1,0), the count of group-A stimuli is Binomial(16, 3/4)
    m = (s[:, 0] == 1) & (s[:, 1] == 0)
    k = o[m, :16].sum(axis=1)
    assert abs(k.var() - 16 * 0.75 * 0.25) < 0.6


def test_mix0_copies_sources_exactly():
    p = load_protocol("isomura2023_bss_mix0")
    s, o = BssSchedule(p, 3, 25000.0).session_sequence(1)
    assert np.array_equal(o[:, :16], np.repeat(s[:, :1], 16, axis=1))
    assert np.array_equal(o[:, 16:], np.repeat(s[:, 1:], 16, axis=1))


def test_schedule_is_deterministic_per_seed_and_repeats_each_session():
    p = load_protocol("isomura2023_bss")
    a, b, c = (BssSchedule(p, seed, 25000.0) for seed in (5, 5, 6))
    for i in (0, 255, 256, 25599):
        ta, tb = a.trial(i), b.trial(i)
        assert ta.sample == tb.sample and np.array_equal(ta.stimuli, tb.stimuli)
    assert not np.array_equal(a.session_sequence(1)[1], c.session_sequence(1)[1])
    # one sequence repeated in every session (the paper's design)
    assert np.array_equal(a.trial(3).stimuli, a.trial(256 * 7 + 3).stimuli)
    assert a.trial(256).sample - a.trial(255).sample == int((1.0 + 244.0) * 25000)
    fresh = BssSchedule(p.with_overrides(sequence="fresh"), 5, 25000.0)
    assert not np.array_equal(fresh.session_sequence(1)[1], fresh.session_sequence(2)[1])


def test_commands_stimulate_exactly_the_active_channels():
    p = load_protocol("isomura2023_bss")
    sched = BssSchedule(p, 0, 25000.0)
    for i in range(50):
        t = sched.trial(i)
        on = [e for e, o in zip(p.stim_electrodes, t.stimuli) if o]
        if on:
            assert t.command.electrodes == tuple(on) and t.command.sample == t.sample
        else:
            assert t.command is None and tuple(t.sources) == (0, 0)


def _write(tmp_path, body: str):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    return path


BASE = "extends: isomura2023_bss.yaml\nname: bad\n"


@pytest.mark.parametrize("body, needles", [
    (BASE + "mixing: 1.5\n", ["bad.yaml:3", "'mixing'", "1.5", "0 to 1"]),
    (BASE + "sessions: 0\n", ["bad.yaml:3", "'sessions'", "1 to 100000"]),
    (BASE + "raw: sometimes\n", ["bad.yaml:3", "'raw'", "all, trials, none"]),
    (BASE + "mixng: 0.5\n", ["bad.yaml:3", "unknown field 'mixng'", "mixing"]),
    (BASE + "pulse:\n  phase1_us: -5\n", ["bad.yaml:4", "'pulse.phase1_us'", "-5"]),
    (BASE + "stim_groups:\n  A: [0, 2, 2]\n", ["bad.yaml:4", "stim_groups.A", "repeats"]),
    (BASE + "stim_groups:\n  A: [4]\n", ["in both groups"]),
    (BASE + "response_window_ms: [30, 10]\n", ["bad.yaml:3", "response_window_ms", "start_ms < end_ms"]),
    (BASE + "sessions: many\n", ["bad.yaml:3", "'sessions'", "expected int"]),
    ("name: x\nkind: bss\n", ["missing required field 'stim_groups'"]),
    ("name: [unclosed\n", ["bad.yaml:", "not valid YAML"]),
])
def test_bad_protocol_files_name_file_line_field_value_and_allowed(tmp_path, body, needles):
    path = _write(tmp_path, body)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_validate_command_reports_ok_and_errors(tmp_path, capsys):
    assert main(["validate", "isomura2023_bss_mix50"]) == 0
    assert "OK" in capsys.readouterr().out
    path = _write(tmp_path, BASE + "mixing: -1\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:3" in err and "mixing" in err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such protocol" in capsys.readouterr().err


def test_unsafe_pulse_is_rejected_before_any_run(tmp_path, capsys):
    path = _write(tmp_path, BASE + "pulse:\n  phase1_amplitude: -5000\n  phase2_amplitude: 5000\n")
    assert main(["validate", str(path)]) == 2
    assert "exceeds the limit" in capsys.readouterr().err


def test_a_directory_is_not_a_protocol_file(tmp_path):
    with pytest.raises(ProtocolError, match=r"is a directory, not a protocol file$"):
        load_protocol(tmp_path)
    (tmp_path / "protocol.yaml").write_text(load_protocol("isomura2023_bss").to_yaml())
    with pytest.raises(ProtocolError) as err:
        load_protocol(tmp_path)
    assert str(err.value) == (f"{tmp_path}: is a directory, not a protocol file (a run directory? its protocol is "
                              f"{tmp_path / 'protocol.yaml'})")
