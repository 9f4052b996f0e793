"""Safety limits: every command is checked whole in the core; violations send nothing."""

import pytest

from rigctl.drivers.base import Stimulator
from rigctl.errors import DeviceError, SafetyViolation
from rigctl.safety import GuardedStimulator, SafetyConfigError, SafetyLimits, Watchdog
from rigctl.types import BiphasicPulse, StimCommand


class Recorder(Stimulator):
    def __init__(self, fail=False):
        self.sent, self.safe, self.fail = [], 0, fail

    def schedule(self, command):
        if self.fail:
            raise DeviceError("wire broke")
        self.sent.append(command)

    def abort(self):
        pass

    def safe_state(self):
        self.safe += 1


OK = BiphasicPulse.symmetric(10.0, 200.0)


def guard(**limits):
    inner = Recorder()
    return inner, GuardedStimulator(inner, SafetyLimits(**limits), 25000.0)


@pytest.mark.parametrize("command, message", [
    (StimCommand(0, (1,), BiphasicPulse.symmetric(60.0, 100.0)), "exceeds the limit safety.max_amplitude_uA = 50.0 uA"),
    (StimCommand(0, (1,), BiphasicPulse.symmetric(40.0, 400.0)), "charge per phase"),
    (StimCommand(0, (1,), BiphasicPulse(-10.0, 200.0, 10.0, 100.0)), "charge imbalance"),
    (StimCommand(0, (1,), BiphasicPulse(-10.0, 200.0, -10.0, 200.0)), "opposite polarity"),
    (StimCommand(0, (1,), BiphasicPulse.symmetric(10.0, 5.0)), "phase1_us=5.0"),
    (StimCommand(0, (64,), OK), "outside 0..63"),
    (StimCommand(0, (3, 3), OK), "repeats"),
    (StimCommand(0, (), OK), "no electrode"),
    (StimCommand(0, (1,), BiphasicPulse.symmetric(2000.0, 200.0, unit="mV")), "2000.0 mV"),
])
def test_violations_are_rejected_and_nothing_is_sent(command, message):
    inner, g = guard()
    with pytest.raises(SafetyViolation, match=message):
        g.schedule(command)
    assert inner.sent == [] and g.rejected == 1


def test_allowed_electrodes_and_rate_limit_reject_the_whole_command():
    inner, g = guard(allowed_electrodes=frozenset({1, 2}), max_rate_hz=10.0)
    with pytest.raises(SafetyViolation, match=r"\[5\]"):
        g.schedule(StimCommand(0, (1, 5), OK))
    g.schedule(StimCommand(0, (1, 2), OK))
    with pytest.raises(SafetyViolation, match="faster than safety.max_rate_hz = 10.0 Hz"):
        g.schedule(StimCommand(2499, (2,), OK))  # 0.09996 s later: too soon
    g.schedule(StimCommand(2500, (1, 2), OK))  # exactly 0.1 s later: allowed
    assert [c.electrodes for c in inner.sent] == [(1, 2), (1, 2)]


def test_driver_fault_leaves_the_rig_safe():
    inner = Recorder(fail=True)
    g = GuardedStimulator(inner, SafetyLimits(), 25000.0)
    with pytest.raises(DeviceError):
        g.schedule(StimCommand(0, (1,), OK))
    assert inner.safe == 1


def test_watchdog_fires_when_not_kicked_and_not_when_kicked():
    import threading
    fired = threading.Event()
    dog = Watchdog(0.05, fired.set).start()
    assert fired.wait(2.0)
    dog.stop()
    fired2 = threading.Event()
    dog2 = Watchdog(0.5, fired2.set).start()
    for _ in range(5):
        dog2.kick()
        assert not fired2.wait(0.05)
    dog2.stop()
    assert not dog2.fired


def test_guard_forwards_the_clock_and_goes_safe_when_the_driver_fails_there():
    class Clocked(Recorder):
        def __init__(self, fail_at=None):
            super().__init__()
            self.ticks, self.fail_at = [], fail_at

        def on_chunk(self, end_sample):
            if end_sample == self.fail_at:
                raise DeviceError("device stopped answering")
            self.ticks.append(end_sample)

    inner = Clocked(fail_at=300)
    g = GuardedStimulator(inner, SafetyLimits(), 25000.0)
    g.on_chunk(100)
    g.on_chunk(200)
    assert inner.ticks == [100, 200] and inner.safe == 0
    with pytest.raises(DeviceError):
        g.on_chunk(300)
    assert inner.safe == 1


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("pulse", [
    BiphasicPulse(NAN, 200.0, NAN, 200.0),
    BiphasicPulse(-200.0, NAN, 200.0, NAN),
    BiphasicPulse(-10.0, 200.0, 10.0, 200.0, interphase_us=NAN),
    BiphasicPulse(-INF, 200.0, INF, 200.0),
    BiphasicPulse(-10.0, 200.0, 10.0, 200.0, unit="A"),
    BiphasicPulse(0.0, 200.0, 10.0, 200.0),  # monophasic
])
def test_non_finite_or_malformed_pulses_never_pass(pulse):
    inner, g = guard()
    with pytest.raises(SafetyViolation):
        g.schedule(StimCommand(0, (1,), pulse))
    assert inner.sent == []


@pytest.mark.parametrize("field, value", [
    ("max_amplitude_uA", NAN), ("max_charge_per_phase_nC", NAN), ("max_amplitude_mV", INF),
    ("max_rate_hz", NAN), ("max_rate_hz", 0.0), ("max_rate_hz", -1.0), ("charge_balance_tolerance", NAN),
    ("max_phase_us", NAN), ("min_phase_us", -INF), ("n_electrodes", 0),
    # ceilings a rig file cannot exceed
    ("max_amplitude_mV", 9000.0), ("max_amplitude_uA", 200.0), ("max_charge_per_phase_nC", 200.0),
    ("max_rate_hz", 1000.0), ("max_phase_us", 5000.0), ("charge_balance_tolerance", 0.5),
    ("max_electrodes_per_command", 10**6),
])
def test_limits_must_be_finite_and_within_their_hard_range(field, value):
    with pytest.raises(SafetyConfigError, match=f"safety.{field}"):
        SafetyLimits(**{field: value})
    with pytest.raises(SafetyConfigError, match=f"safety.{field}"):
        SafetyLimits.from_dict({field: value})


@pytest.mark.parametrize("values, message", [
    ({"max_amplitude_uA": "20"}, "a number"), ({"max_rate_hz": True}, "a number"),
    ({"allowed_electrodes": [1, "x"]}, "allowed_electrodes"), ({"allowed_electrodes": [70]}, "0..63"),
    ({"min_phase_us": 500.0, "max_phase_us": 100.0}, "min_phase_us <= max_phase_us"),
    ({"bogus": 1}, "unknown safety limit"),
])
def test_bad_limit_types_are_refused(values, message):
    with pytest.raises(SafetyConfigError, match=message):
        SafetyLimits.from_dict(values)


def test_the_nan_rig_of_the_report_cannot_deliver_its_200_nC_pulse():
    """The reproduced case: a rig with NaN limits let a 200 uA x 1,000 us pulse through."""
    with pytest.raises(SafetyConfigError):
        SafetyLimits.from_dict({"max_amplitude_uA": NAN, "max_charge_per_phase_nC": NAN})
    inner, g = guard(max_amplitude_uA=100.0, max_charge_per_phase_nC=10.0)
    with pytest.raises(SafetyViolation, match="charge per phase 20.000 nC"):
        g.schedule(StimCommand(0, (1,), BiphasicPulse.symmetric(20.0, 1000.0)))
    assert inner.sent == []


def test_the_whole_plan_is_checked_before_the_first_pulse():
    """A plan that breaks the rate limit later must be refused before anything is sent."""
    inner, g = guard(max_rate_hz=10.0)
    plan = [StimCommand(0, (1,), OK), StimCommand(5000, (1,), OK), StimCommand(6000, (1,), OK)]
    with pytest.raises(SafetyViolation, match=r"command 3 of the plan \(sample 6000\).*faster"):
        g.check_plan(plan)
    assert inner.sent == [] and g.rates.last_sample == {}
    assert g.check_plan(plan[:2]) == 2


def test_the_plan_check_asks_the_device_what_it_can_deliver():
    class CurrentOnly(Recorder):
        def check_deliverable(self, command):
            if command.pulse.unit != "uA":
                raise DeviceError("this stimulator delivers current (uA) pulses only")

    inner = CurrentOnly()
    g = GuardedStimulator(inner, SafetyLimits(), 25000.0)
    with pytest.raises(SafetyViolation, match="current"):
        g.check_plan([StimCommand(0, (1,), BiphasicPulse.symmetric(500.0, 200.0, unit="mV"))])
    assert inner.sent == []
