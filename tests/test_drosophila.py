import io
import os
import sys

import jax
import numpy as np
import pytest

import metaplastic as mp
from metaplastic.flies import load_drosophila


sio = pytest.importorskip("scipy.io")


def _onehot(odours):
    odours = np.asarray(odours)
    x = np.zeros((len(odours), 2))
    x[np.arange(len(odours)), odours] = 1.0
    return x


def _write(path, odours, y, r, **extra):
    variables = {
        "X": _onehot(odours),
        "Y": np.asarray(y, float)[None],
        "R": np.asarray(r, float)[None],
    }
    variables.update(extra)
    sio.savemat(str(path), variables)
    return path


# Trials: [A accepted], [B rejected, A rejected, B accepted], [A accepted], [B rejected, B accepted]
ODOURS = [0, 1, 0, 1, 0, 1, 1]
Y = [1, 0, 0, 1, 1, 0, 1]
R = [1, 0, 1, 1]


def _flatten(ds, i):
    pm = np.asarray(ds.presentation_mask[i])
    return np.asarray(ds.odours[i])[pm], np.asarray(ds.choices[i])[pm]


def test_one_file_trials(tmp_path):
    data = load_drosophila(_write(tmp_path / "Fly7.mat", ODOURS, Y, R), window=2)
    ds = data.dataset
    assert ds.odours.shape == (1, 4, 3)
    assert ds.inputs is None
    np.testing.assert_array_equal(ds.odours[0], [[0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(ds.choices[0], [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(
        ds.presentation_mask[0], [[1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    )
    np.testing.assert_array_equal(ds.trial_mask[0], [True] * 4)
    np.testing.assert_array_equal(ds.rewards[0], R)
    # window 2, history starting at zero: E[R]_t = (R_{t-2} + R_{t-1}) / 2.
    np.testing.assert_allclose(ds.expected_rewards[0], [0.0, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(data.block[0], [0, 0, 0, 0])
    (info,) = data.flies
    assert info.name == "Fly7" and info.path.endswith("Fly7.mat")
    assert (info.n_presentations, info.n_trials, info.n_accepted) == (7, 4, 4)
    assert (info.n_rejections, info.n_rewards, info.trailing_rejections) == (3, 3, 0)
    assert info.max_presentations == 3 and not info.incomplete_final_trial
    assert info.rejections_per_block == (3,) and info.trials_with_rejections_per_block == (2,)
    assert info.accept_only_blocks == 0 and not info.accept_only
    row = info.as_row()
    assert row["rejections_per_block"] == "3" and row["incomplete_final_trial"] is False


def test_default_window_is_ten(tmp_path):
    rng = np.random.default_rng(0)
    r = rng.integers(0, 2, 30)
    data = load_drosophila(_write(tmp_path / "a.mat", rng.integers(0, 2, 30), np.ones(30), r))
    assert data.window == 10
    np.testing.assert_allclose(
        data.dataset.expected_rewards[0], mp.behaviour.expected_reward(r.astype(float), window=10)
    )
    # E[R] before trial 12 is the mean of rewards 2..11.
    np.testing.assert_allclose(data.dataset.expected_rewards[0, 12], r[2:12].mean(), rtol=1e-6)


def test_trailing_rejections_are_an_incomplete_final_trial(tmp_path):
    data = load_drosophila(_write(tmp_path / "f.mat", ODOURS + [0, 1], Y + [0, 0], R))
    ds = data.dataset
    info = data.flies[0]
    assert info.trailing_rejections == 2 and info.incomplete_final_trial
    assert (info.n_trials, info.n_accepted, info.n_rejections) == (5, 4, 5)
    assert bool(ds.trial_mask[0, 4])
    np.testing.assert_array_equal(ds.presentation_mask[0, 4], [True, True, False])
    np.testing.assert_array_equal(ds.odours[0, 4, :2], [0, 1])
    assert not bool(ds.accepted[0, 4].any())
    assert float(ds.rewards[0, 4]) == 0.0
    # The four complete trials are unchanged.
    np.testing.assert_array_equal(ds.rewards[0, :4], R)
    # Nothing dropped: all nine presentations come back in order.
    od, ch = _flatten(ds, 0)
    np.testing.assert_array_equal(od, ODOURS + [0, 1])
    np.testing.assert_array_equal(ch, Y + [0, 0])


def test_folder_natural_order_and_padding(tmp_path):
    _write(tmp_path / "Fly10.mat", [1, 1], [0, 1], [0])
    _write(tmp_path / "Fly2.mat", ODOURS, Y, R)
    _write(tmp_path / "Fly1.mat", [0, 1, 0], [1, 1, 1], [1, 1, 0])
    (tmp_path / "notes.txt").write_text("not a fly")
    data = load_drosophila(tmp_path)
    assert data.names == ("Fly1", "Fly2", "Fly10")
    ds = data.dataset
    assert ds.odours.shape == (3, 4, 3)
    np.testing.assert_array_equal(ds.trial_mask.sum(axis=1), [3, 4, 1])
    np.testing.assert_array_equal(data.block[2], [0, -1, -1, -1])
    np.testing.assert_array_equal(ds.presentation_mask.sum(axis=(1, 2)), [3, 7, 2])
    for i, (odours, y) in enumerate([([0, 1, 0], [1, 1, 1]), (ODOURS, Y), ([1, 1], [0, 1])]):
        od, ch = _flatten(ds, i)
        np.testing.assert_array_equal(od, odours)
        np.testing.assert_array_equal(ch, y)
    assert data.flies[0].accept_only and not data.flies[2].accept_only
    # A sequence of files keeps the order given.
    seq = load_drosophila([tmp_path / "Fly10.mat", str(tmp_path / "Fly1.mat")])
    assert seq.names == ("Fly10", "Fly1")


def test_blocks_and_restrictions(tmp_path):
    # 7 trials in blocks of 3; rejections in trials 0 and 4 only.
    _write(tmp_path / "Fly1.mat", [0, 1, 0, 0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 0, 1, 1, 1], [1] * 7)
    _write(tmp_path / "Fly2.mat", [0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0])
    data = load_drosophila(tmp_path, block_size=3)
    np.testing.assert_array_equal(data.block, [[0, 0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, -1, -1]])
    fly1, fly2 = data.flies
    assert fly1.n_blocks == 3 and fly1.rejections_per_block == (1, 1, 0)
    assert fly1.accept_only_blocks == 1 and fly2.accept_only_blocks == 2 and fly2.accept_only

    first = data.first_block()
    assert first.dataset.trial_mask.shape == (2, 3)
    assert first.dataset.odours.shape == (2, 3, 2)  # the 2-presentation trial 4 is cropped
    np.testing.assert_array_equal(first.dataset.rewards, [[1, 1, 1], [0, 1, 0]])
    assert first.flies == data.flies
    uncropped = data.first_block(crop=False)
    assert uncropped.dataset.trial_mask.shape == (2, 7)
    np.testing.assert_array_equal(uncropped.dataset.trial_mask.sum(axis=1), [3, 3])
    assert not bool(uncropped.dataset.presentation_mask[:, 3:].any())
    np.testing.assert_array_equal(uncropped.block[:, 3:], -1)

    second = data.restrict_to_blocks((1,))
    np.testing.assert_array_equal(
        second.dataset.trial_mask, [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]]
    )
    # Expectations keep the whole history: trial 3 of fly 1 sees three earlier rewards.
    np.testing.assert_allclose(second.dataset.expected_rewards[0, 3], 0.3, rtol=1e-6)
    with pytest.raises(mp.MetaplasticError, match="Fly2 has no trial in blocks"):
        data.restrict_to_blocks((2,))

    kept = data.without_accept_only()
    assert kept.names == ("Fly1",) and kept.dataset.odours.shape[0] == 1
    np.testing.assert_array_equal(kept.block, data.block[:1])
    assert data.select(["Fly2", 0]).names == ("Fly2", "Fly1")
    with pytest.raises(mp.MetaplasticError, match="No fly named"):
        data.select(["Fly3"])
    with pytest.raises(mp.MetaplasticError, match="all 1 flies are accept-only|All 1 flies"):
        data.select(["Fly2"]).without_accept_only()


def test_data_is_a_pytree(tmp_path):
    data = load_drosophila(_write(tmp_path / "f.mat", ODOURS, Y, R))
    n_accepted = jax.jit(lambda d: d.dataset.accepted.sum())(data)
    assert int(n_accepted) == 4


def _bad(tmp_path, name="Bad.mat", **variables):
    base = {"X": _onehot(ODOURS), "Y": np.asarray(Y, float)[None], "R": np.asarray(R, float)[None]}
    base.update(variables)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / name
    sio.savemat(str(path), base)
    return path


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"Y": None}, "missing variable 'Y'"),
        ({"R": None}, "missing variable 'R'"),
        ({"X": None}, "missing variable 'X'"),
        ({"R": np.array([[1.0, 0.0, 1.0]])}, r"sum\(Y\) = 4 acceptances but len\(R\) = 3"),
        ({"X": np.zeros((7, 3))}, r"'X' must have shape \(presentations, 2\)"),
        ({"X": _onehot(ODOURS[:5])}, "X has 5 presentations"),
        ({"Y": np.ones((2, 7))}, "'Y' must be a row or column vector"),
        ({"Y": np.array([[1, 0, 0, 2, 1, 0, 1.0]])}, "'Y' must hold only 0 and 1, found 2"),
        ({"R": np.array([[1, 0.5, 1, 1]])}, "'R' must hold only 0 and 1, found 0.5"),
        ({"R": np.array([[1, np.nan, 1, 1]])}, "'R' holds a non-finite value"),
        ({"X": np.where(_onehot(ODOURS) == 1, np.nan, 0.0)}, "'X' holds a non-finite value"),
        ({"X": np.ones((7, 2))}, "row 0 of X is .* not one-hot"),
        ({"Y": np.array(["abcdefg"])}, "'Y' must be numeric"),
        ({"X": np.zeros((0, 2)), "Y": np.zeros((1, 0)), "R": np.zeros((1, 0))}, "no presentation"),
        ({"Y": np.zeros((1, 7)), "R": np.zeros((1, 0))}, "no acceptance"),
    ],
)
def test_bad_file_is_rejected_naming_it(tmp_path, variables, message):
    path = _bad(tmp_path, **variables)
    with pytest.raises(mp.MetaplasticError, match=message) as err:
        load_drosophila(path)
    assert str(path) in str(err.value)
    # In a folder, the bad file is named among good ones.
    _write(tmp_path / "Good.mat", ODOURS, Y, R)
    with pytest.raises(mp.MetaplasticError, match="Bad.mat"):
        load_drosophila(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, this is not a MAT file" * 10, b"\x00" * 300])
def test_not_a_mat_file(tmp_path, content):
    path = tmp_path / "Fly1.mat"
    path.write_bytes(content)
    with pytest.raises(mp.MetaplasticError, match="is not a readable MAT file") as err:
        load_drosophila(path)
    assert str(path) in str(err.value)


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(mp.MetaplasticError, match="holds no .mat file"):
        load_drosophila(tmp_path)
    with pytest.raises(mp.MetaplasticError, match="no such file or folder"):
        load_drosophila(tmp_path / "missing")
    with pytest.raises(mp.MetaplasticError, match="no such file"):
        load_drosophila([tmp_path / "missing.mat"])
    with pytest.raises(mp.MetaplasticError, match="empty list"):
        load_drosophila([])
    path = _write(tmp_path / "f.mat", ODOURS, Y, R)
    with pytest.raises(mp.MetaplasticError, match="window"):
        load_drosophila(path, window=0)
    with pytest.raises(mp.MetaplasticError, match="block_size"):
        load_drosophila(path, block_size=0)


def test_missing_scipy_is_a_clear_import_error(tmp_path, monkeypatch):
    path = _write(tmp_path / "f.mat", ODOURS, Y, R)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    # A MissingDependencyError (an ImportError) naming the extra, quoted as every shell
    # (zsh included) takes it.
    with pytest.raises(
        mp.MissingDependencyError, match=r"'scipy'.*pip install \"metaplastic\[data\]\""
    ):
        load_drosophila(path)


# --- The real recordings (skipped when the shared data folder is absent) ---------------------

ACCEPT_ONLY = {"Fly12", "Fly13", "Fly14", "Fly15", "Fly18"}


def test_real_flies(drosophila_dir):
    data = load_drosophila(drosophila_dir)
    names = tuple(f"Fly{n}" for n in range(1, 19))
    assert data.names == names
    ds = data.dataset
    assert ds.odours.shape[:2] == (18, 240)
    trials = {f.name: f.n_trials for f in data.flies}
    assert trials == {n: {"Fly11": 227, "Fly17": 216}.get(n, 240) for n in names}
    assert {f.name for f in data.flies if f.accept_only} == ACCEPT_ONLY
    for i, info in enumerate(data.flies):
        mat = sio.loadmat(os.path.join(drosophila_dir, f"{info.name}.mat"))
        y, r = mat["Y"].ravel(), mat["R"].ravel()
        # Every presentation comes back, in order, with its odour and choice.
        od, ch = _flatten(ds, i)
        np.testing.assert_array_equal(od, np.argmax(mat["X"], axis=1))
        np.testing.assert_array_equal(ch, y)
        np.testing.assert_array_equal(np.asarray(ds.rewards[i, : info.n_trials]), r)
        assert info.n_presentations == len(y) and info.n_accepted == len(r) == info.n_trials
        assert info.n_rejections == len(y) - len(r) and info.n_rewards == int(r.sum())
        assert info.trailing_rejections == 0 and info.n_blocks == 3
        assert sum(info.rejections_per_block) == info.n_rejections
        # Every accepted trial has exactly one acceptance, at its last presentation.
        valid = np.asarray(ds.trial_mask[i])
        assert (np.asarray(ds.accepted[i]).sum(axis=1)[valid] == 1).all()
        # No rejection was reconstructed in the third block.
        assert info.rejections_per_block[2] == 0
        if info.name in ACCEPT_ONLY:
            assert info.accept_only_blocks == 3 and info.max_presentations == 1
        else:
            assert info.rejections_per_block[0] > 0 and info.accept_only_blocks >= 1
    np.testing.assert_allclose(
        ds.expected_rewards,
        np.where(ds.trial_mask, mp.behaviour.expected_reward(ds.rewards, window=10), 0.0),
        rtol=1e-6,
    )


def test_real_flies_views(drosophila_dir):
    data = load_drosophila(drosophila_dir)
    first = data.first_block()
    assert first.dataset.trial_mask.shape == (18, 80)
    assert bool(first.dataset.trial_mask.all())
    assert bool((first.block == 0).all())
    rejections = (first.dataset.presentation_mask & ~first.dataset.accepted).sum(axis=(1, 2))
    np.testing.assert_array_equal(rejections, [f.rejections_per_block[0] for f in data.flies])
    with_rejections = data.without_accept_only()
    assert len(with_rejections) == 13 and not set(with_rejections.names) & ACCEPT_ONLY
    assert with_rejections.dataset.odours.shape[0] == 13


# --- Fuzzing: mutated files --------------------------------------------------------------------


def _mutations(rng):
    """Yield `(kind, variables or raw bytes, expect)` for one random fly; `expect` is "ok"
    (must load, nothing dropped), "error" (must raise MetaplasticError) or "either" (corrupt
    bytes: loading is allowed only if what comes back is what scipy reads)."""
    p = int(rng.integers(1, 12))
    odours = rng.integers(0, 2, p)
    y = rng.integers(0, 2, p).astype(float)
    y[rng.integers(0, p)] = 1.0  # at least one acceptance
    r = rng.integers(0, 2, int(y.sum())).astype(float)
    x = _onehot(odours)
    good = {"X": x, "Y": y[None], "R": r[None]}

    def with_(**v):
        out = dict(good)
        out.update(v)
        return {k: a for k, a in out.items() if a is not None}

    def poke(a, value):
        a = np.array(a, float)
        a.reshape(-1)[rng.integers(0, a.size)] = value
        return a

    name = str(rng.choice(["X", "Y", "R"]))
    yield "valid", good, "ok"
    yield "column vectors", with_(Y=y[:, None], R=r[:, None]), "ok"
    yield "integer and boolean dtypes", with_(X=x.astype(np.uint8), Y=y[None] > 0.5), "ok"
    yield "extra variable", with_(notes=np.array(["hello"])), "ok"
    yield f"missing {name}", with_(**{name: None}), "error"
    yield f"NaN in {name}", with_(**{name: poke(good[name], np.nan)}), "error"
    yield f"Inf in {name}", with_(**{name: poke(good[name], -np.inf)}), "error"
    bad_value = float(rng.choice([2.0, -1.0, 0.5, 1e300]))
    yield f"{bad_value} in {name}", with_(**{name: poke(good[name], bad_value)}), "error"
    yield f"text {name}", with_(**{name: np.array(["01" * p])}), "error"
    yield f"complex {name}", with_(**{name: good[name] + 1j}), "error"
    yield f"cell {name}", with_(**{name: np.array([good[name]], dtype=object)}), "error"
    yield f"struct {name}", with_(**{name: {"a": good[name]}}), "error"
    extra = float(rng.integers(0, 2))
    yield "one reward too many", with_(R=np.append(r, extra)[None]), "error"
    if len(r) > 1:
        yield "one reward too few", with_(R=r[None, :-1]), "error"
    yield "X transposed", with_(X=x.T) if p != 2 else with_(X=x[:, :1]), "error"
    yield "X with a third column", with_(X=np.concatenate([x, x[:, :1] * 0], 1)), "error"
    yield "X as a vector", with_(X=odours[None].astype(float)), "error"
    yield "Y as a matrix", with_(Y=np.tile(y, (2, 1))), "error"
    yield "R as a 3-d array", with_(R=r[None, None]), "error"
    yield "X one row short", with_(X=x[:-1] if p > 1 else np.zeros((0, 2))), "error"
    yield "X row not one-hot", with_(X=poke(x, 1.0) if p > 0 else x), "either"
    yield "empty", with_(X=np.zeros((0, 2)), Y=np.zeros((1, 0)), R=np.zeros((1, 0))), "error"
    yield "no acceptance", with_(Y=np.zeros((1, p)), R=np.zeros((1, 0))), "error"
    buf = io.BytesIO()
    sio.savemat(buf, good)
    raw = buf.getvalue()
    yield "truncated", raw[: int(rng.integers(0, len(raw)))], "either"
    flipped = bytearray(raw)
    for i in rng.integers(0, len(raw), int(rng.integers(1, 4))):
        flipped[i] ^= 1 << int(rng.integers(0, 8))
    yield "bits flipped", bytes(flipped), "either"
    yield "random bytes", rng.bytes(int(rng.integers(0, 400))), "either"


def _read_back(path):
    """What the file says, read directly with scipy: odours and choices in order."""
    mat = sio.loadmat(str(path))
    return np.argmax(mat["X"], axis=1), np.asarray(mat["Y"], float).reshape(-1)


def test_mutated_files_load_whole_or_fail_clearly(tmp_path):
    """Seeded fuzzing of the loader: 40 random flies x 26-27 mutations each (~1,060 files).
    Every file either loads with every presentation back in order, or raises a
    MetaplasticError naming the file; the counts are printed (run with -s) and checked."""
    rng = np.random.default_rng(2024)
    counts = {"ok": 0, "error": 0, "either": 0, "loaded": 0, "refused": 0}
    for fly in range(40):
        for case, (kind, content, expect) in enumerate(_mutations(rng)):
            path = tmp_path / f"Fly{fly}_{case}.mat"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                sio.savemat(str(path), content)
            counts[expect] += 1
            try:
                data = load_drosophila(path)
            except mp.MetaplasticError as err:
                assert expect != "ok", f"{kind}: a valid file was refused: {err}"
                assert str(path) in str(err), f"{kind}: the error does not name the file: {err}"
                counts["refused"] += 1
                continue
            assert expect != "error", f"{kind}: a bad file was loaded without an error"
            counts["loaded"] += 1
            odours, choices = _read_back(path)
            od, ch = _flatten(data.dataset, 0)
            np.testing.assert_array_equal(od, odours, err_msg=kind)
            np.testing.assert_array_equal(ch, choices, err_msg=kind)
            assert data.flies[0].n_presentations == len(choices)
    print(f"loader fuzz: {sum(counts[k] for k in ('ok', 'error', 'either'))} files, {counts}")
    assert counts["ok"] == 160 and counts["error"] >= 700 and counts["either"] >= 160
    assert counts["loaded"] >= counts["ok"] and counts["refused"] >= counts["error"]
