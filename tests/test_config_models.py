"""The declared configuration models (issue 12, item 6), checked directly: every kind of file refuses what
it always refused, as one located line, and the safety model cannot be made wider than HARD_RANGES."""

from __future__ import annotations

import math

import pytest

from rigctl.config import allowed_text
from rigctl.errors import ProtocolError, RigctlError, SignalConfigError
from rigctl.protocol import parse_file
from rigctl.protocol_schema import BssFile
from rigctl.protocols.electrode_scan import ElectrodeScanFile
from rigctl.protocols.python_class import PythonFile
from rigctl.protocols.spontaneous import SpontaneousFile
from rigctl.rigfile import RigFileError, parse_rig
from rigctl.safety import HARD_RANGES, INTEGER_LIMITS, SafetyConfigError, SafetyLimits
from rigctl.signal import SignalConfig
from rigctl.yamlcheck import load_located

PULSE = "pulse: {phase1_amplitude: -10, phase1_us: 200, phase2_amplitude: 10, phase2_us: 200}\n"
# each kind's smallest valid file, and a float field of it written on the last line
KINDS = {
    "bss": (BssFile, "name: t\nstim_groups: {A: [0], B: [1]}\n" + PULSE, "mixing"),
    "electrode_scan": (ElectrodeScanFile, "name: t\nkind: electrode_scan\nelectrodes: [0, 1]\n" + PULSE, "isi_s"),
    "spontaneous": (SpontaneousFile, "name: t\nkind: spontaneous\n", "duration_s"),
    "python": (PythonFile, "name: t\nkind: python\nclass: x.py:X\n", "trial_spacing_s"),
}


def doc_of(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_located(path)


def refused(tmp_path, model, text: str) -> str:
    doc = doc_of(tmp_path, text)
    with pytest.raises(ProtocolError) as info:
        parse_file(model, doc)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000
    return message


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_accepts_its_smallest_file_and_an_int_for_a_float(tmp_path, kind):
    model, text, field = KINDS[kind]
    top = parse_file(model, doc_of(tmp_path, text + f"{field}: 1\n"))
    assert getattr(top, field) == 1.0 and type(getattr(top, field)) is float


@pytest.mark.parametrize("written, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("true", "True"),
                                            ("'0.5'", "'0.5'"), ("[1]", "[1]")])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_refuses_nan_inf_bool_and_strings_in_a_float_field(tmp_path, kind, written, shown):
    model, text, field = KINDS[kind]
    line = text.count("\n") + 1
    message = refused(tmp_path, model, text + f"{field}: {written}\n")
    assert message.startswith(f"{tmp_path / 'p.yaml'}:{line}: field '{field}' has value {shown}; "), message
    if written in (".nan", ".inf", "-.inf"):
        assert message.endswith(" (finite)") and "allowed: " in message
    else:
        assert "expected float" in message


def test_the_nested_pulse_is_refused_at_its_own_line(tmp_path):
    model, text, _ = KINDS["bss"]
    body = text.replace(PULSE, "pulse:\n  phase1_amplitude: -10\n  phase1_us: .nan\n  phase2_amplitude: 10\n"
                               "  phase2_us: 200\n")
    message = refused(tmp_path, model, body)
    assert message == f"{tmp_path / 'p.yaml'}:5: field 'pulse.phase1_us' has value nan; allowed: 1 to 100000 (finite)"


def test_an_int_beyond_float_range_is_an_error_line(tmp_path):
    model, text, _ = KINDS["bss"]
    message = refused(tmp_path, model, text + f"isi_s: {10 ** 400}\n")
    assert "field 'isi_s' has value " in message and message.endswith("; allowed: 0.02 to 3600")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_fields_are_refused_naming_the_allowed_ones(tmp_path, kind):
    model, text, field = KINDS[kind]
    message = refused(tmp_path, model, text + "mixng: 0.5\n")
    assert "unknown field 'mixng'; allowed fields: " in message and field in message


def test_a_key_that_is_no_name_is_never_echoed(tmp_path):
    model, text, _ = KINDS["spontaneous"]
    secret = "root:$6$S3CRET:19000"
    message = refused(tmp_path, model, text + f"'{secret}': 1\n")
    assert "S3CRET" not in message and "not an identifier, not shown" in message and ":3: unknown field" in message


def test_a_missing_required_field_is_named(tmp_path):
    message = refused(tmp_path, BssFile, "name: t\n" + PULSE)
    assert "missing required field 'stim_groups' (mapping A: [electrodes], B: [electrodes])" in message


def test_the_allowed_text_comes_from_the_declared_constraints():
    assert allowed_text(BssFile.model_fields["isi_s"]) == "0.02 to 3600"
    assert allowed_text(BssFile.model_fields["raw"]) == "all, trials, none"
    assert allowed_text(SpontaneousFile.model_fields["duration_s"]) == "1.0 to 604800.0"


# ---- safety limits -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HARD_RANGES))
def test_no_limit_can_exceed_its_hard_range(name):
    hard = HARD_RANGES[name]
    integer = name in INTEGER_LIMITS
    ceiling = int(hard.high) if integer else hard.high
    assert getattr(SafetyLimits(**{name: ceiling, **({"min_phase_us": 1.0} if name == "max_phase_us" else {})}),
                   name) == ceiling
    above = ceiling + 1 if integer else math.nextafter(hard.high, math.inf)
    below = int(hard.low) - 1 if integer else (hard.low if not hard.low_inclusive else
                                                  math.nextafter(hard.low, -math.inf))
    for value in (above, below):
        with pytest.raises(SafetyConfigError) as info:
            SafetyLimits(**{name: value})
        assert str(info.value).startswith(f"safety.{name}=")
        assert hard.describe() in str(info.value) and hard.source in str(info.value)


@pytest.mark.parametrize("name", sorted(set(HARD_RANGES) - set(INTEGER_LIMITS)))
def test_float_limits_refuse_nan_inf_bool_and_strings(name):
    for value in (math.nan, math.inf, -math.inf, True, "1"):
        with pytest.raises(SafetyConfigError, match=f"^safety.{name}="):
            SafetyLimits.from_dict({name: value})


def test_limits_are_validated_once_and_frozen():
    limits = SafetyLimits(max_rate_hz=20)
    assert limits.max_rate_hz == 20.0 and type(limits.max_rate_hz) is float
    with pytest.raises(Exception):
        limits.max_rate_hz = 500.0  # type: ignore[misc]
    assert limits.max_rate_hz == 20.0


# ---- rig files ---------------------------------------------------------------------------------------------

def _write(tmp_path, text: str):
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return path


def rig_refused(tmp_path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(RigFileError) as info:
        parse_rig(load_located(path, error=RigFileError))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_an_unknown_driver_is_refused_with_the_allowed_list(tmp_path):
    message = rig_refused(tmp_path, "amplifier: {driver: maxwell}\nstimulator: {driver: none}\n")
    assert message == f"{tmp_path / 'rig.yaml'}:1: amplifier.driver='maxwell'; allowed: maxlab, openephys, playback, rhx, sim"
    message = rig_refused(tmp_path, "amplifier: {driver: sim}\nstimulator: {driver: stg}\n")
    assert message.endswith(":2: stimulator.driver='stg'; allowed: maxlab, none, pulsepal, rhx")


def test_each_driver_has_its_own_fields(tmp_path):
    message = rig_refused(tmp_path, "amplifier: {driver: sim, host: emulate}\nstimulator: {driver: none}\n")
    assert "unknown field amplifier.host; allowed: driver, mode, sample_rate_hz" in message
    rig = parse_rig(load_located(_write(tmp_path, "amplifier: {driver: rhx, host: emulate, channels: "
                                                  "'A-000..A-001'}\nstimulator: {driver: rhx}\n"), RigFileError))
    assert rig.amplifier.channels == ("A-000", "A-001") and rig.amplifier.timeout_s == 1.0


@pytest.mark.parametrize("value", [".nan", ".inf", "true", "'1'"])
def test_rig_float_fields_refuse_what_is_no_finite_number(tmp_path, value):
    message = rig_refused(tmp_path, "amplifier: {driver: sim}\nstimulator:\n  driver: pulsepal\n  port: emulate\n"
                                    f"  outputs: {{1: [0]}}\n  timeout_s: {value}\n")
    assert ":6: stimulator.timeout_s=" in message and "seconds > 0 and <= 60" in message


# ---- the signal path ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, needle", [
    ({"threshold_sd": 0}, "signal.threshold_sd=0; allowed: > 0"),
    ({"threshold_sd": math.nan}, "signal.threshold_sd=nan; allowed: a finite number > 0"),
    ({"filter_order": True}, "signal.filter_order=True; allowed: an integer"),
    ({"saturation_fraction": 1.5}, "signal.saturation_fraction=1.5; allowed: > 0 and <= 1"),
    ({"blank_pre_ms": 1.0}, "signal.blank_pre_ms=1.0; allowed: at most mf_post_ms"),
    ({"thresold_sd": 4.0}, "unknown signal parameter thresold_sd"),
])
def test_signal_config_refuses_out_of_range_values_as_a_rigctl_error(fields, needle):
    with pytest.raises(SignalConfigError) as info:
        SignalConfig(**fields)
    assert isinstance(info.value, RigctlError) and needle in str(info.value)


def test_signal_config_takes_ints_as_floats_and_dumps_as_before():
    config = SignalConfig(threshold_sd=4)
    assert config.threshold_sd == 4.0 and type(config.threshold_sd) is float
    assert list(config.to_dict())[:3] == ["low_hz", "high_hz", "filter_order"]
