"""Recorded trajectories from pynapple objects (`mp.data.from_pynapple`)."""

import sys

import numpy as np
import pynapple as nap
import pytest

import metaplastic as mp


LENGTHS = (6, 5, 4)  # steps of the three trajectories
STEP = 0.1  # seconds


def series(n_channels, *, seed):
    """Three trajectories of `n_channels` random values (float32, as the datasets hold them
    without 64-bit mode), the i-th starting at 10·i s, with two samples between them that
    belong to no epoch: times, values, the epochs' bounds."""
    rng = np.random.default_rng(seed)
    times, values, bounds = [], [], []
    for i, length in enumerate(LENGTHS):
        t = 10.0 * i + STEP * np.arange(length)
        times += [t, t[-1] + [2.0, 3.0]]  # outside every epoch
        values += [rng.normal(size=(length, n_channels)), rng.normal(size=(2, n_channels))]
        bounds.append((t[0], t[-1]))
    return np.concatenate(times), np.concatenate(values).astype(np.float32), np.array(bounds)


@pytest.fixture(scope="module")
def recording():
    t, x, bounds = series(3, seed=0)
    _, y, _ = series(2, seed=1)
    _, r, _ = series(1, seed=2)
    y[(t >= 20.0) & (t <= 21.0), 1] = np.nan  # neuron 1 not recorded in the third epoch
    epochs = nap.IntervalSet(start=bounds[:, 0], end=bounds[:, 1])
    inputs = nap.TsdFrame(t=t, d=x, columns=["x0", "x1", "x2"])
    recorded = nap.TsdFrame(t=t, d=y, columns=["n0", "n1"])
    return inputs, recorded, nap.Tsd(t=t, d=r[:, 0]), epochs


def test_each_epoch_is_a_padded_masked_trajectory(recording):
    inputs, recorded, reward, epochs = recording
    w0 = np.zeros((2, 3))
    data = mp.data.from_pynapple(inputs, recorded, epochs=epochs, initial_weights=w0, reward=reward)
    assert isinstance(data, mp.data.ActivityDataset)
    np.testing.assert_array_equal(data.step_mask.sum(axis=1), LENGTHS)
    np.testing.assert_array_equal(data.neuron_mask, [[True, True], [True, True], [True, False]])
    for i, (start, end) in enumerate(zip(epochs.start, epochs.end)):
        inside = (inputs.t >= start) & (inputs.t <= end)
        n = LENGTHS[i]
        np.testing.assert_array_equal(data.inputs[i, :n], inputs.values[inside])
        np.testing.assert_array_equal(data.rewards[i, :n], reward.values[inside])
        kept = np.asarray(data.neuron_mask[i])
        np.testing.assert_array_equal(
            data.activity[i, :n][:, kept], recorded.values[inside][:, kept]
        )
        np.testing.assert_array_equal(data.inputs[i, n:], 0.0)  # padding
    # The same data as a table give the same dataset.
    rows = np.concatenate([(inputs.t >= s) & (inputs.t <= e) for s, e in epochs.values])
    rows = rows.reshape(len(epochs), -1).any(axis=0)
    label = np.searchsorted(epochs.start, inputs.t[rows], side="right")
    table = {"trajectory": label, "time": inputs.t[rows], "r": reward.values[rows]}
    table |= {c: inputs[c].values[rows] for c in inputs.columns}
    table |= {c: recorded[c].values[rows] for c in recorded.columns}
    same = mp.data.from_table(
        table,
        inputs=["x0", "x1", "x2"],
        recorded=["n0", "n1"],
        initial_weights=w0,
        reward="r",
    )
    for a, b in zip(
        (data.inputs, data.activity, data.step_mask, data.neuron_mask, data.rewards),
        (same.inputs, same.activity, same.step_mask, same.neuron_mask, same.rewards),
    ):
        np.testing.assert_array_equal(a, b)


def test_spike_trains_are_counted_per_step_and_epochs_default_to_the_support():
    t = STEP * np.arange(5)
    inputs = nap.Tsd(t=t, d=np.arange(5.0))
    spikes = nap.TsGroup({3: nap.Ts(t=[0.01, 0.05, 0.31, 0.45, 0.9]), 7: nap.Ts(t=[0.2, 0.21])})
    counts = mp.data.from_pynapple(inputs, spikes, initial_state=np.zeros((1, 2, 1)))
    assert isinstance(counts, mp.data.RecordingDataset)
    expected = np.zeros((5, 2))
    expected[[0, 3, 4], 0] = [2, 1, 1]  # bins of 0.1 s from 0; 0.9 s falls in no bin
    expected[2, 1] = 2
    np.testing.assert_array_equal(counts.recordings[0], expected)
    np.testing.assert_array_equal(counts.inputs[0, :, 0], np.arange(5.0))


def test_pynapple_objects_that_do_not_fit_are_refused(recording):
    inputs, recorded, reward, epochs = recording
    w0 = np.zeros((2, 3))

    def read(x=inputs, y=recorded, **kw):
        kw.setdefault("initial_weights", w0)
        return mp.data.from_pynapple(x, y, **{"epochs": epochs, **kw})

    with pytest.raises(mp.MetaplasticError, match="the inputs must be a pynapple Tsd or TsdF"):
        read(x=inputs.values)
    with pytest.raises(mp.MetaplasticError, match="epochs must be a pynapple IntervalSet"):
        read(epochs=[(0.0, 1.0)])
    with pytest.raises(mp.MetaplasticError, match="exactly one of initial_weights"):
        read(initial_weights=None)
    late = nap.IntervalSet(start=[0.0, 100.0], end=[0.5, 101.0])
    with pytest.raises(
        mp.MetaplasticError, match=r"epoch 1 \(100 to 101 s\) holds no sample of the inputs"
    ):
        read(epochs=late)
    shifted = nap.TsdFrame(t=recorded.t + 0.5 * STEP, d=recorded.values)
    with pytest.raises(
        mp.MetaplasticError, match=r"epoch 0 .*the recording has 5 samples.*one time base"
    ):
        read(y=shifted)
    sparse = recorded[::2]
    with pytest.raises(mp.MetaplasticError, match="the recording has 3 samples"):
        read(y=sparse)
    with pytest.raises(mp.MetaplasticError, match="the reward has 3 samples"):
        read(reward=reward[::2])
    x = inputs.values.copy()
    x[9, 2] = np.nan  # the second sample of epoch 1 (10.1 s)
    with pytest.raises(
        mp.MetaplasticError, match=r"epoch 1 .*the inputs \('x2'\) are NaN at 10.1 s"
    ):
        read(x=nap.TsdFrame(t=inputs.t, d=x, columns=inputs.columns))
    y = recorded.values.copy()
    y[1, 0] = np.nan
    with pytest.raises(
        mp.MetaplasticError, match=r"epoch 0 .*\('n0'\) is NaN at 0.1 s but recorded at other"
    ):
        read(y=nap.TsdFrame(t=recorded.t, d=y, columns=recorded.columns))
    r = reward.values.copy()
    r[0] = np.nan
    with pytest.raises(mp.MetaplasticError, match="the reward is NaN at 0 s"):
        read(reward=nap.Tsd(t=reward.t, d=r))


def test_without_pynapple_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynapple", None)
    with pytest.raises(mp.MissingDependencyError, match=r'pip install "metaplastic\[pynapple\]"'):
        mp.data.from_pynapple(None, None, initial_weights=np.zeros((1, 1)))
