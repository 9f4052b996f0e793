"""Safety limits: every command is checked whole in the core; violations send nothing."""

import pytest

from rigctl.drivers.base import Stimulator
from rigctl.errors import DeviceError, SafetyViolation
from rigctl.safety import GuardedStimulator, SafetyLimits, Watchdog
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
    (StimCommand(0, (1,), BiphasicPulse.symmetric(60.0, 100.0)), "exceeds the limit 50.0 uA"),
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
    with pytest.raises(SafetyViolation, match="faster than 10.0 Hz"):
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
