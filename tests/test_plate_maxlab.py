"""A plate through the MaxLab wire: `rigctl run PLATE --rig rigs/maxtwo_sim.yaml` drives each plate well on one
well of an emulated MaxTwo (one TCP command server, one ZMQ stream for every well, 32 stimulation units per
well), and each well equals the same seed and drug on the direct simulated rig at 20 kHz; plates the MaxTwo
cannot take are one-line errors before any well starts."""

import functools
from pathlib import Path

import pytest

from rigctl.rigs import open_rig
from rigctl.session import RunOptions, start_run
from rigctl.store import read_spikes, read_stims, read_trials
from runcli import rigctl

MAXTWO = str(Path(__file__).resolve().parents[1] / "rigs" / "maxtwo_sim.yaml")
SET = {"sessions": 1, "trials_per_session": 16, "rest_s": 1.0}
PLATE = """kind: plate
name: maxtwo_small
layout: {{rows: {rows}, cols: {cols}}}
protocol: isomura2023_bss_maxlab
set: {{sessions: 1, trials_per_session: 16, rest_s: 1.0}}
conditions:
  - {{drug: none}}
  - {{drug: apv}}
{extra}replicates: {replicates}
first_seed: 5
"""


def plate_file(tmp_path: Path, rows: int = 3, cols: int = 1, replicates: int = 1, extra: str = "") -> Path:
    path = tmp_path / "plate.yaml"
    path.write_text(PLATE.format(rows=rows, cols=cols, replicates=replicates, extra=extra))
    return path


def test_each_maxtwo_well_equals_the_direct_rig(tmp_path):
    """Wells A1 (seed 5, none) and B1 (seed 5, apv): plate well k on MaxTwo well k, its own culture, through
    the driver's TCP commands (each well's units after `system_set_activated_wells k`) and the shared stream."""
    out = tmp_path / "plate"
    rigctl("run", str(plate_file(tmp_path)), "--rig", MAXTWO, "--out", str(out), "--no-progress", "--no-report")
    overrides = tuple(f"{k}={v}" for k, v in SET.items())
    for well, drug in (("A1", "none"), ("B1", "apv")):
        ref = start_run("isomura2023_bss_maxlab", RunOptions(rig="sim", seed=5, drug=drug, progress=False,
                                                             overrides=overrides), tmp_path / f"ref-{well}",
                        rig_factory=functools.partial(open_rig, sample_rate_hz=20000.0))
        got = out / "wells" / well
        assert len(read_trials(got)) == 16
        assert len(read_stims(got)) > 0
        for reader in (read_trials, read_stims, read_spikes):
            assert reader(got).tobytes() == reader(ref).tobytes(), (well, reader.__name__)
    assert read_spikes(out / "wells" / "A1").tobytes() != read_spikes(out / "wells" / "B1").tobytes()


@pytest.mark.parametrize("args, expected", [
    (dict(rows=4, cols=2, replicates=4), "plate.yaml:9: 2 conditions x 4 replicates = 8 wells; allowed: at most 6 "
                                         "(amplifier.wells of "),
    (dict(extra="  - {drug: none, stim_groups.B: [1, 3, 4, 5, 6, 7, 8, 10, 12, 13, 14, 15, 17, 19, 20, 21, 22]}\n"),
     "plate.yaml: conditions: well C1 (none [1, 3"),
])
def test_plates_the_maxtwo_cannot_take_are_one_line_errors(tmp_path, args, expected):
    proc = rigctl("run", str(plate_file(tmp_path, **args)), "--rig", MAXTWO, "--out", str(tmp_path / "p"),
                  "--no-progress", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert expected in proc.stderr, proc.stderr
    if "stim_groups" in str(args):
        assert "a pulse on 33 electrodes; allowed: at most 32 (stimulation units of one well of " in proc.stderr
