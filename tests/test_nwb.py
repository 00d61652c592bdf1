"""Flies in NWB files: `mp.flies.save_nwb` and `mp.flies.load_nwb`."""

import dataclasses
import datetime
import sys

import numpy as np
import pynwb
import pytest

import metaplastic as mp


def test_flies_survive_a_round_trip_through_nwb_files(drosophila_dir, tmp_path):
    files = [f"{drosophila_dir}/Fly{i}.mat" for i in (1, 12, 18)]  # Fly12: accept-only
    data = mp.flies.load_drosophila(files)
    paths = mp.flies.save_nwb(data, tmp_path)
    assert [p.name for p in paths] == ["Fly1.nwb", "Fly12.nwb", "Fly18.nwb"]
    back = mp.flies.load_nwb(tmp_path)
    for field in ("odours", "choices", "presentation_mask", "trial_mask", "rewards"):
        np.testing.assert_array_equal(
            np.asarray(getattr(back.dataset, field)), np.asarray(getattr(data.dataset, field))
        )
    np.testing.assert_array_equal(back.dataset.expected_rewards, data.dataset.expected_rewards)
    for ours, theirs, path in zip(back.flies, data.flies, paths):
        assert ours.path == str(path)
        assert dataclasses.replace(ours, path="") == dataclasses.replace(theirs, path="")
    with pynwb.NWBHDF5IO(str(paths[0]), "r") as io:
        nwb = io.read()
        assert nwb.subject.subject_id == "Fly1"
        assert len(nwb.trials) == data.flies[0].n_presentations
    # One file, or a list of files in the order given.
    assert mp.flies.load_nwb(paths[1]).names == ("Fly12",)
    assert mp.flies.load_nwb([paths[2], paths[0]]).names == ("Fly18", "Fly1")


def _nwb(path, trials=True, choice=1):
    nwb = pynwb.NWBFile(
        session_description="test",
        identifier="x",
        session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
    )
    if trials:
        for c in ("odour", "choice", "reward"):
            nwb.add_trial_column(name=c, description=c)
        nwb.add_trial(start_time=0.0, stop_time=1.0, odour=0, choice=0, reward=np.nan)
        nwb.add_trial(start_time=1.0, stop_time=2.0, odour=1, choice=choice, reward=1.0)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_nwb_files_that_cannot_be_read_are_named(tmp_path):
    good = _nwb(tmp_path / "good.nwb")
    assert mp.flies.load_nwb(good, trial=None).names == ("good",)  # no subject: the file name
    with pytest.raises(mp.MetaplasticError, match="bare.nwb: the file has no trials table"):
        mp.flies.load_nwb(_nwb(tmp_path / "bare.nwb", trials=False))
    with pytest.raises(mp.MetaplasticError, match=r"two.nwb: table: column 'choice' is 2 at row"):
        mp.flies.load_nwb(_nwb(tmp_path / "two.nwb", choice=2), trial=None)
    with pytest.raises(mp.MetaplasticError, match=r"good.nwb: table: no column 'trial'"):
        mp.flies.load_nwb(good)
    text = tmp_path / "text.nwb"
    text.write_text("not HDF5")
    with pytest.raises(mp.MetaplasticError, match="text.nwb: is not a readable NWB file"):
        mp.flies.load_nwb(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mp.MetaplasticError, match="the folder holds no .nwb file"):
        mp.flies.load_nwb(empty)


def test_without_pynwb_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(mp.MissingDependencyError, match=r'pip install "metaplastic\[nwb\]"'):
        mp.flies.load_nwb(tmp_path)
