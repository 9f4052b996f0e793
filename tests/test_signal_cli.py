"""`rigctl detect` and `rigctl bench throughput`: the CLI runs the same signal path and prints what it says."""

from __future__ import annotations

import json

import numpy as np

from rigctl.cli import build_parser, main
from rigctl.signal import SignalPath
from rigctl.sim.synthetic import GroundTruthConfig, generate, score
from rigctl.types import Chunk, SpikeEvents


def _truth():
    return generate(GroundTruthConfig(n_channels=4, duration_s=2.0, snr_values=(10.0,), pulse_rate_hz=4.0, seed=9))


def test_detect_writes_the_signal_paths_spikes(tmp_path):
    truth = _truth()
    raw = tmp_path / "rec.raw"
    truth.samples.tofile(raw)
    pulses = tmp_path / "pulses.csv"
    pulses.write_text("sample,duration_us\n" + "".join(f"{p},400\n" for p in truth.pulse_sample))
    out = tmp_path / "spikes.csv"
    rc = main(["detect", str(raw), "--channels", "4", "--rate-hz", "25000", "--uv-per-bit", "0.195",
               "--pulses", str(pulses), "--out", str(out), "--chunk-ms", "3"])
    assert rc == 0
    table = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    # the same spikes as the path run directly in other chunks
    path = SignalPath(4, 25000.0, 0.195)
    for p in truth.pulse_sample:
        path.expect_pulse(int(p), (), 400.0)
    direct = path.process(Chunk(0, truth.samples, 0.195, 25000.0))
    np.testing.assert_array_equal(table[:, 0], direct.sample)
    np.testing.assert_array_equal(table[:, 1], direct.channel)
    found = SpikeEvents(table[:, 0], table[:, 1].astype(np.int32), np.zeros(len(table), np.float32))
    s = score(found, truth, start_s=0.1)[10.0]
    assert s.recall > 0.97 and s.precision > 0.97


def test_detect_rejects_a_file_that_is_not_whole_frames(tmp_path, capsys):
    raw = tmp_path / "bad.raw"
    raw.write_bytes(b"\x00" * 7)
    rc = main(["detect", str(raw), "--channels", "2", "--rate-hz", "1000", "--uv-per-bit", "1"])
    assert rc == 2
    assert "whole number" in capsys.readouterr().err


def test_bench_throughput_ends_with_json(capsys):
    rc = main(["bench", "throughput", "--channels", "8", "--rate-hz", "20000", "--seconds", "0.3", "--chunk-ms", "5"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["rtf"] > 0 and result["channels"] == 8 and result["spikes"] > 0


def test_bench_group_accepts_other_entries():
    """Another module can add `bench NAME` from its register(sub), before or after bench's own."""
    import argparse

    from rigctl.commands import bench
    for other_first in (True, False):
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        if not other_first:
            bench.register(sub)
        p = (bench.add_bench_command(sub, "probe", "test entry") if other_first
             else bench.add_bench_command("probe", "test entry"))
        p.add_argument("--n", type=int)
        p.set_defaults(func=lambda args: args.n)
        if other_first:
            bench.register(sub)
        args = parser.parse_args(["bench", "probe", "--n", "3"])
        assert args.func(args) == 3
        assert parser.parse_args(["bench", "throughput", "--channels", "4"]).channels == 4
    # and every parser the CLI builds has its own group
    assert build_parser().parse_args(["bench", "throughput"]).func is build_parser().parse_args(
        ["bench", "throughput"]).func
