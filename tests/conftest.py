import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


@pytest.fixture
def small_protocol(tmp_path):
    """A short BSS protocol: 3 sessions x 20 trials, 0.2 s apart, 1 s rests."""
    path = tmp_path / "small.yaml"
    path.write_text(
        "extends: isomura2023_bss.yaml\n"
        "name: small_bss\n"
        "sessions: 3\n"
        "trials_per_session: 20\n"
        "isi_s: 0.2\n"
        "rest_s: 1.0\n"
        "first_trial_s: 0.5\n"
        "checkpoint_every_trials: 7\n"
        "response_window_ms: [10, 30]\n"
        "spike_window_ms: [-20, 60]\n"
        "raw_window_ms: [-5, 35]\n"
    )
    return path


@pytest.fixture(scope="session")
def bss_voltage_run(tmp_path_factory):
    """One 2-session BSS run on the simulated voltage rig (16 trials a session; raw kept around trials),
    shared by the interop tests: NWB export, SpikeInterface views."""
    from runcli import rigctl

    out = tmp_path_factory.mktemp("interop") / "bss2"
    rigctl("run", "isomura2023_bss", "--rig", "sim", "--sessions", "2", "--set", "trials_per_session=16",
           "--out", str(out))
    return out
