"""Recorded trajectories from a wide table (`mp.data.from_table`)."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pandas as pd
import pytest

import metaplastic as mp


INPUTS, NEURONS = ["x0", "x1", "x2"], ["n0", "n1"]


@pytest.fixture(scope="module")
def recorded():
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=0.5, activation="identity")
    x = 0.5 * jr.normal(jr.key(0), (3, 6, 3))
    w0 = 0.3 * jr.normal(jr.key(1), (3, 2, 3))
    data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))
    rows = []
    for i, length in enumerate((6, 5, 4)):  # trajectories of different lengths
        for t in range(length):
            row = {"trial": f"t{i}", "step": 10 * t, "reward": float(i + t)}
            row |= {c: float(data.inputs[i, t, j]) for j, c in enumerate(INPUTS)}
            for k, c in enumerate(NEURONS):
                # neuron n1 was not recorded in the third trajectory
                row[c] = np.nan if (i, k) == (2, 1) else float(data.activity[i, t, k])
            rows.append(row)
    table = pd.DataFrame(rows)
    # Rows in any order within a trajectory, trajectories in the order of their first row.
    table = pd.concat([table.iloc[:6].iloc[::-1], table.iloc[6:]], ignore_index=True)
    return teacher, data, table


def read(table, **kw):
    return mp.data.from_table(
        table, inputs=INPUTS, recorded=NEURONS, trajectory="trial", time="step", **kw
    )


def test_a_table_gives_the_padded_masked_dataset(recorded):
    teacher, data, table = recorded
    back = read(table, initial_weights=np.asarray(data.initial_weights), reward="reward")
    assert isinstance(back, mp.data.ActivityDataset)
    np.testing.assert_array_equal(back.step_mask.sum(axis=1), [6, 5, 4])
    np.testing.assert_array_equal(back.neuron_mask, [[True, True], [True, True], [True, False]])
    for i, length in enumerate((6, 5, 4)):
        np.testing.assert_array_equal(back.inputs[i, :length], data.inputs[i, :length])
        np.testing.assert_array_equal(back.inputs[i, length:], 0.0)
        recorded_here = np.asarray(back.neuron_mask[i])
        np.testing.assert_array_equal(
            back.activity[i, :length, recorded_here], data.activity[i, :length, recorded_here]
        )
        np.testing.assert_array_equal(back.rewards[i, :length], i + np.arange(length))
    # The loss of the teacher on the table's data is the loss on the same steps of the arrays.
    same = mp.data.ActivityDataset(
        data.inputs,
        data.activity,
        data.initial_weights,
        step_mask=np.asarray(back.step_mask),
        neuron_mask=np.asarray(back.neuron_mask),
    )
    loss = mp.losses.ActivityMSE()
    assert float(loss(teacher, back)) == pytest.approx(float(loss(teacher, same)), abs=1e-12)


def test_a_table_gives_a_recording_dataset_for_any_network(recorded):
    _, data, table = recorded
    state = jnp.asarray(data.initial_weights)
    back = read(table, initial_state=state)
    assert isinstance(back, mp.data.RecordingDataset) and back.rewards is None
    np.testing.assert_array_equal(back.recordings[0], data.activity[0])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.drop(columns="n0"), r"no column 'n0' \(a recorded neuron\)"),
        (lambda t: t.iloc[:0], "the table is empty"),
        (lambda t: t.assign(x1=t["x1"].astype(object).where(t.index != 3, "a")), "'x1'"),
        (
            lambda t: t.assign(step=t["step"].where(t.index != 7, 0)),
            "time step 0 of trajectory 't1' appears twice",
        ),
        (
            lambda t: t.assign(x2=t["x2"].where(t.index != 8, np.nan)),
            r"'x2' \(an input\) is empty/NaN at row 8 \(trajectory 't1'\)",
        ),
        (
            lambda t: t.assign(n0=t["n0"].where(t.index != 9, np.nan)),
            r"'n0' is empty/NaN at row 9 \(trajectory 't1'\) but recorded at other steps",
        ),
    ],
)
def test_bad_tables_are_refused_naming_column_row_and_trajectory(recorded, edit, message):
    _, data, table = recorded
    with pytest.raises(mp.MetaplasticError, match=message):
        read(edit(table), initial_weights=np.asarray(data.initial_weights))


def test_exactly_one_initial_state_is_given(recorded):
    _, data, table = recorded
    with pytest.raises(mp.MetaplasticError, match="exactly one of initial_weights"):
        read(table)
    with pytest.raises(mp.MetaplasticError, match="exactly one of initial_weights"):
        read(table, initial_weights=data.initial_weights, initial_state=data.initial_weights)
    with pytest.raises(mp.MetaplasticError, match="initial_weights"):
        read(table, initial_weights=np.zeros((2, 2, 3)))  # two trajectories' weights for three
