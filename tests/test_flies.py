"""Per-fly rule fits (`fit_families`), their train/test masks and the paired comparisons."""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import run_example, write_random_flies

import metaplastic as mp
from metaplastic.flies._fits import _encode, _masks, _score, _tile
from metaplastic.flies._splits import trial_splits


sio = pytest.importorskip("scipy.io")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_flies(generated, folder, first=1):
    """Write simulated flies as `.mat` files in the format of the real recordings."""
    mp.flies.save_drosophila(generated.data, folder, first=first)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two flies whose weights follow a known covariance rule, Δw = 2·x·r + 0.2·x, and one
    without plasticity, in three blocks of 40 trials."""
    folder = tmp_path_factory.mktemp("flies")
    task = mp.behaviour.OperantTask(((0.8, 0.2), (0.2, 0.8), (0.8, 0.2)), (40, 40, 40))
    truth = mp.TaylorRule.from_expression("2*x*r + 0.2*x", factors=("x", "w", "r"), order=1)
    teacher = mp.behaviour.MushroomBody(truth, key=jr.key(1))
    encoding = mp.behaviour.OdourEncoding(2, key=jr.key(2))
    _write_flies(mp.behaviour.generate_behaviour(teacher, task, encoding, 2, key=jr.key(3)), folder)
    still = teacher.with_rule(mp.TaylorRule.zeros(("x", "w", "r"), 1))
    _write_flies(
        mp.behaviour.generate_behaviour(still, task, encoding, 1, key=jr.key(4)), folder, 3
    )
    return mp.flies.load_drosophila(folder, block_size=40)


KEY = jr.key(5)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three random flies of 30 trials (blocks of 10), with rejections."""
    folder = tmp_path_factory.mktemp("small")
    write_random_flies(folder, [30, 29, 28])
    return mp.flies.load_drosophila(folder, block_size=10)


@pytest.fixture(scope="module")
def fitted(simulated):
    return mp.flies.fit_families(
        simulated, ("covariance",), resamples=1, fractions=(0.5,), steps=6, key=KEY
    )["covariance"]


@pytest.mark.slow  # about 30 s: generating the flies and compiling the fit
def test_covariance_family_explains_a_covariance_fly(fitted):
    fits = fitted
    assert fits.names == ("Fly1", "Fly2", "Fly3")
    assert fits.held_out.shape == (1, 3) and fits.in_sample.shape == (3,)
    # The flies that learn with the rule are explained far better than by no plasticity,
    # and far better than the fly without plasticity is.
    assert fits.in_sample[0] > 30 and fits.in_sample[1] > 30
    assert abs(fits.in_sample[2]) < 10
    assert fits.block1[:2].min() > 20
    # The reward-modulated term carries the learning: positive for the learners, about
    # zero for the fly that does not learn.
    xr = fits.coefficients["x*r"]
    assert xr[0] > 0.3 and xr[1] > 0.3 and abs(xr[2]) < 0.2
    assert set(fits.coefficients) == {"1", "r", "x", "x*r"}
    # Only the family's terms were free: every other coefficient stayed exactly zero.
    c = np.asarray(fits.rules.coefficients)
    free = mp.TaylorRule.zeros(("x", "y", "w", "r"), 1).mask(["1", "r", "x", "x*r"])
    assert np.all(c[:, ~free] == 0.0)
    rows = fits.rows()
    assert rows[0]["fly"] == "Fly1" and rows[0]["coef_x*r"] == pytest.approx(float(xr[0]))
    table = fits.to_dataframe()  # one row per fly, the same columns in the same order
    assert list(table.columns) == list(rows[0]) and table.to_dict("records") == rows


OPPOSITE_VARIANCE = 0.005


@pytest.fixture(scope="module")
def opposite(tmp_path_factory):
    """Two simulated flies: Fly1 learns by Δw = 2·x·r, Fly2 by Δw = -2·x·r (it learns to
    avoid what rewarded it), three blocks of 20 trials of at most 20 presentations."""
    folder = tmp_path_factory.mktemp("opposite")
    task = mp.behaviour.OperantTask(((0.8, 0.2), (0.2, 0.8), (0.8, 0.2)), 20, max_presentations=20)
    # Noise of variance 0.005: at the published 0.015² the avoiding fly's choices become
    # nearly deterministic within a few trials and `1, r, x` alone explain 92 % of their
    # deviance, so 60 trials do not determine the sign of its `x*r` (fitted ≈ −0.01).
    encoding = mp.behaviour.OdourEncoding(2, variance=OPPOSITE_VARIANCE, key=jr.key(2))
    for fly, expression in ((1, "2*x*r"), (2, "-2*x*r")):
        truth = mp.TaylorRule.from_expression(expression, factors=("x", "w", "r"), order=1)
        teacher = mp.behaviour.MushroomBody(truth, key=jr.key(1))
        generated = mp.behaviour.generate_behaviour(teacher, task, encoding, 1, key=jr.key(fly))
        _write_flies(generated, folder, fly)
    return mp.flies.load_drosophila(folder, block_size=20)


def test_per_fly_fit_finds_each_fly_s_sign_of_learning(opposite):
    fits = mp.flies.fit_families(
        opposite,
        ("covariance",),
        resamples=1,
        fractions=(),
        steps=6,
        input_variance=OPPOSITE_VARIANCE,
        key=KEY,
    )["covariance"]
    assert fits.names == ("Fly1", "Fly2")
    # Both flies learn from reward, so the fitted rule beats no plasticity in sample...
    assert np.all(fits.in_sample > 30)
    # ...and the reward term has each fly's own generating sign.
    xr = fits.coefficients["x*r"]
    assert xr[0] > 0.5 and xr[1] < -0.5


def test_trial_splits_split_trials_and_masks_presentations(small):
    simulated = small
    names, fit_on, score_on = trial_splits(simulated, (0.5, 0.8))
    assert names == [
        "all",
        "held_out_0.5",
        "held_out_0.8",
        "block1",
        "block1_held_out_0.5",
        "block1_held_out_0.8",
    ]
    tm = np.asarray(simulated.dataset.trial_mask)
    n = tm.sum(axis=1)
    for c in (1, 2):
        f = (0.5, 0.8)[c - 1]
        # Fit and score sets partition each fly's trials at floor(f · trials).
        assert not np.any(fit_on[c] & score_on[c])
        assert np.array_equal(fit_on[c] | score_on[c], tm)
        for fly in range(len(n)):
            cut = int(np.floor(f * n[fly]))
            assert fit_on[c, fly].sum() == cut and score_on[c, fly, cut]
            assert not score_on[c, fly, cut - 1]
    first = np.asarray(simulated.block) == 0
    assert np.array_equal(fit_on[3], first) and np.array_equal(score_on[3], first)
    assert np.array_equal(fit_on[4] | score_on[4], first) and not np.any(fit_on[4] & score_on[4])
    assert fit_on[4, 0].sum() == 5  # half of a 10-trial block 1
    # The presentation masks keep exactly the presentations of the selected trials.
    encoded = mp.behaviour.encode_odours(
        simulated.dataset, mp.behaviour.OdourEncoding(2), key=jr.key(0)
    )
    packed = mp.behaviour.PackedChoiceDataset.from_choices(encoded)
    held = mp.flies.presentation_masks(packed, score_on[1])
    trial = np.asarray(packed.trial_index)
    valid = np.asarray(packed.presentation_mask)
    for fly in range(len(n)):
        cut = int(np.floor(0.5 * n[fly]))
        assert np.array_equal(held[fly], valid[fly] & (trial[fly] >= cut))
        assert held[fly].sum() == np.asarray(simulated.dataset.presentation_mask)[fly, cut:].sum()


@pytest.mark.slow  # shares the fit above
def test_held_out_scores_only_held_out_trials(simulated, fitted):
    """A held-out score is the deviance over the held-out presentations alone, with the
    weights replayed through every trial: recompute it by hand for one fly."""
    data, fits, key = simulated, fitted, KEY
    # The same draws and initial weights as inside fit_families (the same key splits).
    k_draws, _, _ = jr.split(key, 3)
    network = mp.behaviour.MushroomBody(mp.TaylorRule.zeros(("x", "y", "w", "r"), 0), key=k_draws)
    packed, w0 = _encode(
        data, 1, 2, mp.behaviour.DEFAULT_INPUT_VARIANCE, "presentation", 0.01, 10, k_draws
    )
    names, fit_on, score_on = trial_splits(data, (0.5,))
    assert names[:2] == ["all", "held_out_0.5"]
    n_configs = len(names)
    members = _tile(packed, n_configs, len(data))
    member_w0 = _tile(w0, n_configs, len(data))
    fit_mask = _masks(packed, fit_on, n_configs, len(data), 1)
    score_mask = _masks(packed, score_on, n_configs, len(data), 1)
    m = 1 * len(data) + 0  # members are (configuration, fly): held_out_0.5, Fly1
    trial = np.asarray(members.trial_index[m, 0])
    valid = np.asarray(members.presentation_mask[m, 0])
    cut = int(np.asarray(data.dataset.trial_mask)[0].sum()) // 2
    assert np.array_equal(score_mask[m, 0], valid & (trial >= cut))
    assert np.array_equal(fit_mask[m, 0], valid & (trial < cut))
    # Score the rule fitted on all trials on the held-out mask, by the library and by hand.
    rule = fits.rules
    tile = lambda a: (
        jnp.concatenate([a] * (len(members) // len(data))) if eqx.is_inexact_array(a) else a
    )
    held, _ = _score(network, jax.tree.map(tile, rule), members, member_w0, score_mask, True)
    net = network.with_rule(jax.tree.map(lambda a: a[0] if eqx.is_inexact_array(a) else a, rule))
    net = eqx.tree_at(lambda n: n.initial_weights, net, jnp.asarray(member_w0[m, 0]))
    one = jax.tree.map(lambda a: jnp.asarray(a[m]), members)
    masked = eqx.tree_at(lambda d: d.presentation_mask, one, jnp.asarray(score_mask[m]))
    ll = float(mp.behaviour.choice_log_likelihood(net, masked).sum())
    ll0 = float(mp.behaviour.choice_log_likelihood(mp.behaviour.null_network(net), masked).sum())
    assert held[m] == pytest.approx(100 * (ll0 - ll) / ll0, rel=1e-4)
    # Scoring the first half instead gives another number: the mask is what selects trials.
    first = eqx.tree_at(lambda d: d.presentation_mask, one, jnp.asarray(fit_mask[m]))
    assert float(mp.behaviour.choice_log_likelihood(net, first).sum()) != pytest.approx(ll)
    # The replay runs through the held-out trials from the weights the rule produced.
    weights = np.asarray(mp.behaviour.replay(net, one).weights[0])
    assert not np.allclose(weights[cut], np.asarray(member_w0[m, 0]))


def test_compare_scores_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([2.0, 1.0, 5.0, 7.0, 5.0])  # differences 1, -1, 2, 3, 0
    c = mp.flies.compare_scores(a, b)
    assert (c.n, c.n_improved, c.n_worse) == (5, 3, 1)
    assert c.median_difference == 1.0
    # Zero dropped; ranks of |1|, |-1|, 2, 3 are 1.5, 1.5, 3, 4: W+ = 8.5, W- = 1.5.
    assert c.statistic == pytest.approx(1.5)
    assert 0.0 < c.p_value <= 1.0
    # An exact, tie-free case: differences 1, -2, 3, 4, 5, 6 have ranks 1..6 and W- = 2. Of
    # the 2^6 equally likely sign patterns under H0, 3 have W- <= 2 (negative ranks {}, {1},
    # {2}) and, by symmetry, 3 have W+ <= 2: the two-sided p-value is 6 / 64.
    d = np.array([1.0, -2.0, 3.0, 4.0, 5.0, 6.0])
    exact = mp.flies.compare_scores(np.zeros(6), d)
    assert exact.statistic == pytest.approx(2.0)
    assert exact.p_value == pytest.approx(6 / 64, rel=1e-9)
    assert mp.flies.compare_scores(d, np.zeros(6)).p_value == pytest.approx(6 / 64, rel=1e-9)
    same = mp.flies.compare_scores(a, a)
    assert same.n_improved == 0 and np.isnan(same.p_value)
    with pytest.raises(mp.MetaplasticError, match="equal-length"):
        mp.flies.compare_scores(a, b[:3])


def test_compare_scores_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(mp.MissingDependencyError, match="metaplastic\\[data\\]"):
        mp.flies.compare_scores(np.array([1.0, 2.0]), np.array([2.0, 3.0]))


def test_fit_families_rejects_bad_input(small):
    simulated = small
    with pytest.raises(mp.MetaplasticError, match="families"):
        mp.flies.fit_families(simulated, ("hebb",), key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="fractions"):
        mp.flies.fit_families(simulated, ("covariance",), fractions=(1.2,), key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="reward_signal"):
        mp.flies.fit_families(simulated, ("covariance",), reward_signal="dopamine", key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="resamples"):
        mp.flies.fit_families(simulated, ("covariance",), resamples=0, key=jr.key(0))


# --- The real recordings (skipped when the shared data folder is absent) ---------------------
def test_real_flies_fit(drosophila_dir):
    data = mp.flies.load_drosophila(drosophila_dir).select(["Fly1", "Fly12"])
    fits = mp.flies.fit_families(
        data,
        ("covariance", "forgetting"),
        resamples=1,
        fractions=(0.5,),
        steps=4,
        key=jr.key(0),
    )
    cov, fgt = fits["covariance"], fits["forgetting"]
    assert cov.names == ("Fly1", "Fly12") and cov.accept_only.tolist() == [False, True]
    for f in (cov, fgt):
        assert np.all(np.isfinite(f.in_sample)) and np.all(np.isfinite(f.held_out))
        assert f.in_sample.min() > 0  # plasticity beats a constant p(accept) = 0.5
    assert fgt.without_accept_only().names == ("Fly1",)
    comparison = mp.flies.compare_families(cov, fgt, "held_out", fraction=0.5)
    assert comparison.n == 2


@pytest.mark.slow
def test_example_runs_on_the_real_flies(drosophila_dir, tmp_path):
    summary = run_example(
        "drosophila.py",
        *("--data", drosophila_dir, "--out", str(tmp_path)),
        *("--families", "covariance,forgetting", "--fractions", "0.5"),
    )
    assert summary["forgetting_improves"]["in_sample"]["of"] == 18
    assert 0 <= summary["forgetting_improves"]["in_sample"]["improved"] <= 18
    (run,) = tmp_path.iterdir()
    assert (run / "flies.csv").read_text().count("\n") == 19
    assert (run / "held_out_curve.png").exists()


def test_example_without_data_folder(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "drosophila.py"),
            "--data",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_base_rate_scores_by_hand(small):
    scores = mp.flies.base_rate_scores(small, (0.5,))
    ch = np.asarray(small.dataset.choices)[0]
    pm = np.asarray(small.dataset.presentation_mask)[0]
    # Block 1 (trials 0-9) of fly 1, in sample: smoothed rate, against p = 0.5.
    k, n = ch[:10][pm[:10]].sum(), pm[:10].sum()
    p = (k + 1) / (n + 2)
    ll = k * np.log(p) + (n - k) * np.log(1 - p)
    assert scores["block1"][0] == pytest.approx(100 * (ll - n * np.log(0.5)) / (-n * np.log(0.5)))
    # Held out: the rate of the first 15 trials, scored on the last 15.
    k1, n1 = ch[:15][pm[:15]].sum(), pm[:15].sum()
    p1 = (k1 + 1) / (n1 + 2)
    k2, n2 = ch[15:30][pm[15:30]].sum(), pm[15:30].sum()
    ll2 = k2 * np.log(p1) + (n2 - k2) * np.log(1 - p1)
    expected = 100 * (ll2 - n2 * np.log(0.5)) / (-n2 * np.log(0.5))
    assert scores["held_out"][0, 0] == pytest.approx(expected)
    assert scores["block1_held_out"].shape == (1, 3)


def test_held_out_curve_figure(tmp_path):
    pytest.importorskip("matplotlib")
    scores = {"a": np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]), "b": np.zeros((2, 3))}
    fig = mp.plot.held_out_curve([0.5, 0.8], scores, path=tmp_path / "curve.png")
    (ax,) = fig.axes
    medians = [line.get_ydata().tolist() for line in ax.get_lines() if line.get_label() == "a"]
    assert medians == [[2.0, 3.0]]  # the median over flies at each fraction
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(mp.MetaplasticError, match="shape"):
        mp.plot.held_out_curve([0.5, 0.8], {"a": np.zeros((3, 3))})


# --- Options of the published protocol and the reversed-indexing family ----------------------
def test_published_indexing_maps_w_to_y_and_covariance_onto_itself():
    """The published four-factor tensor has its axes in the order (r, w, y, x) while its
    coefficients are addressed as [x][y][w][r]: the coefficient it names `w` multiplies `y`,
    `x` and `r` swap, and the covariance terms map onto themselves."""
    named = ("x", "y", "w", "r")  # how the published code addresses a coefficient
    actual = named[::-1]  # the axis order of its synapse tensor

    def meaning(term):
        c = np.zeros((2, 2, 2, 2))
        c[mp.TaylorRule.zeros(named, 1).monomial(term) if term != "1" else (0, 0, 0, 0)] = 1.0
        # The same monomial whatever the printing order of its factors.
        return "*".join(sorted(mp.TaylorRule(c, actual).to_expression().split("*")))

    assert meaning("w") == "y"
    assert meaning("x") == "r" and meaning("r") == "x"
    assert {meaning(t) for t in mp.flies.FAMILY_TERMS["covariance"]} == {"1", "r", "x", "r*x"}
    assert mp.flies.FAMILY_TERMS["forgetting_y"] == ("1", "r", "x", "x*r", "y")
    rule = mp.flies.family_rule("forgetting_y", key=jr.key(0))
    free = mp.TaylorRule.zeros(("x", "y", "w", "r"), 1).mask(["1", "r", "x", "x*r", "y"])
    assert np.array_equal(np.asarray(rule.trainable), free)


def test_padded_l1_by_hand(small):
    pm = np.asarray(small.dataset.presentation_mask)
    trials = np.asarray(small.dataset.trial_mask).sum(1)
    expected = 0.01 * trials * pm.sum(2).max(1) / pm.sum((1, 2))
    assert np.allclose(mp.flies.padded_l1(small), expected)
    assert np.all(mp.flies.padded_l1(small) >= 0.01)
    with pytest.raises(mp.MetaplasticError, match="DrosophilaData"):
        mp.flies.padded_l1(np.zeros(3))


def test_published_protocol_options_on_a_small_dataset(small):
    """The published protocol through the options of `fit_families`: Adam, one sample per
    step, frozen noise per sample, per-fly L1, fresh evaluation samples."""
    fits = mp.flies.fit_families(
        small,
        ("covariance", "forgetting_y"),
        solver=mp.Optax(optax.adam(1e-2)),
        steps=12,
        batch_size=1,
        resamples=3,
        marginal=False,
        noise="trajectory",
        input_variance=0.015**2,
        init_scale=1e-5,
        l1=mp.flies.padded_l1(small),
        evaluation_samples=2,
        fractions=(),
        key=jr.key(0),
    )
    cov, fy = fits["covariance"], fits["forgetting_y"]
    assert set(fy.coefficients) == {"1", "r", "x", "x*r", "y"}
    for f in (cov, fy):
        assert np.all(np.isfinite(f.in_sample)) and np.all(np.isfinite(f.block1))
        assert f.max_weight.shape == (3,) and np.all(f.max_weight > 0)
    # Only the family's terms moved.
    c = np.asarray(fy.rules.coefficients)
    free = mp.TaylorRule.zeros(("x", "y", "w", "r"), 1).mask(["1", "r", "x", "x*r", "y"])
    assert np.all(c[:, ~free] == 0.0) and np.any(c[:, free] != 0.0)


def test_fit_families_rejects_bad_options(small):
    fit = lambda **kw: mp.flies.fit_families(small, ("covariance",), key=jr.key(0), **kw)
    with pytest.raises(mp.MetaplasticError, match="noise"):
        fit(noise="frozen")
    with pytest.raises(mp.MetaplasticError, match="init_scale"):
        fit(init_scale=0.0)
    with pytest.raises(mp.MetaplasticError, match="weight_bound"):
        fit(weight_bound=-1.0)
    with pytest.raises(mp.MetaplasticError, match="solver"):
        fit(solver=optax.adam(1e-3))
    with pytest.raises(mp.MetaplasticError, match="first-order"):
        fit(l1=[0.1, 0.2, 0.3])
    with pytest.raises(mp.MetaplasticError, match="l1"):
        fit(l1=[0.1, 0.2])
    with pytest.raises(mp.MetaplasticError, match="l1"):
        fit(l1=-1.0)
    with pytest.raises(mp.MetaplasticError, match="marginal=False"):
        fit(resamples=3, batch_size=1)
    with pytest.raises(mp.MetaplasticError, match="evaluation_samples"):
        fit(evaluation_samples=0)
    with pytest.raises(mp.MetaplasticError, match="batch_size"):
        fit(batch_size=0)
    with pytest.raises(mp.MetaplasticError, match="input_variance"):
        fit(input_variance=-0.1)


@pytest.mark.slow  # compiles the five families' fits of the example
def test_example_published_protocol_on_a_small_dataset(small, tmp_path):
    folder = os.path.dirname(small.flies[0].path)
    summary = run_example(
        "drosophila.py",
        *("--data", folder, "--out", str(tmp_path), "--protocol", "published"),
        *("--steps", "2", "--resamples", "2"),
    )
    assert summary["forgetting_y_improves"]["in_sample"]["of"] == 3
    assert "median_y" in summary and "median_w" in summary
    (run,) = tmp_path.iterdir()
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["protocol"] == "published" and config["noise"] == "trajectory"


def test_save_drosophila_round_trips_through_load_drosophila(tmp_path):
    # Simulated flies written in the recordings' format and read back: the same odours,
    # choices and rewards, trial by trial; and the accepted-only conversion after trial 6.
    teacher = mp.behaviour.MushroomBody(mp.rules.reward_modulated(), key=jr.key(0))
    task = mp.behaviour.OperantTask(((0.2, 0.8), (0.9, 0.1)), 6)
    encoding = mp.behaviour.OdourEncoding(2, key=jr.key(1))
    d = mp.behaviour.generate_behaviour(teacher, task, encoding, 2, key=jr.key(2)).data
    paths = mp.flies.save_drosophila(d, tmp_path, first=3)
    assert [p.name for p in paths] == ["Fly3.mat", "Fly4.mat"]
    back = mp.flies.load_drosophila(tmp_path, block_size=6).dataset

    def rows(ds, b, accepted_only_from=None):
        out = []
        for t in np.flatnonzero(np.asarray(ds.trial_mask[b])):
            for p in np.flatnonzero(np.asarray(ds.presentation_mask[b, t])):
                c = float(ds.choices[b, t, p])
                if accepted_only_from is None or t < accepted_only_from or c == 1:
                    out.append((int(ds.odours[b, t, p]), c, float(ds.rewards[b, t]) if c else None))
        return out

    for b in range(2):
        assert rows(back, b) == rows(d, b)
    cut = tmp_path / "cut"
    cut.mkdir()
    mp.flies.save_drosophila(d, cut, accepted_only_from=6)
    back = mp.flies.load_drosophila(cut, block_size=6).dataset
    assert rows(back, 0) == rows(d, 0, accepted_only_from=6)
    with pytest.raises(mp.MetaplasticError, match="not a folder"):
        mp.flies.save_drosophila(d, tmp_path / "missing")
    with pytest.raises(mp.MetaplasticError, match="ChoiceDataset"):
        mp.flies.save_drosophila(back.odours, tmp_path)
