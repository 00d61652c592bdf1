"""Sparse rule discovery: the sequential thresholded fit and stability selection."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats as scipy_stats

import metaplastic as mp
from metaplastic.losses import Observations


FACTORS = ("x", "w", "r")


class LinearLoss(mp.losses.AbstractGaussNewtonLoss):
    """Predictions linear in the 8 first-order Taylor coefficients over (x, w, r):
    `X @ θ` with squared error."""

    def observe(self, model, batch):
        theta = model["rule"].effective_coefficients.reshape(-1)
        return (Observations(batch["X"] @ theta, batch["y"], batch["mask"], "squared_error"),)


def truth(expression="x*r - 0.5*w"):
    return mp.TaylorRule.from_expression(expression, FACTORS, order=1)


def linear_problem(seed, expression="x*r - 0.5*w", n_traj=8, steps=20, noise=0.5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_traj, steps, 8))
    theta = np.asarray(truth(expression).coefficients).reshape(-1)
    y = X @ theta + noise * rng.normal(size=(n_traj, steps))
    return {"X": jnp.asarray(X), "y": jnp.asarray(y), "mask": jnp.ones((n_traj, steps), bool)}


def student(members=None, trainable=None):
    rule = mp.TaylorRule.zeros(FACTORS, order=1).with_trainable(trainable)
    if members is not None:
        rule = eqx.tree_at(lambda r: r.coefficients, rule, jnp.zeros((members, 2, 2, 2)))
    return {"rule": rule}


def stack(*trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


LEVEL = 0.99


def test_threshold_fit_recovers_the_true_terms_and_drops_the_rest_exactly(x64):
    data = linear_problem(0)
    sel = mp.threshold_fit(student(), data, LinearLoss(), steps=8, level=LEVEL)
    assert sel.terms() == ("x*r", "w")
    assert bool(sel.converged) and int(sel.rounds) == 2
    c = np.asarray(sel.model["rule"].coefficients)
    selected = np.asarray(sel.selected)
    assert selected[1, 0, 1] and selected[0, 1, 0] and selected.sum() == 2
    # Dropped terms are exactly zero in the model and have no variance.
    assert np.all(c[~selected] == 0.0)
    assert abs(c[1, 0, 1] - 1) < 0.1 and abs(c[0, 1, 0] + 0.5) < 0.1
    cov = np.asarray(sel.posterior.covariance)
    dropped = ~selected.reshape(-1)
    assert np.all(cov[dropped] == 0.0) and np.all(cov[:, dropped] == 0.0)
    assert np.all(np.diag(cov)[~dropped] > 0)
    assert sel.posterior.free == tuple(bool(s) for s in selected.reshape(-1))
    # The intervals are the posterior's at `level` around the estimates.
    rows = {r["term"]: r for r in sel.table()}
    z = scipy_stats.norm.ppf(0.5 + LEVEL / 2)  # 2.576 at 99 %
    for term, (i, j, k) in (("x*r", (1, 0, 1)), ("w", (0, 1, 0))):
        flat = np.ravel_multi_index((i, j, k), c.shape)
        std = np.sqrt(cov[flat, flat])
        np.testing.assert_allclose(rows[term]["estimate"], c[i, j, k], rtol=1e-12)
        np.testing.assert_allclose(rows[term]["low"], c[i, j, k] - z * std, rtol=1e-9)
        np.testing.assert_allclose(rows[term]["high"], c[i, j, k] + z * std, rtol=1e-9)
    assert rows["w"]["high"] < 0
    assert sel.expression(digits=2).startswith("x*r - 0.")
    text = str(sel)
    assert "x*r" in text and "99%" in text
    # The estimates and covariance are those of ordinary least squares on the selected terms.
    X = np.asarray(data["X"]).reshape(-1, 8)
    y = np.asarray(data["y"]).reshape(-1)
    keep = selected.reshape(-1)
    beta = np.linalg.lstsq(X[:, keep], y, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(sel.estimate).reshape(-1)[keep], beta, rtol=1e-6)
    # σ² with the degrees of freedom of the selected terms (dropped terms are not free).
    sigma2 = np.sum((y - X[:, keep] @ beta) ** 2) / (len(y) - keep.sum())
    ols_cov = sigma2 * np.linalg.inv(X[:, keep].T @ X[:, keep])
    np.testing.assert_allclose(cov[np.ix_(keep, keep)], ols_cov, rtol=1e-6)


def test_an_ensemble_member_ends_where_it_ends_fitted_alone(x64):
    # Different truths, so that the members need different numbers of rounds.
    problems = [linear_problem(2), linear_problem(3, "x*r - 0.5*w + 0.3*x")]
    ens = mp.threshold_fit(
        student(2), stack(*problems), LinearLoss(), steps=8, level=LEVEL, ensemble=True
    )
    assert ens.is_ensemble and np.asarray(ens.selected).shape == (2, 2, 2, 2)
    for i, data in enumerate(problems):
        one = mp.threshold_fit(student(), data, LinearLoss(), steps=8, level=LEVEL)
        member = ens.member(i)
        assert member.terms() == one.terms() == ens.term_sets()[i]
        assert int(member.rounds) == int(one.rounds)
        np.testing.assert_allclose(
            np.asarray(member.estimate), np.asarray(one.estimate), rtol=1e-6, atol=1e-10
        )
        np.testing.assert_allclose(
            np.asarray(member.posterior.covariance),
            np.asarray(one.posterior.covariance),
            rtol=1e-6,
            atol=1e-12,
        )
        assert member.posterior.free == one.posterior.free
    assert ens.term_sets()[1] == ("x*r", "x", "w")
    frame = ens.to_dataframe()  # every member's table, member by member
    assert list(frame.columns) == ["member", "term", "estimate", "low", "high"]
    for i in range(2):
        rows = frame[frame["member"] == i].drop(columns="member").to_dict("records")
        assert rows == ens.member(i).table()
    assert ens.member(0).to_dataframe().to_dict("records") == ens.member(0).table()


def test_ensemble_members_may_share_one_dataset(x64):
    sel = mp.threshold_fit(
        student(2),
        linear_problem(0),
        LinearLoss(),
        steps=3,
        rounds=1,
        ensemble=True,
        data_ensemble_axis=None,
    )
    estimate = np.asarray(sel.estimate)
    assert estimate.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(estimate[0], estimate[1])


def test_frozen_terms_keep_their_value_and_are_never_selected(x64):
    # `1` frozen at 0.2 (not a candidate): it stays, untouched, outside the selection.
    rule = mp.TaylorRule.zeros(FACTORS, order=1)
    c = rule.coefficients.at[0, 0, 0].set(0.2)
    mask = np.ones((2, 2, 2), bool)
    mask[0, 0, 0] = False
    model = {"rule": mp.TaylorRule(c, FACTORS, trainable=mask)}
    sel = mp.threshold_fit(model, linear_problem(5), LinearLoss(), steps=5, level=LEVEL)
    assert float(sel.model["rule"].coefficients[0, 0, 0]) == 0.2
    assert "1" not in sel.terms() and not bool(sel.selected[0, 0, 0])
    assert not bool(np.asarray(sel.library)[0, 0, 0])


def test_drop_weakest_removes_one_term_per_fit(x64):
    # Four candidates (the others frozen at 0), two of them spurious: one dropped per fit.
    library = mp.TaylorRule.zeros(FACTORS, order=1).mask(["1", "x", "w", "x*r"])
    sel = mp.threshold_fit(
        student(trainable=library),
        linear_problem(0),
        LinearLoss(),
        steps=5,
        level=LEVEL,
        drop="weakest",
    )
    assert {"x*r", "w"} <= set(sel.terms()) <= {"x*r", "w", "x", "1"}
    # One fit per dropped term, and a last one that drops none.
    assert int(sel.rounds) == 4 - len(sel.terms()) + 1 >= 2


def test_a_set_still_changing_after_the_last_round_is_reported(x64):
    sel = mp.threshold_fit(
        student(), linear_problem(0), LinearLoss(), steps=5, level=LEVEL, rounds=1
    )
    assert not bool(sel.converged) and len(sel.terms()) == 8
    assert "still changed" in sel.format()


def test_stability_selection_counts_each_term_over_random_halves(x64):
    data = linear_problem(6, n_traj=10)
    stab = mp.stability_selection(
        student(), data, LinearLoss(), resamples=6, steps=5, level=LEVEL, key=jr.key(3)
    )
    freq = np.asarray(stab.frequency)
    assert freq.shape == (2, 2, 2)
    assert freq[1, 0, 1] == 1.0 and freq[0, 1, 0] == 1.0
    assert stab.terms() == ("x*r", "w")
    assert np.all(freq[~np.asarray(stab.stable)] < 0.7)
    # The per-subset fits are one ensemble of 6 members, each on 5 of the 10 trajectories.
    assert stab.selections.is_ensemble and np.asarray(stab.selections.rounds).shape == (6,)
    assert np.allclose(freq, np.asarray(stab.selections.selected).mean(axis=0))
    assert "x*r" in str(stab) and stab.table()[0]["frequency"] == 1.0


def test_stability_selection_is_reproducible_from_its_key(x64):
    data = linear_problem(7, n_traj=10)
    run = lambda k: mp.stability_selection(
        student(), data, LinearLoss(), resamples=4, steps=4, rounds=1, key=jr.key(k)
    )
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(np.asarray(a.frequency), np.asarray(b.frequency))
    np.testing.assert_array_equal(
        np.asarray(a.selections.estimate), np.asarray(b.selections.estimate)
    )
    # Another key, other subsets: other fits.
    assert not np.allclose(np.asarray(a.selections.estimate), np.asarray(c.selections.estimate))


def test_stability_selection_of_an_ensemble_gives_one_frequency_per_member(x64):
    problems = [linear_problem(8, n_traj=10), linear_problem(9, "x*r + 0.8*r", n_traj=10)]
    stab = mp.stability_selection(
        student(2),
        stack(*problems),
        LinearLoss(),
        resamples=4,
        steps=5,
        level=LEVEL,
        ensemble=True,
        key=jr.key(0),
    )
    assert np.asarray(stab.frequency).shape == (2, 2, 2, 2)
    assert stab.term_sets() == [("x*r", "w"), ("x*r", "r")]
    with pytest.raises(mp.MetaplasticError, match="member=i"):
        stab.terms()
    frame = stab.to_dataframe()
    assert list(frame.columns) == ["member", "term", "frequency", "stable"]
    for i in range(2):
        rows = frame[frame["member"] == i].drop(columns="member").to_dict("records")
        assert rows == stab.table(i)
        assert set(frame[(frame["member"] == i) & frame["stable"]]["term"]) == set(stab.terms(i))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": 1.0}, "level must be a number between 0 and 1"),
        ({"level": "high"}, "level must be a number between 0 and 1"),
        ({"drop": "some"}, "drop must be one of"),
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"key": 3}, "key must be one JAX PRNG key"),
    ],
)
def test_threshold_fit_rejects_bad_options(kwargs, message):
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.threshold_fit(student(), linear_problem(0), LinearLoss(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resamples": 1}, "resamples must be an integer >= 2"),
        ({"fraction": 0.0}, r"fraction must be a number in \(0, 1\]"),
        ({"threshold": 1.5}, r"threshold must be a number in \(0, 1\]"),
    ],
)
def test_stability_selection_rejects_bad_options(kwargs, message):
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.stability_selection(student(), linear_problem(0), LinearLoss(), **kwargs)


def test_bad_models_losses_and_data_are_named():
    data = linear_problem(0)
    with pytest.raises(mp.MetaplasticError, match="Gauss-Newton structure"):
        mp.threshold_fit(student(), data, lambda m, b: jnp.zeros(()))
    with pytest.raises(mp.MetaplasticError, match="Gauss-Newton structure"):
        mp.stability_selection(student(), data, lambda m, b: jnp.zeros(()))
    mlp = mp.nn.PlasticDense(mp.MLPRule(("x", "y"), key=jr.key(0)), eta=1.0)
    with pytest.raises(mp.MetaplasticError, match="exactly one TaylorRule; this one holds 0"):
        mp.threshold_fit(mlp, data, mp.losses.ActivityMSE())
    two = {"rule": student()["rule"], "other": student()["rule"]}
    with pytest.raises(mp.MetaplasticError, match="holds 2"):
        mp.threshold_fit(two, data, LinearLoss())
    with pytest.raises(mp.MetaplasticError, match="needs 3 members along that axis"):
        mp.threshold_fit(student(3), stack(data, data), LinearLoss(), ensemble=True)
    sel = mp.threshold_fit(student(), data, LinearLoss(), steps=1, rounds=1)
    with pytest.raises(mp.MetaplasticError, match="ensemble"):
        sel.member(0)


@pytest.mark.slow
def test_oja_terms_are_recovered_from_activity_with_informative_inputs(x64):
    """Oja's rule from the activity of a 10 -> 20 sigmoid layer, all 27 candidates over
    (x, y, w), inputs N(0, 0.5²) and initial weights 0.3·N(0, 1) (the identifiable setting of
    examples/sparse_discovery.py), 3 datasets."""
    D, per = 3, 4
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
    kx, kw, kn, ki = jr.split(jr.key(0), 4)
    x = mp.tasks.gaussian_stimuli(10, 30, n_trajectories=D * per, std=0.5, key=kx)
    w0 = 0.3 * jr.normal(kw, (D * per, 20, 10))
    readout = mp.nn.ActivityReadout(noise_std=0.01)
    data, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=kn)
    data = jax.tree.map(lambda a: a.reshape((D, per) + a.shape[1:]), data)
    rule = mp.TaylorRule.zeros(("x", "y", "w"))
    c = 1e-4 * jr.normal(ki, (D, 3, 3, 3))
    students = mp.nn.PlasticDense(
        eqx.tree_at(lambda r: r.coefficients, rule, c), eta=1.0, activation="sigmoid"
    )
    sel = mp.threshold_fit(
        students, data, mp.losses.ActivityMSE(), steps=15, level=1 - 0.05 / 27, ensemble=True
    )
    assert sel.term_sets() == [("x*y", "y^2*w")] * D
    assert sel.expression(0, digits=2) == "x*y - y^2*w"


@pytest.mark.slow
def test_the_fly_rule_is_recovered_from_choices_with_the_generating_inputs(x64):
    """Simulated flies (18 per dataset, 3 × 80 trials) learning by x*r − 0.05*w, fitted on the
    inputs that generated their choices (the mushroom body's own sensitivities, gated), all 8
    first-order candidates over (x, w, r), 2 datasets."""
    bh = mp.behaviour
    D, flies = 2, 18
    k_enc, k_net, k_gen, k_init = jr.split(jr.key(0), 4)
    truth_rule = mp.rules.with_decay(mp.rules.reward_modulated(), 0.05)
    encoding = bh.OdourEncoding(2, variance=0.015, key=k_enc)
    teacher = bh.MushroomBody(truth_rule, n_in=2, hidden=10, key=k_net)
    task = bh.OperantTask(block_lengths=80)
    gen = bh.generate_behaviour(teacher, task, encoding, D * flies, key=k_gen)
    generating = eqx.tree_at(lambda d: d.inputs, gen.data, gen.generating_inputs)
    data = bh.stack_members(bh.PackedChoiceDataset.from_choices(generating), D)
    rule = mp.TaylorRule.zeros(FACTORS, order=1)
    c = 1e-3 * jr.normal(k_init, (D, 2, 2, 2))
    students = teacher.with_rule(eqx.tree_at(lambda r: r.coefficients, rule, c))
    sel = mp.threshold_fit(
        students,
        data,
        bh.ChoiceBCE(),
        solver=mp.LevenbergMarquardt(chunks=3),
        steps=8,
        level=1 - 0.05 / 8,
        ensemble=True,
    )
    assert sel.term_sets() == [("x*r", "w")] * D
    w = np.asarray(sel.estimate)[:, 0, 1, 0]
    assert np.all(np.abs(w + 0.05) < 0.01)
