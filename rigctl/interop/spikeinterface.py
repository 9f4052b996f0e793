"""A run directory as SpikeInterface objects, the layout as a probeinterface `Probe` (extra `[spikeinterface]`).

`read_run(run_dir)` gives a recording of the kept raw data (one segment per contiguous kept range, int16
with gains in µV, channel locations and the probe attached) and a sorting of the detected spikes in the
same segments (one unit per electrode: multi-unit threshold crossings, not sorted units). Spikes outside
the kept raw ranges (the spike window of a protocol is often wider than its raw window) are in
`read_spikes_sorting(run_dir)`, one segment on the amplifier's whole clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rigctl.interop import InteropError, require
from rigctl.interop.run_data import RunData, load_run
from rigctl.layout import ElectrodeLayout

DEFAULT_ELECTRODE_DIAMETER_UM = 30.0  # flat round MEA electrodes (e.g. MCS 60MEA200/30); a probe file overrides


def probe_from_layout(layout: ElectrodeLayout, electrode_diameter_um: float = DEFAULT_ELECTRODE_DIAMETER_UM) -> Any:
    """The layout as a 2-D probeinterface Probe: round contacts, contact ids = electrode names, device
    channel i = electrode i (the rig's channel map), planar contour around the contacts."""
    pi = require("probeinterface")
    probe = pi.Probe(ndim=2, si_units="um", name="rigctl MEA", manufacturer="")
    probe.set_contacts(positions=np.asarray(layout.positions_um, float), shapes="circle",
                       shape_params={"radius": electrode_diameter_um / 2.0})
    probe.set_contact_ids([str(n) for n in layout.names])
    probe.set_device_channel_indices(np.arange(layout.n_electrodes))
    probe.create_auto_shape(probe_type="rect", margin=max(electrode_diameter_um, 20.0))
    return probe


def grid_pitch_um(layout: ElectrodeLayout) -> float:
    """The smallest distance between two electrodes (a grid's pitch)."""
    pos = np.asarray(layout.positions_um, float)
    if len(pos) < 2:
        return 0.0
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(pos), 1)].min())


def layout_from_probe_file(path: str | Path) -> tuple[ElectrodeLayout, float]:
    """A probeinterface JSON (one probe, 2-D) -> (layout in device-channel order, contact diameter µm).

    Channel i of the amplifier is the contact whose device channel index is i (contact order if the file
    has none). Errors name the file and what is wrong."""
    pi = require("probeinterface")
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"{path}: no such probe file")
    try:
        group = pi.read_probeinterface(path)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InteropError(f"{path}: not a probeinterface JSON file ({type(exc).__name__}: {exc})") from None
    if len(group.probes) != 1:
        raise InteropError(f"{path}: holds {len(group.probes)} probes; allowed: exactly 1")
    probe = group.probes[0]
    if probe.ndim != 2:
        raise InteropError(f"{path}: a {probe.ndim}-D probe; allowed: 2-D (a planar MEA)")
    n = probe.get_contact_count()
    order = np.arange(n)
    dci = probe.device_channel_indices
    if dci is not None:
        if sorted(int(c) for c in dci) != list(range(n)):
            raise InteropError(f"{path}: device_channel_indices are not 0..{n - 1} each once")
        order = np.argsort(dci)
    ids = probe.contact_ids if probe.contact_ids is not None and all(probe.contact_ids) else \
        np.array([f"ch{i}" for i in range(n)])
    positions = np.asarray(probe.contact_positions, float)[order]
    scale = {"um": 1.0, "mm": 1000.0}.get(probe.si_units, 1.0)
    layout = ElectrodeLayout(positions * scale, tuple(str(ids[i]) for i in order))
    return layout, _contact_diameter_um(probe) * scale


def _contact_diameter_um(probe: Any) -> float:
    shape, params = probe.contact_shapes[0], probe.contact_shape_params[0]
    if shape == "circle":
        return 2.0 * float(params.get("radius", DEFAULT_ELECTRODE_DIAMETER_UM / 2))
    if shape == "square":
        return float(params.get("width", DEFAULT_ELECTRODE_DIAMETER_UM))
    return float(params.get("width", DEFAULT_ELECTRODE_DIAMETER_UM))


def read_run(run_dir: str | Path, electrode_diameter_um: float = DEFAULT_ELECTRODE_DIAMETER_UM) -> tuple[Any, Any]:
    """(recording, sorting) of a run directory: see the module's docstring."""
    run = load_run(run_dir)
    if len(run.raw.frames) == 0:
        raise InteropError(f"{run.info.path}: the run kept no raw samples (protocol 'raw: none' or an events "
                           "rig); read_spikes_sorting gives its spikes")
    recording = run_recording(run, electrode_diameter_um)
    return recording, _segment_sorting(run)


def run_recording(run: RunData, electrode_diameter_um: float = DEFAULT_ELECTRODE_DIAMETER_UM) -> Any:
    """The kept raw ranges as a multi-segment int16 recording (lazy views of raw.bin)."""
    si = require("spikeinterface.core")
    raw, fs = run.raw, run.sample_rate_hz
    traces = [raw.frames[a:a + n] for a, n in zip(raw.start_row.tolist(), raw.n_samples.tolist())]
    rec = si.NumpyRecording(traces, sampling_frequency=fs, channel_ids=list(run.layout.names),
                            t_starts=(raw.first_sample / fs).tolist())
    rec.set_channel_gains(run.uV_per_bit)
    rec.set_channel_offsets(0.0)
    rec = rec.set_probe(probe_from_layout(run.layout, electrode_diameter_um))
    rec.annotate(rigctl_run=str(run.info.path), first_samples=raw.first_sample.tolist())
    return rec


def _segment_sorting(run: RunData) -> Any:
    """Spikes inside the kept ranges, one segment per range, samples relative to the range's start."""
    si = require("spikeinterface.core")
    raw, spikes = run.raw, run.spikes
    names = list(run.layout.names)
    samples, labels = [], []
    for first, n in zip(raw.first_sample.tolist(), raw.n_samples.tolist()):
        inside = spikes[(spikes["sample"] >= first) & (spikes["sample"] < first + n)]
        inside = inside[np.lexsort((inside["channel"], inside["sample"]))]
        samples.append(inside["sample"].astype(np.int64) - first)
        labels.append(np.array([names[c] for c in inside["channel"]], dtype=object).astype(str))
    sorting = si.NumpySorting.from_times_labels(samples, labels, run.sample_rate_hz, unit_ids=names)
    sorting.set_property("electrode", np.arange(len(names)))
    sorting.annotate(multi_unit="one unit per electrode: threshold crossings, not sorted units")
    return sorting


def read_spikes_sorting(run_dir: str | Path) -> Any:
    """Every detected spike of a run as a one-segment sorting on the amplifier's clock (sample 0 = start)."""
    si = require("spikeinterface.core")
    run = load_run(run_dir)
    sp = run.spikes[np.lexsort((run.spikes["channel"], run.spikes["sample"]))]
    names = list(run.layout.names)
    labels = np.array([names[c] for c in sp["channel"]], dtype=object).astype(str)
    return si.NumpySorting.from_times_labels([sp["sample"].astype(np.int64)], [labels], run.sample_rate_hz,
                                                    unit_ids=names)
