"""Small recordings in other systems' formats, made here (nothing is downloaded): for the playback tests.

The signal is SpikeInterface's ground-truth simulator (`generate_ground_truth_recording`: templates of
simulated units on a 2-D probe, seeded), quantized to int16 at 0.195 µV per count like an Intan headstage,
then written by small writers that follow each format's layout:
- NWB: with pynwb (an ElectricalSeries with conversion to volts, electrodes with rel_x/rel_y);
- Open Ephys binary (GUI 0.6 layout): `Record Node 101/experiment1/recording1/structure.oebin`,
  `continuous/<stream>/continuous.dat` (int16 interleaved), `sample_numbers.npy`, `timestamps.npy`;
- MCS HDF5 (Multi Channel DataManager export): `/Data/Recording_0/AnalogStream/Stream_0` with
  `ChannelData` [channels, samples], `ChannelDataTimeStamps` and `InfoChannel`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UV_PER_BIT = 0.195


@dataclass(frozen=True)
class Truth:
    """The generated recording: int16 frames [n, channels], rate, positions (µm), spike trains (samples)."""

    frames: np.ndarray
    sample_rate_hz: float
    positions_um: np.ndarray
    spike_samples: np.ndarray  # every ground-truth spike, all units
    spike_units: np.ndarray


def ground_truth(duration_s: float = 10.0, n_channels: int = 16, n_units: int = 12, seed: int = 7,
                 sample_rate_hz: float = 25000.0) -> Truth:
    from spikeinterface.core import generate_ground_truth_recording

    rec, sorting = generate_ground_truth_recording(durations=[duration_s], sampling_frequency=sample_rate_hz,
                                                   num_channels=n_channels, num_units=n_units, seed=seed,
                                                   noise_kwargs=dict(noise_levels=6.0, strategy="on_the_fly"))
    traces = rec.get_traces(return_scaled=False).astype(np.float64)  # µV (float32 recording)
    frames = np.clip(np.rint(traces / UV_PER_BIT), -32768, 32767).astype(np.int16)
    vec = sorting.to_spike_vector()
    return Truth(frames, sample_rate_hz, np.asarray(rec.get_channel_locations(), float),
                 vec["sample_index"].astype(np.int64), vec["unit_index"].astype(np.int64))


def write_nwb(path: Path, truth: Truth) -> Path:
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject

    f = NWBFile(session_description="ground-truth test recording", identifier="rigctl-test-gt",
                session_start_time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                subject=Subject(subject_id="gt", species="Mus musculus", sex="U", age="P30D"))
    dev = f.create_device(name="probe")
    grp = f.create_electrode_group(name="shank", description="generated probe", location="unknown", device=dev)
    for x, y in truth.positions_um:
        f.add_electrode(group=grp, location="unknown", rel_x=float(x), rel_y=float(y))
    region = f.create_electrode_table_region(list(range(len(truth.positions_um))), "all")
    f.add_acquisition(ElectricalSeries(name="ElectricalSeries", data=truth.frames, electrodes=region,
                                       rate=truth.sample_rate_hz, starting_time=0.0, conversion=UV_PER_BIT * 1e-6))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(f)
    return path


def write_openephys(folder: Path, truth: Truth) -> Path:
    n = truth.frames.shape[1]
    rec_dir = folder / "Record Node 101" / "experiment1" / "recording1"
    stream = "Acquisition_Board-100.Rhythm Data"
    cont = rec_dir / "continuous" / stream
    cont.mkdir(parents=True)
    truth.frames.astype("<i2").tofile(cont / "continuous.dat")
    samples = np.arange(len(truth.frames), dtype=np.int64)
    np.save(cont / "sample_numbers.npy", samples)
    np.save(cont / "timestamps.npy", samples / truth.sample_rate_hz)
    channels = [{"channel_name": f"CH{i + 1}", "description": "headstage data channel", "identifier": "genericdata",
                 "history": "Acquisition Board", "bit_volts": UV_PER_BIT, "units": "uV",
                 "source_processor_index": i, "recorded_processor_index": i} for i in range(n)]
    oebin = {"GUI version": "0.6.7",
             "continuous": [{"folder_name": stream + "/", "sample_rate": truth.sample_rate_hz,
                             "source_processor_name": "Acquisition Board", "source_processor_id": 100,
                             "stream_name": "Rhythm Data", "recorded_processor": "Acquisition Board",
                             "recorded_processor_id": 100, "num_channels": n, "channels": channels}],
             "events": [], "spikes": []}
    (rec_dir / "structure.oebin").write_text(json.dumps(oebin, indent=2))
    return folder


def write_mcs_h5(path: Path, truth: Truth) -> Path:
    import h5py

    n = truth.frames.shape[1]
    info_dtype = np.dtype([("ChannelID", "<i4"), ("RowIndex", "<i4"), ("GroupID", "<i4"), ("ElectrodeGroup", "<i4"),
                           ("Label", "S8"), ("RawDataType", "S8"), ("Unit", "S4"), ("Exponent", "<i4"),
                           ("ADZero", "<i4"), ("Tick", "<i8"), ("ConversionFactor", "<i8"), ("ADCBits", "<i4"),
                           ("HighPassFilterType", "S8"), ("HighPassFilterCutOffFrequency", "S8"),
                           ("HighPassFilterOrder", "<i4"), ("LowPassFilterType", "S8"),
                           ("LowPassFilterCutOffFrequency", "S8"), ("LowPassFilterOrder", "<i4")])
    info = np.zeros(n, info_dtype)
    info["ChannelID"] = np.arange(n)
    info["RowIndex"] = np.arange(n)
    info["Label"] = [f"{i + 1:02d}".encode() for i in range(n)]
    info["Unit"] = b"V"
    info["Exponent"] = -12  # value = ConversionFactor x 10^Exponent V per count: 195000 pV = 0.195 µV
    info["ConversionFactor"] = 195000
    info["Tick"] = int(round(1e6 / truth.sample_rate_hz))
    info["ADCBits"] = 16
    with h5py.File(path, "w") as f:
        stream = f.create_group("Data/Recording_0/AnalogStream/Stream_0")
        stream.create_dataset("ChannelData", data=truth.frames.T.astype(np.int32))
        stream.create_dataset("ChannelDataTimeStamps", data=np.array([[0, 0, len(truth.frames) - 1]], np.int64))
        stream.create_dataset("InfoChannel", data=info)
    return path
