"""CI-sized run of the kill -9 soak (bench/soak_kill.py, issue 11): three real-CLI runs SIGKILLed once
each (two on the events rig at 1 ms and 5000 ms chunks, one on the voltage rig), resumed, and compared
byte for byte with their uninterrupted references."""

import importlib.util
import sys
from pathlib import Path

SOAK_PATH = Path(__file__).resolve().parents[1] / "bench" / "soak_kill.py"


def _load_soak():
    spec = importlib.util.spec_from_file_location("soak_kill", SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak_kill"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_soak_kill_three_kills(tmp_path):
    soak = _load_soak()
    Kill, Config = soak.Kill, soak.Config
    configs = [
        Config("sim-events", 1.0, [Kill("time", 0.5)]),                      # at a wall-clock time
        Config("sim-events", 5000.0, [Kill("trials", 0.5)], report=True),  # the resume writes the report
        Config("sim", 5000.0, [Kill("trials", 0.3)]),                    # voltage rig, several trials a chunk
    ]
    summary = soak.soak(kills=3, seed=0, workdir=tmp_path / "soak", configs=configs)
    table = soak.format_table(summary)
    outcomes = [r.outcome for r in summary["results"]]
    assert outcomes == ["identical"] * 3, table
    assert len(summary["kills"]) == 3, table
    assert not (tmp_path / "soak").exists()  # removed when everything passed and --keep is not given
