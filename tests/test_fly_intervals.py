"""Per-fly Laplace intervals of the small rule families (`metaplastic.flies.rule_intervals`),
their population summary and the per-fly comparison of the families."""

import dataclasses
from pathlib import Path

import jax.random as jr
import numpy as np
import pytest
from helpers import run_example, write_random_flies
from test_flies import _write_flies

import metaplastic as mp


stats = pytest.importorskip("scipy.stats")
sio = pytest.importorskip("scipy.io")


def _intervals(estimate, std, *, families=("covariance",), evidence=None) -> mp.flies.FlyIntervals:
    """A `FlyIntervals` holding the given numbers, `(flies, terms)` per family, with
    95 % intervals `estimate ± 1.96 std`."""
    z = float(stats.norm.ppf(0.975))
    flies = np.asarray(estimate[families[0]]).shape[0]
    est = {f: np.asarray(estimate[f], float) for f in families}
    sd = {f: np.asarray(std[f], float) for f in families}
    evidence = evidence or {f: np.zeros(flies) for f in families}
    return mp.flies.FlyIntervals(
        families=families,
        terms={f: mp.flies.FAMILY_TERMS[f] for f in families},
        names=tuple(f"Fly{i + 1}" for i in range(flies)),
        accept_only=np.zeros(flies, bool),
        trials="block1",
        level=0.95,
        draws=8,
        marginal=True,
        input_variance=0.015**2,
        estimate=est,
        std=sd,
        low={f: est[f] - z * sd[f] for f in families},
        high={f: est[f] + z * sd[f] for f in families},
        log_likelihood={f: np.zeros(flies) for f in families},
        aic={f: -2 * np.asarray(evidence[f]) for f in families},
        bic={f: -2 * np.asarray(evidence[f]) for f in families},
        log_evidence={f: np.asarray(evidence[f], float) for f in families},
        n_obs=np.full(flies, 100),
        last_change={f: np.zeros(flies) for f in families},
        posteriors={},
        prior_std=1.0,
        seconds=0.0,
    )


def test_excludes_zero_and_counts_follow_the_interval_bounds():
    # Four flies, x*r: clearly positive, clearly negative, straddling 0, touching 0 exactly.
    z = float(stats.norm.ppf(0.975))
    xr = np.array([0.5, -0.4, 0.05, 0.1])
    sd = np.array([0.1, 0.1, 0.1, 0.1 / z])  # the last interval is [0, 0.2]: it holds 0
    est = np.zeros((4, 4))
    est[:, 3] = xr
    std = np.full((4, 4), 0.1)
    std[:, 3] = sd
    iv = _intervals({"covariance": est}, {"covariance": std})
    assert iv.excludes_zero("covariance", "x*r").tolist() == [True, True, False, False]
    summary = iv.population("covariance", "x*r")
    assert (summary.flies, summary.excludes_zero, summary.positive, summary.negative) == (
        4,
        2,
        1,
        1,
    )
    rows = [r for r in iv.rows() if r["term"] == "x*r"]
    assert [r["excludes_zero"] for r in rows] == [True, True, False, False]
    assert len(iv.rows()) == 4 * 4
    table = iv.to_dataframe()
    assert table.to_dict("records") == iv.rows()
    assert table[table["term"] == "x*r"]["excludes_zero"].tolist() == [True, True, False, False]


def test_a_term_absent_from_a_family_has_no_interval():
    iv = _intervals(
        {"covariance": np.zeros((2, 4)), "forgetting": np.zeros((2, 5))},
        {"covariance": np.ones((2, 4)), "forgetting": np.ones((2, 5))},
        families=("covariance", "forgetting"),
    )
    with pytest.raises(mp.MetaplasticError, match="no term 'w'"):
        iv.interval("covariance", "w")
    with pytest.raises(mp.MetaplasticError, match="no term 'w'"):
        iv.population("covariance", "w")
    assert iv.interval("forgetting", "w")[0].shape == (2,)
    assert not any(r["term"] == "w" for r in iv.rows() if r["family"] == "covariance")
    with pytest.raises(mp.MetaplasticError, match="was not fitted"):
        iv.interval("forgetting_y", "y")


def test_population_summary_is_the_inverse_variance_mean_with_cochrans_q():
    theta = np.array([0.1, 0.3, 0.2, 0.6])
    s = np.array([0.05, 0.1, 0.2, 0.1])
    est = np.zeros((4, 4))
    est[:, 3] = theta
    std = np.ones((4, 4))
    std[:, 3] = s
    summary = _intervals({"covariance": est}, {"covariance": std}).population("covariance", "x*r")
    w = 1 / s**2
    mean = np.sum(w * theta) / np.sum(w)
    q = np.sum(w * (theta - mean) ** 2)
    assert summary.mean == pytest.approx(mean)
    assert summary.se == pytest.approx(1 / np.sqrt(np.sum(w)))
    assert summary.q == pytest.approx(q)
    assert summary.df == 3
    assert summary.p_heterogeneity == pytest.approx(stats.chi2.sf(q, 3))
    assert summary.i2 == pytest.approx((q - 3) / q)
    tau2 = (q - 3) / (np.sum(w) - np.sum(w**2) / np.sum(w))
    assert summary.tau == pytest.approx(np.sqrt(tau2))
    wr = 1 / (s**2 + tau2)
    assert summary.random_mean == pytest.approx(np.sum(wr * theta) / np.sum(wr))
    assert summary.random_se == pytest.approx(1 / np.sqrt(np.sum(wr)))
    assert summary.median == pytest.approx(0.25)
    # Identical flies: no heterogeneity, and the random-effects mean is the fixed one.
    est[:, 3] = 0.2
    same = _intervals({"covariance": est}, {"covariance": std}).population("covariance", "x*r")
    assert same.q == pytest.approx(0.0, abs=1e-20) and (same.i2, same.tau) == (0.0, 0.0)
    assert same.random_mean == pytest.approx(same.mean)


def test_compare_counts_flies_and_sums_the_evidence():
    iv = _intervals(
        {"covariance": np.zeros((3, 4)), "forgetting": np.zeros((3, 5))},
        {"covariance": np.ones((3, 4)), "forgetting": np.ones((3, 5))},
        families=("covariance", "forgetting"),
        evidence={"covariance": np.array([-10.0, -20.0, -5.0]), "forgetting": [-8.0, -21.0, -6.5]},
    )
    c = iv.compare("covariance", "forgetting")
    np.testing.assert_allclose(c["delta_log_evidence"], [2.0, -1.0, -1.5])
    assert c["total_delta_log_evidence"] == pytest.approx(-0.5)
    assert c["flies_for_b_evidence"] == 1
    assert c["flies_for_b_bic"] == 1  # here BIC = −2·evidence
    sub = iv.select(np.array([True, False, True]))
    assert sub.names == ("Fly1", "Fly3")
    assert sub.compare()["flies_for_b_evidence"] == 1
    with pytest.raises(mp.MetaplasticError, match="booleans"):
        iv.select([1, 0, 1])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Three flies whose weights follow Δw = 2·x·r, in three blocks of 20 trials."""
    folder = tmp_path_factory.mktemp("flies")
    task = mp.behaviour.OperantTask(((0.8, 0.2), (0.2, 0.8), (0.8, 0.2)), (20, 20, 20))
    truth = mp.TaylorRule.from_expression("2*x*r", factors=("x", "w", "r"), order=1)
    teacher = mp.behaviour.MushroomBody(truth, key=jr.key(1))
    encoding = mp.behaviour.OdourEncoding(2, key=jr.key(2))
    _write_flies(mp.behaviour.generate_behaviour(teacher, task, encoding, 3, key=jr.key(3)), folder)
    return mp.flies.load_drosophila(folder, block_size=20)


@pytest.fixture(scope="module")
def random_flies(tmp_path_factory):
    """Two flies choosing at random, 12 trials in blocks of 4 (no simulation: fast)."""
    folder = tmp_path_factory.mktemp("random")
    write_random_flies(folder, [12, 12])
    return mp.flies.load_drosophila(folder, block_size=4)


def test_bad_input_is_refused_before_any_fit(random_flies):
    simulated = random_flies
    with pytest.raises(mp.MetaplasticError, match="families"):
        mp.flies.rule_intervals(simulated, ("taylor",), key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="trials"):
        mp.flies.rule_intervals(simulated, trials="block2", key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="draws=1"):
        mp.flies.rule_intervals(simulated, marginal=False, draws=4, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="draws"):
        mp.flies.rule_intervals(simulated, draws=0, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="level"):
        mp.flies.rule_intervals(simulated, level=1.5, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="DrosophilaData"):
        mp.flies.rule_intervals(simulated.dataset, key=jr.key(0))


@pytest.mark.slow
def test_fitted_intervals_have_the_family_shapes_and_are_reproducible(simulated):
    kwargs = dict(trials="all", draws=2, steps=6, key=jr.key(4))
    iv = mp.flies.rule_intervals(simulated, ("covariance", "forgetting"), **kwargs)
    assert iv.names == simulated.names and len(iv) == 3
    for family, n_terms in (("covariance", 4), ("forgetting", 5)):
        for field in (iv.estimate, iv.std, iv.low, iv.high):
            assert field[family].shape == (3, n_terms)
        for field in (iv.log_evidence, iv.aic, iv.bic, iv.log_likelihood):
            assert field[family].shape == (3,) and np.all(np.isfinite(field[family]))
        assert np.all(iv.std[family] > 0)
        np.testing.assert_allclose(
            iv.high[family] - iv.low[family], 2 * 1.959964 * iv.std[family], rtol=1e-5
        )
        # The same numbers as the posterior's own table, fly by fly.
        post = iv.posteriors[family]
        for i in range(3):
            table = {r["term"]: r for r in post.member(i).table() if not r["fixed"]}
            for j, term in enumerate(iv.terms[family]):
                assert table[term]["std"] == pytest.approx(iv.std[family][i, j], rel=1e-5)
                assert table[term]["estimate"] == pytest.approx(iv.estimate[family][i, j], rel=1e-5)
    # The generating term is found: x*r positive in every fly's covariance fit.
    assert np.all(iv.interval("covariance", "x*r")[0] > 0)
    # AIC of a nested family: 2 more per added term than its likelihood gain.
    d_ll = iv.log_likelihood["forgetting"] - iv.log_likelihood["covariance"]
    np.testing.assert_allclose(iv.compare()["delta_aic"], 2 - 2 * d_ll, atol=1e-6)
    again = mp.flies.rule_intervals(simulated, ("covariance", "forgetting"), **kwargs)
    for family in iv.families:
        np.testing.assert_array_equal(again.estimate[family], iv.estimate[family])
        np.testing.assert_array_equal(again.std[family], iv.std[family])
        np.testing.assert_array_equal(again.log_evidence[family], iv.log_evidence[family])
    other = mp.flies.rule_intervals(
        simulated, ("covariance", "forgetting"), **{**kwargs, "key": jr.key(5)}
    )
    assert not np.array_equal(other.estimate["covariance"], iv.estimate["covariance"])


@pytest.mark.slow
def test_block1_fits_only_the_first_block_and_a_single_draw_is_allowed(simulated):
    iv = mp.flies.rule_intervals(
        simulated, ("covariance",), marginal=False, draws=1, steps=4, key=jr.key(6)
    )
    pm = np.asarray(simulated.first_block().dataset.presentation_mask)
    np.testing.assert_array_equal(iv.n_obs, pm.sum(axis=(1, 2)))
    assert iv.trials == "block1" and iv.draws == 1 and not iv.marginal
    assert dataclasses.asdict(iv.population("covariance", "x*r"))["flies"] == 3


@pytest.mark.slow
def test_example_calibrate_quick_writes_coverage_and_intervals(tmp_path):
    """`examples/fly_intervals.py --quick --calibrate 6`: simulated flies (no real data
    needed), every output file and a coverage per family and term."""
    summary = run_example(
        "fly_intervals.py",
        "--quick",
        "--calibrate",
        "6",
        "--out",
        str(tmp_path),
        "--no-compile-cache",
    )
    run = Path(summary["run"])
    for name in ("intervals.csv", "population.json", "comparison.json", "calibration.json"):
        assert (run / name).is_file(), name
    coverage = summary["calibration"]["coverage"]
    assert set(coverage) == {"covariance", "forgetting"}
    assert set(coverage["forgetting"]) == {"1", "r", "x", "x*r", "w"}
    assert all(0.0 <= c <= 1.0 for rows in coverage.values() for c in rows.values())
    assert (
        summary["flies"] <= 3
        and summary["comparison"]["forgetting_vs_covariance"]["b"] == "forgetting"
    )


@pytest.mark.slow
def test_a_fly_that_never_rejects_is_warned_about(tmp_path):
    # Acceptances only: the likelihood has no finite optimum, so rule_intervals says so.
    rng = np.random.default_rng(1)
    for fly, y in enumerate(([0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1], [1] * 8)):
        odour = rng.integers(0, 2, len(y))
        r = rng.integers(0, 2, int(np.sum(y)))
        sio.savemat(
            tmp_path / f"Fly{fly + 1}.mat",
            {"X": np.stack([1 - odour, odour], 1), "Y": np.array(y)[None], "R": r[None]},
        )
    data = mp.flies.load_drosophila(tmp_path, block_size=4)
    with pytest.warns(
        UserWarning, match=r"1 of 2 flies never reject an odour in these trials \(Fly2\)"
    ):
        iv = mp.flies.rule_intervals(
            data, ("covariance",), trials="all", draws=1, steps=1, key=jr.key(0)
        )
    assert list(iv.accept_only) == [False, True]
