"""The Laplace posterior, identifiability and profile likelihood of fitted rules."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import metaplastic as mp
from metaplastic.losses import Observations


class LinearLoss(mp.losses.AbstractGaussNewtonLoss):
    """Predictions linear in the Taylor coefficients: `X @ θ` (squared error) or the logits
    `X @ θ` of Bernoulli choices."""

    likelihood: str = eqx.field(static=True, default="squared_error")

    def observe(self, model, batch):
        theta = model["rule"].effective_coefficients.reshape(-1)
        pred = batch["X"] @ theta
        return (Observations(pred, batch["y"], batch["mask"], self.likelihood),)


def linear_problem(seed=0, n_traj=6, steps=7, bernoulli=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_traj, steps, 4))
    theta = np.array([0.5, -1.0, 2.0, 0.3])
    mask = rng.random((n_traj, steps)) > 0.15
    if bernoulli:
        y = (rng.random((n_traj, steps)) < 1 / (1 + np.exp(-X @ theta))).astype(float)
    else:
        y = X @ theta + 0.7 * rng.normal(size=(n_traj, steps))
    return {"X": jnp.asarray(X), "y": jnp.asarray(y), "mask": jnp.asarray(mask)}


def model_at(coefficients, trainable=None):
    c = jnp.asarray(coefficients).reshape(2, 2)
    return {"rule": mp.TaylorRule(c, ("x", "r"), trainable=trainable)}


def ols(data, l2=0.0):
    m = np.asarray(data["mask"]).reshape(-1)
    X = np.asarray(data["X"]).reshape(-1, 4)[m]
    y = np.asarray(data["y"]).reshape(-1)[m]
    n, p = X.shape
    beta = np.linalg.solve(X.T @ X + n * l2 * np.eye(p), X.T @ y)
    sigma2 = np.sum((y - X @ beta) ** 2) / (n - p)
    cov = sigma2 * np.linalg.inv(X.T @ X + n * l2 * np.eye(p))
    return beta, sigma2, cov


def test_linear_gaussian_is_ordinary_least_squares(x64):
    data = linear_problem()
    beta, sigma2, cov = ols(data)
    post = mp.laplace(model_at(beta), data, LinearLoss())
    np.testing.assert_allclose(np.asarray(post.covariance), cov, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(float(post.noise_scale) ** 2, sigma2, rtol=1e-10)
    std = post.std()["rule"].coefficients.reshape(-1)
    np.testing.assert_allclose(np.asarray(std), np.sqrt(np.diag(cov)), rtol=1e-10)
    low, high = post.interval(0.95)
    np.testing.assert_allclose(
        np.asarray(high["rule"].coefficients).reshape(-1),
        beta + 1.959964 * np.sqrt(np.diag(cov)),
        rtol=1e-6,
    )
    corr = np.asarray(post.correlation())
    np.testing.assert_allclose(corr, cov / np.outer(np.sqrt(np.diag(cov)), np.sqrt(np.diag(cov))))
    rows = post.table()
    assert [r["term"] for r in rows] == ["1", "r", "x", "x*r"]
    assert rows[2]["excludes_zero"] and rows[2]["low"] > 0
    text = str(post)
    assert "x*r" in text and "interval" in text
    assert int(post.rank) == 4

    # A fit with Levenberg-Marquardt lands on the same posterior.
    fitted = mp.fit(model_at(np.zeros(4)), data, LinearLoss(), steps=10, progress=False).model
    post2 = mp.laplace(fitted, data, LinearLoss())
    np.testing.assert_allclose(np.asarray(post2.covariance), cov, rtol=1e-6)


def test_l2_penalty_is_a_log_prior_with_the_fit_weight(x64):
    data = linear_problem(1)
    beta, sigma2, cov = ols(data, l2=0.3)
    post = mp.laplace(model_at(beta), data, LinearLoss(), penalty=mp.losses.L2(0.3))
    np.testing.assert_allclose(np.asarray(post.covariance), cov, rtol=1e-10)
    np.testing.assert_allclose(float(post.noise_scale) ** 2, sigma2, rtol=1e-10)


def test_bernoulli_is_inverse_fisher_information(x64):
    data = linear_problem(2, n_traj=20, steps=10, bernoulli=True)
    loss = LinearLoss("bernoulli")
    fitted = mp.fit(model_at(np.zeros(4)), data, loss, steps=15, progress=False).model
    post = mp.laplace(fitted, data, loss)
    assert post.noise_scale is None
    theta = np.asarray(fitted["rule"].coefficients).reshape(-1)
    m = np.asarray(data["mask"]).reshape(-1)
    X = np.asarray(data["X"]).reshape(-1, 4)[m]
    p = 1 / (1 + np.exp(-X @ theta))
    fisher = (X * (p * (1 - p))[:, None]).T @ X
    np.testing.assert_allclose(np.asarray(post.precision), fisher, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(post.covariance), np.linalg.inv(fisher), rtol=1e-8)


def test_frozen_terms_are_fixed(x64):
    data = linear_problem(3)
    trainable = np.array([[True, False], [True, True]])  # freeze "r"
    frozen_value = -1.0
    m = np.asarray(data["mask"]).reshape(-1)
    X = np.asarray(data["X"]).reshape(-1, 4)[m]
    y = np.asarray(data["y"]).reshape(-1)[m] - frozen_value * X[:, 1]
    Xf = X[:, [0, 2, 3]]
    beta = np.linalg.solve(Xf.T @ Xf, Xf.T @ y)
    sigma2 = np.sum((y - Xf @ beta) ** 2) / (len(y) - 3)
    coefficients = np.array([beta[0], frozen_value, beta[1], beta[2]])
    post = mp.laplace(model_at(coefficients, trainable), data, LinearLoss())
    assert post.free == (True, False, True, True)
    cov = np.asarray(post.covariance)
    assert np.all(cov[1] == 0) and np.all(cov[:, 1] == 0)
    expected = sigma2 * np.linalg.inv(Xf.T @ Xf)
    np.testing.assert_allclose(cov[np.ix_([0, 2, 3], [0, 2, 3])], expected, rtol=1e-10)
    assert float(post.std()["rule"].coefficients[0, 1]) == 0.0
    row = post.table()[1]
    assert row["fixed"] and row["term"] == "r"
    assert "fixed" in post.format()
    assert np.isfinite(post.identifiability().condition_number)


def test_ensemble_equals_members(x64):
    members = [linear_problem(s) for s in range(3)]
    data = jax.tree.map(lambda *a: jnp.stack(a), *members)
    betas = [ols(d)[0] for d in members]
    ensemble = {"rule": eqx.filter_vmap(lambda c: model_at(c)["rule"])(jnp.asarray(betas))}
    post = mp.laplace(ensemble, data, LinearLoss(), ensemble=True)
    assert post.covariance.shape == (3, 4, 4)
    for i, (b, d) in enumerate(zip(betas, members)):
        one = mp.laplace(model_at(b), d, LinearLoss())
        np.testing.assert_allclose(post.covariance[i], one.covariance, rtol=1e-10)
        np.testing.assert_allclose(post.noise_scale[i], one.noise_scale, rtol=1e-10)
        np.testing.assert_allclose(
            post.std()["rule"].coefficients[i], one.std()["rule"].coefficients, rtol=1e-10
        )
        assert post.member(i).table() == one.table()


def test_profile_minimum_is_the_fit(x64):
    data = linear_problem(4)
    beta = ols(data)[0]
    values = beta[3] + np.linspace(-0.3, 0.3, 7)
    prof = mp.profile(model_at(beta), data, LinearLoss(), "x*r", values, steps=5)
    assert prof.objective.shape == (7,)
    assert abs(prof.argmin - beta[3]) < 1e-12
    # Quadratic in the fixed value, and the other terms were refitted (not left at beta).
    assert np.all(np.diff(np.asarray(prof.objective)[:4]) < 0)
    assert not np.allclose(prof.model["rule"].coefficients[0], beta.reshape(2, 2))


def test_profile_from_the_posterior_starts_on_the_exact_profile(x64):
    # Linear-Gaussian: the posterior's conditional mean of the other terms given one term is
    # the least-squares fit of the others with that term fixed, so the refits start (and
    # stay) on the exact profile.
    data = linear_problem(5)
    beta = ols(data)[0]
    model = model_at(beta)
    post = mp.laplace(model, data, LinearLoss())
    values = beta[3] + np.linspace(-2.0, 2.0, 5)
    prof = mp.profile(model, data, LinearLoss(), "x*r", values, steps=1, posterior=post)
    m = np.asarray(data["mask"]).reshape(-1)
    X = np.asarray(data["X"]).reshape(-1, 4)[m]
    y = np.asarray(data["y"]).reshape(-1)[m]
    for k, v in enumerate(values):
        others = np.linalg.lstsq(X[:, :3], y - v * X[:, 3], rcond=None)[0]
        got = np.asarray(prof.model["rule"].coefficients[k]).reshape(-1)
        np.testing.assert_allclose(got, np.append(others, v), rtol=1e-9, atol=1e-12)
    with pytest.raises(mp.MetaplasticError, match="no variance"):
        frozen = model_at(beta, trainable=np.array([[True, True], [True, False]]))
        mp.profile(
            frozen,
            data,
            LinearLoss(),
            "x*r",
            values,
            posterior=mp.laplace(frozen, data, LinearLoss()),
        )


def test_identifiability_of_oja_names_collinear_monomials(x64):
    start = time.perf_counter()
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(8, 20, n_trajectories=4, std=0.1, key=jr.key(0))
    w0 = 0.01 * jr.normal(jr.key(1), (4, 20, 8))
    data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))
    student = mp.nn.PlasticDense(mp.TaylorRule.random(("x", "y", "w"), key=jr.key(3)), eta=1.0)
    fitted = mp.fit(student, data, mp.losses.ActivityMSE(), steps=15, progress=False).model
    post = mp.laplace(fitted, data, mp.losses.ActivityMSE())
    ident = post.identifiability()
    assert ident.condition_number > 1e6
    worst = ident.directions(1)[0]
    # The worst direction mixes monomials that differ only by a power of y (y ≈ 0.5).
    base = [
        n.replace("*y^2", "*y").replace("y^2*", "y*") for n in worst.split() if "x" in n or "w" in n
    ]
    assert len(base) != len(set(base)) or "not determined" in worst, worst
    assert "condition number" in str(ident)
    assert time.perf_counter() - start < 60


def test_collinear_terms_are_undetermined_not_certain(x64):
    # The columns of "x" and "x*r" are equal: only their sum is determined, and neither
    # term alone; "1" and "r" stay determined.
    data = linear_problem(4)
    X = np.asarray(data["X"]).copy()
    X[..., 3] = X[..., 2]
    data = dict(data, X=jnp.asarray(X))
    beta, *_ = np.linalg.lstsq(
        X.reshape(-1, 4)[np.asarray(data["mask"]).reshape(-1)],
        np.asarray(data["y"]).reshape(-1)[np.asarray(data["mask"]).reshape(-1)],
        rcond=None,
    )
    post = mp.laplace(model_at(beta), data, LinearLoss())
    assert int(post.rank) == 3 and post.is_rank_deficient
    determined = np.asarray(post.determined()["rule"].coefficients).reshape(-1)
    assert determined.tolist() == [True, True, False, False]
    std = np.asarray(post.std()["rule"].coefficients).reshape(-1)
    assert np.all(np.isfinite(std[:2])) and np.all(np.isinf(std[2:]))
    low, high = post.interval(0.95)
    assert np.all(np.asarray(low["rule"].coefficients).reshape(-1)[2:] == -np.inf)
    assert np.all(np.asarray(high["rule"].coefficients).reshape(-1)[2:] == np.inf)
    # Conditional on the determined subspace: the pseudo-inverse's finite spread.
    conditional = np.asarray(post.std(conditional=True)["rule"].coefficients).reshape(-1)
    assert np.all(np.isfinite(conditional)) and np.all(conditional > 0)
    rows = post.table()
    assert [r["determined"] for r in rows] == [True, True, False, False]
    assert not rows[2]["excludes_zero"] and not rows[3]["excludes_zero"]
    assert rows[2]["excludes_zero"] is False
    text = post.format()
    assert "rank 3 of 4" in text and "1 direction(s) are not determined" in text
    assert [line.split()[-1] for line in text.splitlines()[-2:]] == ["undetermined"] * 2
    assert str(post) == text
    frame = post.to_dataframe()
    assert frame["determined"].tolist() == [True, True, False, False]
    assert "rank 3 of 4" in frame.attrs["note"]
    # A posterior of full rank says nothing of the kind.
    full = mp.laplace(model_at(ols(linear_problem(4))[0]), linear_problem(4), LinearLoss())
    assert not full.is_rank_deficient and full.rank_note() == ""
    assert "rank" not in full.format() and "note" not in full.to_dataframe().attrs


def test_noisy_oja_posterior_never_claims_an_undetermined_term(x64):
    # The case, smaller: 27 Taylor terms fitted to the noisy activity of an Oja
    # layer driven by inputs of std 0.1 (y near 0.5, so monomials differing by a power of y
    # are nearly collinear) leave directions the data do not determine.
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(8, 20, n_trajectories=4, std=0.1, key=jr.key(0))
    w0 = 0.01 * jr.normal(jr.key(1), (4, 20, 8))
    readout = mp.nn.ActivityReadout(noise_std=0.01)
    noisy, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=jr.key(5))
    student = mp.nn.PlasticDense(mp.TaylorRule.random(("x", "y", "w"), key=jr.key(3)), eta=1.0)
    loss = mp.losses.ActivityMSE()
    fitted = mp.fit(student, noisy, loss, steps=10, progress=False).model
    post = mp.laplace(fitted, noisy, loss)
    assert int(post.rank) < 27 and post.is_rank_deficient
    rows = post.table()
    undetermined = [r for r in rows if not r["determined"]]
    assert undetermined
    assert all(np.isinf(r["std"]) and not r["excludes_zero"] for r in undetermined)
    # Every term that moves along an undetermined direction loads on one of them.
    ident = post.identifiability()
    below = ident.eigenvalues <= ident.threshold
    assert int(below.sum()) == 27 - int(post.rank)
    load = (ident.eigenvectors[:, below] ** 2).sum(axis=1)
    assert {r["term"] for r in undetermined} == {n for n, v in zip(ident.names, load) if v > 1e-10}
    text = post.format(tol=0.5)
    assert f"rank {int(post.rank)} of 27" in text
    assert all(
        not line.endswith(" *") for line in text.splitlines() if line.endswith("undetermined")
    )
    assert np.isinf(ident.condition_number)


# ------------------------------------------------------------------ bootstrap, model comparison
def gaussian_problem(theta, seed, n_traj=6, steps=7, sigma=0.7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_traj, steps, 4))
    y = X @ np.asarray(theta) + sigma * rng.normal(size=(n_traj, steps))
    mask = np.ones((n_traj, steps), bool)
    return {"X": jnp.asarray(X), "y": jnp.asarray(y), "mask": jnp.asarray(mask)}


def test_bootstrap_is_reproducible_from_a_key(x64):
    data = linear_problem(5)
    model = model_at(ols(data)[0])
    run = lambda key: mp.bootstrap(model, data, LinearLoss(), n=6, key=key, steps=3)
    a, b, c = run(jr.key(0)), run(jr.key(0)), run(jr.key(1))
    assert a.kind == "cases" and a.samples["rule"].coefficients.shape == (6, 2, 2)
    np.testing.assert_array_equal(a.samples["rule"].coefficients, b.samples["rule"].coefficients)
    assert not np.allclose(a.samples["rule"].coefficients, c.samples["rule"].coefficients)
    # Each replicate is the least-squares fit of its resampled trajectories.
    assert np.std(np.asarray(a.samples["rule"].coefficients), axis=0).min() > 0


def test_parametric_bootstrap_of_a_linear_gaussian_model_matches_the_closed_form(x64):
    data = gaussian_problem([0.5, -1.0, 2.0, 0.3], seed=6, n_traj=10)
    beta, sigma2, cov = ols(data)

    def simulate(model, d, key, n):
        theta = model["rule"].coefficients.reshape(-1)
        noise = jnp.sqrt(sigma2) * jr.normal(key, (n,) + d["y"].shape)
        return {
            "X": jnp.broadcast_to(d["X"], (n,) + d["X"].shape),
            "y": d["X"] @ theta + noise,
            "mask": jnp.broadcast_to(d["mask"], (n,) + d["mask"].shape),
        }

    boot = mp.bootstrap(
        model_at(beta), data, LinearLoss(), n=400, key=jr.key(2), simulate=simulate, steps=2
    )
    assert boot.kind == "parametric"
    std = np.asarray(boot.std()["rule"].coefficients).reshape(-1)
    # The standard deviation of a std from 400 normal draws is about 3.5 %.
    np.testing.assert_allclose(std, np.sqrt(np.diag(cov)), rtol=0.12)
    np.testing.assert_allclose(
        np.asarray(boot.bias()["rule"].coefficients).reshape(-1), 0, atol=0.25 * std.min()
    )
    low, high = boot.interval(0.95, "basic")
    width = np.asarray(high["rule"].coefficients - low["rule"].coefficients).reshape(-1)
    np.testing.assert_allclose(width, 2 * 1.959964 * np.sqrt(np.diag(cov)), rtol=0.15)
    p_low, p_high = boot.interval(0.95, "percentile")
    # Basic and percentile intervals are reflections of each other about the estimate.
    np.testing.assert_allclose(
        np.asarray(low["rule"].coefficients + p_high["rule"].coefficients),
        2 * beta.reshape(2, 2),
        rtol=1e-12,
    )


def test_bootstrap_of_an_ensemble_keeps_members_apart(x64):
    """Two members fitted to datasets with opposite truths: every replicate of member i is a
    refit to trajectories of dataset i, so it lies within a few standard errors of member i's
    own estimate, and far from the other member's (a replicate drawn from the wrong member's
    data would land near the other estimate, 4 away)."""
    truths = ([0.5, -1.0, 2.0, 0.3], [-0.5, 1.0, -2.0, -0.3])
    members = [gaussian_problem(t, seed=s) for s, t in enumerate(truths)]
    data = jax.tree.map(lambda *a: jnp.stack(a), *members)
    fits = [ols(d) for d in members]
    betas = jnp.asarray([f[0] for f in fits])
    ensemble = {"rule": eqx.filter_vmap(lambda c: model_at(c)["rule"])(betas)}
    boot = mp.bootstrap(ensemble, data, LinearLoss(), n=5, key=jr.key(0), ensemble=True, steps=3)
    samples = np.asarray(boot.samples["rule"].coefficients)
    assert samples.shape == (2, 5, 2, 2)
    for i in range(2):
        stderr = np.sqrt(np.diag(fits[i][2]))  # OLS standard errors
        own = np.asarray(betas[i])
        other = np.asarray(betas[1 - i])
        deviation = np.abs(samples[i].reshape(5, 4) - own)
        assert np.all(deviation < 6 * stderr), (deviation / stderr).max()
        assert np.all(np.abs(samples[i].reshape(5, 4) - other).max(axis=1) > 1.0)
    low, high = boot.interval()
    assert low["rule"].coefficients.shape == (2, 2, 2)


def test_compare_models_evidence_aic_bic_in_closed_form(x64):
    data = gaussian_problem([0.5, -1.0, 2.0, 0.3], seed=7)
    beta, sigma2, _ = ols(data)
    comp = mp.compare_models(
        {"full": model_at(np.zeros(4))}, data, LinearLoss(), steps=5, prior_std=100.0
    )
    X = np.asarray(data["X"]).reshape(-1, 4)
    y = np.asarray(data["y"]).reshape(-1)
    n = len(y)
    rss = np.sum((y - X @ beta) ** 2)
    ll = -0.5 * n * (np.log(2 * np.pi * rss / n) + 1)
    np.testing.assert_allclose(float(comp.log_likelihood[0]), ll, rtol=1e-10)
    assert comp.n_params == (5,)  # four coefficients and the noise variance
    np.testing.assert_allclose(float(comp.aic[0]), 2 * 5 - 2 * ll, rtol=1e-10)
    np.testing.assert_allclose(float(comp.bic[0]), 5 * np.log(n) - 2 * ll, rtol=1e-10)
    # For a linear-Gaussian model the Laplace evidence is the exact marginal likelihood
    # y ~ N(0, σ²I + s² X Xᵀ) (σ² as laplace estimates it, s the prior std).
    cov = sigma2 * np.eye(n) + 100.0**2 * X @ X.T
    exact = -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])
    np.testing.assert_allclose(float(comp.log_evidence[0]), exact, atol=1e-6)
    assert comp.best("evidence") == "full" and "log evidence" in str(comp)


def test_compare_models_picks_the_generating_family(x64):
    # Two datasets in one vmapped comparison: x*r (the last coefficient) is needed in the
    # first and absent from the second.
    thetas = ([0.5, -1.0, 2.0, 0.8], [0.5, -1.0, 2.0, 0.0])
    problems = [gaussian_problem(t, seed=8 + i, n_traj=20, sigma=0.5) for i, t in enumerate(thetas)]
    tests = [gaussian_problem(t, seed=20 + i, n_traj=20, sigma=0.5) for i, t in enumerate(thetas)]
    stack = lambda items: jax.tree.map(lambda *a: jnp.stack(a), *items)
    rule = mp.TaylorRule.zeros(("x", "r"), order=1)
    small = rule.with_trainable(rule.mask(["1", "r", "x"]))
    members = lambda r: {"rule": eqx.tree_at(lambda q: q.coefficients, r, jnp.zeros((2, 2, 2)))}
    comp = mp.compare_models(
        {"small": members(small), "full": members(rule)},
        stack(problems),
        LinearLoss(),
        test=stack(tests),
        steps=5,
        ensemble=True,
    )
    assert comp.aic.shape == (2, 2) and comp.n_params == (4, 5)
    for criterion in ("held_out", "aic", "bic", "evidence"):
        assert comp.names[int(comp.best(criterion)[0])] == "full", criterion
    for criterion in ("bic", "evidence"):
        assert comp.names[int(comp.best(criterion)[1])] == "small", criterion

    # The ensemble scores each dataset as a comparison of that dataset alone would.
    one = mp.compare_models(
        {"small": {"rule": small}, "full": {"rule": rule}},
        problems[1],
        LinearLoss(),
        test=tests[1],
        steps=5,
    )
    for field in ("log_likelihood", "held_out_log_likelihood", "aic", "bic", "log_evidence"):
        np.testing.assert_allclose(getattr(comp, field)[1], getattr(one, field), rtol=1e-8)
    rows = one.table()
    assert [r["model"] for r in rows] == ["small", "full"] and rows[0]["k"] == 4
    assert one.best("bic") == "small"


@pytest.mark.slow
def test_laplace_std_matches_the_spread_of_refits_across_datasets(x64):
    """On Oja's rule restricted to its two terms, the Laplace std of each coefficient equals
    the standard deviation of the fitted coefficient over 40 simulated datasets, within the
    sampling error of a standard deviation from 40 draws (about 11 %, here 3 of them)."""
    d, per = 40, 3
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(6, 20, n_trajectories=d * per, std=0.1, key=jr.key(0))
    w0 = 0.01 * jr.normal(jr.key(1), (d * per, 10, 6))
    readout = mp.nn.ActivityReadout(noise_std=0.01)
    data, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=jr.key(2))
    data = jax.tree.map(lambda a: a.reshape((d, per) + a.shape[1:]), data)
    rule = mp.TaylorRule.zeros(("x", "y", "w"))
    rule = rule.with_trainable(rule.mask(["x*y", "y^2*w"]))
    rule = eqx.tree_at(lambda r: r.coefficients, rule, jnp.zeros((d,) + rule.coefficients.shape))
    student = mp.nn.PlasticDense(rule, eta=1.0, activation="sigmoid")
    loss = mp.losses.ActivityMSE()
    fitted = mp.fit(student, data, loss, steps=20, ensemble=True, progress=False).model
    post = mp.laplace(fitted, data, loss, ensemble=True)
    for term in ("x*y", "y^2*w"):
        e = fitted.rule.monomial(term)
        spread = np.std(np.asarray(fitted.rule.coefficients)[(slice(None),) + e], ddof=1)
        std = np.mean(np.asarray(post.std().rule.coefficients)[(slice(None),) + e])
        assert abs(std / spread - 1) < 0.35, (term, std, spread)
