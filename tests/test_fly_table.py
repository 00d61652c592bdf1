"""Flies from a table (`mp.flies.from_table`) and back (`DrosophilaData.to_dataframe`)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

import metaplastic as mp


def test_the_real_flies_survive_a_round_trip_through_a_table(drosophila_dir):
    data = mp.flies.load_drosophila(drosophila_dir)
    table = data.to_dataframe()
    assert list(table.columns) == ["subject", "trial", "block", "odour", "choice", "reward"]
    assert len(table) == sum(f.n_presentations for f in data.flies)
    labelled = table.assign(odour=table["odour"].map({0: "OCT", 1: "MCH"}))
    for back in (
        mp.flies.from_table(table, trial="trial"),
        mp.flies.from_table(labelled, odours=("OCT", "MCH")),
        mp.flies.from_table({k: table[k].to_numpy() for k in table.columns}),  # plain NumPy
    ):
        for field in dataclasses.fields(data.dataset):
            a, b = getattr(data.dataset, field.name), getattr(back.dataset, field.name)
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=field.name)
        np.testing.assert_array_equal(np.asarray(back.block), np.asarray(data.block))
        for ours, theirs in zip(back.flies, data.flies):
            assert ours.path == f"table:{ours.name}"
            assert dataclasses.replace(ours, path="") == dataclasses.replace(theirs, path="")


def small_table(**changes):
    table = pd.DataFrame(
        {
            "fly": ["a", "a", "a", "b", "b", "b", "b"],
            "trial": [0, 0, 1, 0, 1, 1, 2],
            "odour": [0, 1, 0, 1, 0, 1, 1],
            "accepted": [0, 1, 1, 1, 0, 1, 0],
            "reward": [np.nan, 1, 0, 1, np.nan, 0, np.nan],
        }
    )
    for column, (row, value) in changes.items():
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
    return table


NAMES = dict(subject="fly", choice="accepted", trial="trial")


def test_a_small_table_gives_trials_ended_by_acceptances():
    data = mp.flies.from_table(small_table(), **NAMES, block_size=2)
    assert data.names == ("a", "b")
    a, b = data.flies
    assert (a.n_trials, a.n_presentations, a.n_rejections, a.n_rewards) == (2, 3, 1, 1)
    # b ends with a rejection that no acceptance completes: a final trial without one.
    assert (b.n_trials, b.trailing_rejections, b.n_blocks) == (3, 1, 2)
    np.testing.assert_array_equal(np.asarray(data.dataset.rewards)[1], [1, 0, 0])
    np.testing.assert_array_equal(np.asarray(data.block)[0], [0, 0, -1])


@pytest.mark.parametrize(
    "changes, names, message",
    [
        ({}, {"choice": "choice"}, r"no column 'choice' \(the choice\)"),
        ({"accepted": (2, 0.5)}, {}, r"'accepted' is 0.5 at row 2 \(subject 'a'\)"),
        ({"accepted": (2, "yes")}, {}, "'accepted' must be numeric"),
        ({"reward": (1, np.nan)}, {}, r"'reward' is nan at row 1 .* an acceptance"),
        ({"reward": (3, 2)}, {}, "its reward must be 0 or 1"),
        ({"reward": (0, 1)}, {}, r"'reward' is 1 at row 0 \(subject 'a'\), a rejection"),
        ({"odour": (0, 2)}, {}, r"exactly two odours, found 3"),
        ({"odour": (4, None)}, {}, r"'odour' is empty/NaN at row 4"),
        ({"fly": (2, None)}, {}, r"'fly' is empty/NaN at row 2"),
        ({"trial": (1, 1)}, {}, r"trial 1 of subject 'a' does not end with its only acceptance"),
        ({"trial": (5, 2)}, {}, r"trial 2 of subject 'b' does not end with its only acceptance"),
        ({"trial": (2, -1)}, {}, r"'trial' decreases at row 2 \(subject 'a'\)"),
    ],
)
def test_bad_tables_are_refused_naming_column_row_and_subject(changes, names, message):
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.flies.from_table(small_table(**changes), **(NAMES | names))


def test_more_table_errors():
    with pytest.raises(mp.MetaplasticError, match="the table is empty"):
        mp.flies.from_table(small_table().iloc[:0], **NAMES)
    only_rejections = small_table(accepted=(1, 0), reward=(1, np.nan))
    only_rejections.loc[2, ["accepted", "reward"]] = [0, np.nan]
    with pytest.raises(mp.MetaplasticError, match="subject 'a' has no acceptance in its 3 rows"):
        mp.flies.from_table(only_rejections, subject="fly", choice="accepted")
    with pytest.raises(mp.MetaplasticError, match="columns of different lengths"):
        mp.flies.from_table({"subject": [1, 1], "odour": [0], "choice": [1, 1], "reward": [1, 0]})
    with pytest.raises(mp.MetaplasticError, match="not one of the odours"):
        mp.flies.from_table(small_table(), **NAMES, odours=(0, 7))
    with pytest.raises(mp.MetaplasticError, match="needs a pandas DataFrame or a mapping"):
        mp.flies.from_table([1, 2, 3])
