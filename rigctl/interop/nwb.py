"""`rigctl export nwb`: a run directory as one NWB file (pynwb; optional extra `[nwb]`).

The mapping (which run file goes to which NWB object, units, what is multi-unit) is docs/interop.md.
Times are seconds from the amplifier's sample 0 (`sample / sample_rate_hz`); every table also keeps the
integer `sample`, so nothing depends on float rounding. Raw data are streamed from `raw.bin` (a memmap)
in chunks, so a run of any length is exported in bounded memory.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from rigctl import __version__
from rigctl.engine import TrialField
from rigctl.interop import InteropError, require
from rigctl.interop.run_data import UNIT_NAMES, RunData, load_run, model_tables

RAW_SERIES = "raw"
CHUNK_ROWS = 25_000  # rows of raw.bin per HDF5 chunk and per write (1 s at 25 kHz; 3.2 MB for 64 channels)


def export_nwb(run_dir: str | Path, out_path: str | Path) -> tuple[Path, list[str]]:
    """Write the run as NWB to `out_path`; returns the path and the warnings (an unfinished run is exported
    with a warning; a missing output directory or an unwritable file is an InteropError)."""
    pynwb = require("pynwb")
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise InteropError(f"-o {out_path}: directory {out_path.parent} does not exist")
    run = load_run(run_dir)
    nwbfile = build_nwbfile(run)
    tmp = out_path.with_name(f".{out_path.stem}.writing.nwb")
    try:
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
        tmp.replace(out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InteropError(f"-o {out_path}: cannot write ({exc.strerror or exc})") from None
    return out_path, run.warnings


def build_nwbfile(run: RunData) -> Any:
    """The in-memory NWBFile of a run (raw data still lazy: written chunk by chunk by NWBHDF5IO)."""
    from pynwb import NWBFile

    meta = run.meta
    nwbfile = NWBFile(
        session_description=f"rigctl run of protocol {meta.get('protocol', '?')} "
                            f"({meta.get('protocol_kind', '?')}) on rig {meta.get('rig', '?')}",
        identifier=_identifier(run),
        session_start_time=_start_time(meta),
        session_id=run.info.path.name,
        experiment_description=_experiment_description(run),
        protocol=run.protocol_yaml or None,
        pharmacology=f"drug/condition: {meta.get('drug', 'none')}",
        notes=json.dumps(_notes(run), sort_keys=True),
        source_script=f"rigctl {meta.get('rigctl_version', __version__)} (exported by rigctl {__version__})",
        source_script_file_name="rigctl",
        subject=_subject(run),
        data_collection=json.dumps({"signal_config": meta.get("signal_config"),
                                    "rig_description": _rig_without_layout(meta)}, sort_keys=True, default=str),
        stimulus_notes="Every delivered stimulus is a row of the events table 'stimuli' (one row per electrode "
                       "of each command).",
        keywords=["microelectrode array", "neuronal culture", "closed loop", "rigctl"],
    )
    electrodes = _add_electrodes(nwbfile, run)
    _add_raw(nwbfile, run, electrodes)
    _add_spikes(nwbfile, run)
    _add_stimuli(nwbfile, run)
    _add_trials(nwbfile, run)
    _add_models(nwbfile, run)
    return nwbfile


# ---- metadata --------------------------------------------------------------------------------------------
def _identifier(run: RunData) -> str:
    """Stable for a run directory: the same run exported twice has the same identifier."""
    meta = run.meta
    key = f"rigctl:{meta.get('created')}:{meta.get('protocol')}:{meta.get('seed')}:{run.info.path.name}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _start_time(meta: dict) -> _dt.datetime:
    try:
        start = _dt.datetime.fromisoformat(str(meta.get("created")))
    except ValueError:
        start = _dt.datetime(1970, 1, 1)
    return start if start.tzinfo else start.replace(tzinfo=_dt.timezone.utc)


def _experiment_description(run: RunData) -> str:
    import yaml

    try:
        doc = yaml.safe_load(run.protocol_yaml) if run.protocol_yaml else {}
    except yaml.YAMLError:
        doc = {}
    text = str((doc or {}).get("description", "")).strip() if isinstance(doc, dict) else ""
    ref = str((doc or {}).get("reference", "")).strip() if isinstance(doc, dict) else ""
    return " ".join(filter(None, [text, f"Reference: {ref}" if ref else ""])) or "rigctl run"


def _subject(run: RunData) -> Any:
    """The culture. rigctl does not know its species, age or sex: a lab adds them (docs/interop.md)."""
    from pynwb.file import Subject

    rig = run.meta.get("rig_description") or {}
    simulated = rig.get("kind") in ("sim", "sim-events")
    what = "simulated culture (rigctl.sim), no living tissue" if simulated else "neuronal culture on the MEA"
    return Subject(subject_id=f"culture-{run.info.path.name}", sex="U", age="P0D/",
                   description=f"{what}; drug/condition: {run.meta.get('drug', 'none')}; species, age (days in "
                   "vitro) and sex are not known to rigctl: age 'P0D/' and sex 'U' mean unknown")


def _rig_without_layout(meta: dict) -> dict:
    rig = dict(meta.get("rig_description") or {})
    rig.pop("layout", None)  # the electrodes table holds it
    return rig


def _notes(run: RunData) -> dict:
    meta = run.meta
    keep = ("rigctl_version", "created", "command", "protocol", "protocol_kind", "protocol_source", "seed", "rig",
            "drug", "sessions", "status", "trials_done", "sample_rate_hz", "uV_per_bit", "shapes", "trial_fields",
            "safety_limits", "platform", "loop_stats")
    return {"rigctl_run_json": {k: meta[k] for k in keep if k in meta}, "exported_by": f"rigctl {__version__}",
            "export_warnings": run.warnings}


# ---- electrodes and raw ----------------------------------------------------------------------------------
def _add_electrodes(nwbfile: Any, run: RunData) -> Any:
    """Device, one electrode group, one row per electrode (x, y, rel_x, rel_y in µm; the channel map)."""
    rig = run.meta.get("rig_description") or {}
    amp = rig.get("amplifier") or {"driver": rig.get("kind", "?")}
    device = nwbfile.create_device(name="mea_rig", description=f"rig {run.meta.get('rig', '?')}: amplifier "
                                   f"{json.dumps(amp, sort_keys=True, default=str)}")
    group = nwbfile.create_electrode_group(name="mea", description="all electrodes of the microelectrode array",
                                           location="in vitro neuronal culture", device=device)
    nwbfile.add_electrode_column(name="channel_name", description="electrode name in the rig's layout")
    nwbfile.add_electrode_column(name="amplifier_channel", description="the rig's channel map: the amplifier "
                                 "channel recording this electrode (raw column index = electrode index)")
    channels = amp.get("channels") if isinstance(amp.get("channels"), list) else None
    for i, ((x, y), name) in enumerate(zip(run.layout.positions_um, run.layout.names)):
        amp_channel = str(channels[i]) if channels and len(channels) == run.layout.n_electrodes else str(i)
        nwbfile.add_electrode(x=float(x), y=float(y), z=0.0, rel_x=float(x), rel_y=float(y), group=group,
                              location="in vitro neuronal culture", channel_name=name, amplifier_channel=amp_channel)
    return nwbfile.create_electrode_table_region(list(range(run.layout.n_electrodes)), "all electrodes")


def _add_raw(nwbfile: Any, run: RunData, electrodes: Any) -> None:
    """All kept ranges as one int16 ElectricalSeries with a timestamp per sample (gaps between ranges),
    plus a 'raw_kept_ranges' interval table giving each range's first sample and length."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb.ecephys import ElectricalSeries
    from pynwb.epoch import TimeIntervals

    raw = run.raw
    if len(raw.frames) == 0:
        return
    fs = run.sample_rate_hz
    n_ch = raw.frames.shape[1]
    rows = min(CHUNK_ROWS, len(raw.frames))
    data = H5DataIO(_RowIterator(lambda s: np.asarray(raw.frames[s]), raw.frames.shape, np.int16, rows),
                    compression="gzip", compression_opts=4, chunks=(rows, n_ch))
    stamps = H5DataIO(_RowIterator(lambda s: raw.sample_of_rows(s) / fs, (len(raw.frames),), np.float64, rows),
                      compression="gzip", compression_opts=4, chunks=(rows,))
    nwbfile.add_acquisition(ElectricalSeries(
        name=RAW_SERIES, data=data, electrodes=electrodes, timestamps=stamps, conversion=run.uV_per_bit * 1e-6,
        resolution=run.uV_per_bit * 1e-6, filtering="none in rigctl: the amplifier's own hardware filters only "
        "(rigctl's band-pass is applied online and not stored)",
        description=f"kept raw samples (int16 counts x conversion = volts; {run.uV_per_bit} uV per count), "
                    f"{len(raw.first_sample)} contiguous ranges joined; timestamp = sample / {fs} Hz"))
    ranges = TimeIntervals(name="raw_kept_ranges", description="the contiguous ranges of kept raw samples in "
                           "acquisition/raw, in order: rows first_row .. first_row + n_samples - 1 hold amplifier "
                           "samples first_sample .. first_sample + n_samples - 1")
    ranges.add_column("first_sample", "amplifier sample index of the range's first sample")
    ranges.add_column("n_samples", "number of samples in the range")
    ranges.add_column("first_row", "row of acquisition/raw holding the range's first sample")
    for first, n, row in zip(raw.first_sample.tolist(), raw.n_samples.tolist(), raw.start_row.tolist()):
        ranges.add_row(start_time=first / fs, stop_time=(first + n) / fs, first_sample=first, n_samples=n,
                       first_row=row)
    nwbfile.add_time_intervals(ranges)


class _RowIterator:
    """Factory of an hdmf GenericDataChunkIterator over the first axis (built lazily: hdmf is optional)."""

    def __new__(cls, read, shape: tuple[int, ...], dtype, rows: int):
        from hdmf.data_utils import GenericDataChunkIterator

        class RowChunks(GenericDataChunkIterator):
            def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
                block = read(selection[0])
                return block[(slice(None),) + tuple(selection[1:])] if len(selection) > 1 else block

            def _get_maxshape(self) -> tuple[int, ...]:
                return shape

            def _get_dtype(self) -> np.dtype:
                return np.dtype(dtype)

        return RowChunks(chunk_shape=(rows,) + tuple(shape[1:]), buffer_shape=(rows,) + tuple(shape[1:]),
                         display_progress=False)


# ---- spikes, stimuli, trials, models ----------------------------------------------------------------------
def _add_spikes(nwbfile: Any, run: RunData) -> None:
    """One Units row per electrode: its threshold crossings (multi-unit activity, not sorted units)."""
    spikes = run.spikes
    fs = run.sample_rate_hz
    from pynwb.misc import Units

    units = Units(name="units", description="MULTI-UNIT activity, not sorted units: one row per electrode holding "
                  "every spike rigctl's online detector found on it (threshold crossings of the matched-filter "
                  f"output); spike_times = sample / {fs} Hz", electrode_table=nwbfile.electrodes,
                  resolution=1.0 / fs)
    units.add_column("electrode_name", "name of the electrode whose crossings this row holds")
    units.add_column("spike_samples", "amplifier sample index of each spike", index=True)
    units.add_column("spike_amplitudes_uV", "trough amplitude of each spike in microvolts (negative)", index=True)
    order = np.lexsort((spikes["sample"], spikes["channel"]))
    spikes = spikes[order]
    bounds = np.searchsorted(spikes["channel"], np.arange(run.layout.n_electrodes + 1))
    for e in range(run.layout.n_electrodes):
        mine = spikes[bounds[e]:bounds[e + 1]]
        units.add_unit(id=e, spike_times=(mine["sample"] / fs).tolist(), electrodes=[e],
                       electrode_name=run.layout.names[e], spike_samples=mine["sample"].astype(np.int64).tolist(),
                       spike_amplitudes_uV=mine["amplitude_uV"].astype(np.float32).tolist())
    nwbfile.units = units


def _add_stimuli(nwbfile: Any, run: RunData) -> None:
    """Every delivered (command, electrode) as one row of the EventsTable 'stimuli'."""
    from hdmf.common import DynamicTableRegion, VectorData
    from pynwb.event import DurationVectorData, EventsTable, TimestampVectorData

    st = run.stims[np.argsort(run.stims["sample"], kind="stable")]
    if len(st) == 0:
        return
    fs = run.sample_rate_hz
    dur_us = st["phase1_us"].astype(np.float64) + st["interphase_us"] + st["phase2_us"]
    units = np.array([UNIT_NAMES.get(int(u), "?") for u in st["unit"]])
    cols = [TimestampVectorData(name="timestamp", description=f"pulse onset, s (= sample / {fs} Hz)",
                                data=st["sample"] / fs, resolution=1.0 / fs),
            DurationVectorData(name="duration", description="whole biphasic pulse (phase 1 + interphase + phase 2), s",
                               data=dur_us * 1e-6, resolution=1e-6),
            VectorData(name="sample", description="amplifier sample index of the pulse onset",
                       data=st["sample"].astype(np.int64)),
            DynamicTableRegion(name="electrode", description="the stimulated electrode",
                               data=st["electrode"].astype(np.int64), table=nwbfile.electrodes),
            VectorData(name="amplitude_unit", description="unit of the phase amplitudes: uA (current) or mV (voltage)",
                       data=units.tolist())]
    for name, what in (("phase1_amplitude", "amplitude of phase 1 (amplitude_unit)"),
                       ("phase1_us", "duration of phase 1, microseconds"),
                       ("interphase_us", "gap between the phases, microseconds"),
                       ("phase2_amplitude", "amplitude of phase 2 (amplitude_unit)"),
                       ("phase2_us", "duration of phase 2, microseconds")):
        cols.append(VectorData(name=name, description=what, data=st[name].astype(np.float32)))
    nwbfile.add_events_table(EventsTable(name="stimuli", description="every delivered stimulus pulse, one row per "
                                         "electrode of each command (stims.bin)", columns=cols,
                                         source_description="rigctl's stimulus log (commands sent to the stimulator)"))


def _add_trials(nwbfile: Any, run: RunData) -> None:
    """trials.bin as the NWB trials table: session, trial, sample, the protocol's fields as the CSV export's
    columns (BSS: s1, s2, o1..o32) and r1..rN, the evoked counts per electrode."""
    import yaml
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    tr = run.trials
    if len(tr) == 0:
        return
    fs = run.sample_rate_hz
    try:
        window = (yaml.safe_load(run.protocol_yaml) or {}).get("response_window_ms", [0.0, 0.0])
        end_ms = float(window[1])
    except (yaml.YAMLError, AttributeError, TypeError, ValueError, IndexError):
        end_ms = 0.0
    start = tr["sample"] / fs
    cols = [VectorData(name="start_time", description="pulse time, s", data=start),
            VectorData(name="stop_time", description=f"end of the response window ({end_ms} ms after the pulse), s",
                       data=start + end_ms * 1e-3),
            VectorData(name="session", description="session, 1-based", data=tr["session"].astype(np.int32)),
            VectorData(name="trial", description="trial within its session, 1-based", data=tr["trial"].astype(np.int32)),
            VectorData(name="sample", description="amplifier sample index of the pulse", data=tr["sample"].astype(np.int64))]
    for f in run.info.trial_fields:
        cols += _field_columns(f, tr[f.name])
    counts = tr["counts"].reshape(len(tr), -1)
    for e in range(counts.shape[1]):
        cols.append(VectorData(name=f"r{e + 1}", description=f"evoked spikes on electrode {run.layout.names[e]} "
                               "in the response window", data=counts[:, e].astype(np.int32)))
    nwbfile.trials = TimeIntervals(name="trials", description=f"one row per trial of the protocol "
                                   f"{run.meta.get('protocol', '?')} (trials.bin)", columns=cols)


def _field_columns(field: TrialField, values: np.ndarray) -> list:
    from hdmf.common import VectorData

    flat = values.reshape(len(values), -1)
    return [VectorData(name=col, description=f"trial field {field.name}" + (f"[{i}]" if field.shape else ""),
                       data=flat[:, i]) for i, col in enumerate(field.columns())]


def _add_models(nwbfile: Any, run: RunData) -> None:
    """model_sessions.jsonl as the processing module 'models': one table per online model."""
    from hdmf.common import DynamicTable, VectorData

    tables = model_tables(run.model_rows)
    if not tables:
        return
    module = nwbfile.create_processing_module(name="models", description="per-session output of rigctl's online "
                                              "models (free-energy model, selectivity): model_sessions.jsonl")
    for name, cols in sorted(tables.items()):
        columns = [VectorData(name=col, description=_MODEL_COLUMNS.get(col, f"value '{col}' of the model's row "
                              "(NaN or empty where a row has none)"), data=values) for col, values in cols.items()]
        module.add(DynamicTable(name=name, description=f"rows of the online model '{name}' (model_sessions.jsonl)",
                                columns=columns))


_MODEL_COLUMNS = {"session": "session, 1-based", "phase": "prediction (written before the session) or end",
                  "nested_json": "the row's nested values (per-electrode or per-source arrays) as a JSON object"}


def inspect_nwb(path: str | Path) -> list[Any]:
    """nwbinspector's findings on a written file (the `--inspect` flag, and the tests)."""
    nwbinspector = require("nwbinspector")
    if not Path(path).is_file():
        raise InteropError(f"{path}: no such file")
    return list(nwbinspector.inspect_nwbfile(nwbfile_path=str(path)))


def severe(findings: list[Any]) -> list[Any]:
    """The findings at importance CRITICAL or ERROR (PYNWB_VALIDATION included)."""
    return [f for f in findings if f.importance.name in ("CRITICAL", "ERROR", "PYNWB_VALIDATION")]
