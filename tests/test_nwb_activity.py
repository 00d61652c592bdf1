"""Recorded trajectories from NWB files (`mp.data.from_nwb`)."""

import datetime
import warnings

import jax.random as jr
import numpy as np
import pynwb
import pytest
from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

import metaplastic as mp


def write(path, x, y, *, rate=10.0, y_rate=None, spikes=None):
    nwb = pynwb.NWBFile(
        session_description="test",
        identifier=path.stem,
        session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
    )
    nwb.add_stimulus(pynwb.TimeSeries(name="stim", data=x, unit="a.u.", rate=rate))
    device = nwb.create_device(name="scope")
    channel = OpticalChannel(name="green", description="g", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=channel,
        description="p",
        device=device,
        excitation_lambda=920.0,
        imaging_rate=rate,
        indicator="GCaMP6f",
        location="mushroom body",
    )
    rois = ImageSegmentation().create_plane_segmentation(
        name="rois", description="r", imaging_plane=plane
    )
    for k in range(y.shape[1]):
        mask = np.zeros((8, 8))
        mask[k, k] = 1.0
        rois.add_roi(image_mask=mask)
    ophys = nwb.create_processing_module(name="ophys", description="o")
    ophys.add(rois.parent if rois.parent is not None else rois)
    region = rois.create_roi_table_region(region=list(range(y.shape[1])), description="all")
    series = RoiResponseSeries(name="dff", data=y, rois=region, unit="dF/F", rate=y_rate or rate)
    ophys.add(Fluorescence(roi_response_series=series))
    for times in spikes or []:
        nwb.add_unit(spike_times=times)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pynwb.NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return path


@pytest.fixture(scope="module")
def simulated():
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=0.5, activation="sigmoid")
    x = 0.5 * np.asarray(jr.normal(jr.key(0), (2, 12, 3)))
    w0 = 0.3 * np.asarray(jr.normal(jr.key(1), (2, 4, 3)))
    data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))
    return teacher, data


def test_fluorescence_and_units_are_read_at_the_inputs_times(simulated, tmp_path):
    teacher, data = simulated
    x, y = np.asarray(data.inputs), np.asarray(data.activity)
    spikes = [[0.01, 0.05, 0.31, 1.15], [0.2]]
    for i in range(2):
        write(tmp_path / f"s{i + 1}.nwb", x[i], y[i], spikes=spikes)
    back = mp.data.from_nwb(
        tmp_path, inputs="stim", recorded="dff", initial_weights=data.initial_weights
    )
    np.testing.assert_array_equal(back.inputs, data.inputs)
    np.testing.assert_allclose(back.activity, data.activity)
    loss = mp.losses.ActivityMSE()
    assert float(loss(teacher, back)) == pytest.approx(float(loss(teacher, data)), abs=1e-12)
    counts = mp.data.from_nwb(
        tmp_path / "s1.nwb",
        inputs="stim",
        recorded="units",
        initial_state=np.asarray(data.initial_weights[:1]),
    )
    assert isinstance(counts, mp.data.RecordingDataset)
    expected = np.zeros((12, 2))
    expected[[0, 0, 3, 11], 0] = 1  # bins of 0.1 s from 0: 0.01 and 0.05, 0.31, 1.15
    expected[0, 0] = 2
    expected[2, 1] = 1
    np.testing.assert_array_equal(counts.recordings[0], expected)


def test_nwb_recordings_that_do_not_fit_are_refused(simulated, tmp_path):
    _, data = simulated
    x, y = np.asarray(data.inputs[0]), np.asarray(data.activity[0])
    path = write(tmp_path / "a.nwb", x, y, y_rate=20.0)
    w0 = data.initial_weights[:1]
    with pytest.raises(mp.MetaplasticError, match=r"a.nwb: no time series named 'odour'.*'dff'"):
        mp.data.from_nwb(path, inputs="odour", recorded="dff", initial_weights=w0)
    with pytest.raises(mp.MetaplasticError, match="resample them onto one time base"):
        mp.data.from_nwb(path, inputs="stim", recorded="dff", initial_weights=w0)
    with pytest.raises(mp.MetaplasticError, match="a.nwb: the file has no units table"):
        mp.data.from_nwb(path, inputs="stim", recorded="units", initial_weights=w0)
    with pytest.raises(mp.MetaplasticError, match="exactly one of initial_weights"):
        mp.data.from_nwb(path, inputs="stim", recorded="dff")
    bad = tmp_path / "bad.nwb"
    bad.write_text("no")
    with pytest.raises(mp.MetaplasticError, match="bad.nwb: is not a readable NWB file"):
        mp.data.from_nwb(bad, inputs="stim", recorded="dff", initial_weights=w0)
