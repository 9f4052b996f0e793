"""The device-reply fuzzer (bench/fuzz_devices.py) at a CI-affordable size: hostile replies to every driver
end in ok or a DeviceError only — no traceback, hang, memory blow-up or stimulator left armed. Also checks
that the classifier has teeth: a driver whose safe state does nothing is caught as unsafe."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from rigctl.drivers.intan_rhx import IntanRHX
from rigctl.drivers.pulsepal import PulsePal

_PATH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_devices.py"
_spec = importlib.util.spec_from_file_location("fuzz_devices", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_devices"] = fuzz
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("target, cases, loopback_every", [("rhx", 180, 60), ("openephys", 300, 100),
                                                           ("pulsepal", 250, 0)])
def test_hostile_replies_give_only_ok_or_device_errors(target, cases, loopback_every):
    results = fuzz.fuzz([target], cases, seed=0, timeout_s=0.05, loopback_every=loopback_every, progress=False)
    tally = results[target]
    assert {o: tally.counts[o] for o in fuzz.BAD} == {o: 0 for o in fuzz.BAD}, fuzz.table(results, cases)
    assert tally.counts["ok"] > 0 and tally.counts["device_error"] > 0  # the scripts reach both ends


@pytest.mark.parametrize("target, cls", [("rhx", IntanRHX), ("pulsepal", PulsePal)])
def test_a_safe_state_that_does_nothing_is_caught_as_unsafe(monkeypatch, target, cls):
    monkeypatch.setattr(cls, "safe_state", lambda self: None)
    results = fuzz.fuzz([target], 40, seed=0, timeout_s=0.05, loopback_every=0, progress=False)
    assert results[target].counts["unsafe"] > 0, fuzz.table(results, 40)


def test_the_classifier_reports_tracebacks_and_hangs():
    class Raises(fuzz.Case):
        def run(self):
            raise ValueError("a reply value leaked into arithmetic")

    class NeverReturns(fuzz.Case):
        max_calls = 1

        def __init__(self, rng, timeout_s):
            super().__init__(rng, timeout_s)
            import threading

            self.stop = threading.Event()

        def run(self):
            self.stop.wait(30.0)
            return fuzz.Result("ok")

        def abandon(self):
            self.stop.set()

    class Slow(fuzz.Case):
        def run(self):
            self.call(time.sleep, self.call_limit + 0.05)  # a driver call past its limit
            return self.finish("ok", "", "")

    rng = fuzz.random.Random(0)
    assert fuzz.run_case(Raises(rng, 0.05), 128, False).outcome == "traceback"
    assert fuzz.run_case(NeverReturns(rng, 0.05), 128, False).outcome == "hang"
    assert fuzz.run_case(Slow(rng, 0.05), 128, False).outcome == "hang"
