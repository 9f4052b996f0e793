"""`rigctl.interop.read_run`: a run as a SpikeInterface recording and sorting that SpikeInterface's own tools
accept (waveforms, templates, quality metrics), and layouts as probeinterface probes (and back)."""

from __future__ import annotations

import numpy as np
import pytest

from rigctl.interop import InteropError
from rigctl.interop.run_data import load_run
from rigctl.interop.spikeinterface import (grid_pitch_um, layout_from_probe_file, probe_from_layout, read_run,
                                           read_spikes_sorting)
from rigctl.layout import ElectrodeLayout

si = pytest.importorskip("spikeinterface.core")
pi = pytest.importorskip("probeinterface")


@pytest.fixture(scope="module")
def run_views(bss_voltage_run):
    return load_run(bss_voltage_run), *read_run(bss_voltage_run)


def test_recording_has_one_segment_per_kept_range_with_gains_and_locations(run_views):
    run, rec, _ = run_views
    assert rec.get_num_segments() == len(run.raw.first_sample) == 32
    joined = np.concatenate([rec.get_traces(segment_index=k, return_scaled=False) for k in range(32)])
    assert np.array_equal(joined, run.raw.frames)
    assert np.allclose(rec.get_channel_gains(), run.uV_per_bit)
    assert np.array_equal(rec.get_channel_locations(), run.layout.positions_um)
    for k, first in enumerate(run.raw.first_sample):
        assert rec.get_times(segment_index=k)[0] == pytest.approx(first / run.sample_rate_hz)
    assert list(rec.get_probe().contact_ids) == list(run.layout.names)


def test_sorting_holds_the_spikes_of_each_kept_range(run_views):
    run, rec, sorting = run_views
    assert sorting.get_num_segments() == rec.get_num_segments()
    for k, (first, n) in enumerate(zip(run.raw.first_sample, run.raw.n_samples)):
        sp = run.spikes[(run.spikes["sample"] >= first) & (run.spikes["sample"] < first + n)]
        for e in (0, 9, 42):
            got = sorting.get_unit_spike_train(run.layout.names[e], segment_index=k)
            assert np.array_equal(got, np.sort(sp["sample"][sp["channel"] == e]) - first)


def test_all_spikes_sorting_is_on_the_amplifier_clock(bss_voltage_run):
    run = load_run(bss_voltage_run)
    sorting = read_spikes_sorting(bss_voltage_run)
    assert sum(len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids) == len(run.spikes)
    assert np.array_equal(sorting.get_unit_spike_train(run.layout.names[3]),
                          np.sort(run.spikes["sample"][run.spikes["channel"] == 3]))


def test_spikeinterface_computes_waveforms_and_quality_metrics(run_views):
    pytest.importorskip("spikeinterface.qualitymetrics")
    _, rec, sorting = run_views
    analyzer = si.create_sorting_analyzer(sorting, rec, format="memory", sparse=False)
    analyzer.compute(["random_spikes", "waveforms", "templates", "noise_levels"], verbose=False)
    metrics = analyzer.compute("quality_metrics", metric_names=["num_spikes", "snr"]).get_data()
    counts = sorting.count_num_spikes_per_unit()
    assert [metrics.loc[u, "num_spikes"] for u in sorting.unit_ids] == [counts[u] for u in sorting.unit_ids]
    busy = [u for u in sorting.unit_ids if counts[u] >= 20]
    assert len(busy) > 30
    # detected multi-unit spikes stand out of the noise on their own electrode
    assert float(np.median(metrics.loc[busy, "snr"])) > 3.0
    templates = analyzer.get_extension("templates").get_data()
    assert templates.shape[0] == len(sorting.unit_ids) and templates.shape[2] == rec.get_num_channels()


def test_the_layout_is_an_8_by_8_probe_with_pitch_and_diameter(run_views):
    run = run_views[0]
    probe = probe_from_layout(run.layout, electrode_diameter_um=30.0)
    assert probe.get_contact_count() == 64
    assert grid_pitch_um(run.layout) == 200.0
    assert set(probe.contact_shapes) == {"circle"} and probe.contact_shape_params[0]["radius"] == 15.0
    assert np.array_equal(probe.device_channel_indices, np.arange(64))


def test_a_probe_file_gives_another_layout(tmp_path):
    # a 60-electrode MCS-style grid: 8 x 8 at 200 um without the four corners, contacts of 30 um
    xs, ys = np.meshgrid(np.arange(8) * 200.0, np.arange(8) * 200.0)
    keep = ~(((xs == 0) | (xs == 1400)) & ((ys == 0) | (ys == 1400)))
    positions = np.c_[xs[keep], ys[keep]]
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="circle", shape_params={"radius": 15})
    probe.set_contact_ids([f"e{i}" for i in range(60)])
    order = np.random.default_rng(3).permutation(60)  # the amplifier's channel map differs from contact order
    probe.set_device_channel_indices(order)
    pi.write_probeinterface(tmp_path / "mcs60.json", probe)
    layout, diameter = layout_from_probe_file(tmp_path / "mcs60.json")
    assert layout.n_electrodes == 60 and diameter == 30.0
    for contact, channel in enumerate(order):
        assert layout.names[channel] == f"e{contact}"
        assert np.array_equal(layout.positions_um[channel], positions[contact])
    # and the round trip of our own layout
    pi.write_probeinterface(tmp_path / "grid.json", probe_from_layout(ElectrodeLayout.grid(8, 8, 150.0)))
    back, _ = layout_from_probe_file(tmp_path / "grid.json")
    assert np.array_equal(back.positions_um, ElectrodeLayout.grid(8, 8, 150.0).positions_um)


@pytest.mark.parametrize("content", [None, "{not json", '{"specification": "probeinterface", "probes": []}'])
def test_a_bad_probe_file_is_one_error_naming_it(tmp_path, content):
    path = tmp_path / "probe.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InteropError, match=str(path)):
        layout_from_probe_file(path)
