"""One contract for every solver of `mp.fit`, tested once over solver × loss.

Every (solver, problem) pair must: record the loss and parameters of every step; trace its
step once; draw a fresh minibatch each step; fit vmapped ensemble members exactly as separate
fits; resume from a checkpoint bit for bit; stop with `FitDivergedError` naming the step and
holding the last finite model; show a progress bar; stop when the callback asks.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import tree_allclose

import metaplastic as mp


@dataclasses.dataclass(frozen=True)
class Problem:
    """A model (`wrap(rule(key))`), its data (trajectories on the leading axis) and a loss."""

    name: str
    rule: object  # (key) -> the initial rule
    wrap: object  # (rule) -> the model holding it
    data: object
    loss: object

    def make(self, key):
        return self.wrap(self.rule(key))

    def ensemble(self, keys):
        """Models whose rule arrays have a leading member axis (one rule per key)."""
        return self.wrap(eqx.filter_vmap(self.rule)(keys))


def _activity_problem() -> Problem:
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(4, 12, n_trajectories=6, std=0.5, key=jr.key(0))
    w0 = 0.1 * jr.normal(jr.key(1), (6, 3, 4))
    data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))
    rule = lambda k: mp.TaylorRule.random(("x", "y", "w"), 1, key=k)
    wrap = lambda r: mp.nn.PlasticDense(r, eta=1.0)
    return Problem("activity", rule, wrap, data, mp.losses.ActivityMSE())


def _choice_problem() -> Problem:
    bh = mp.behaviour
    task = bh.OperantTask(((0.2, 0.8),), 12)
    data = bh.recovery_data(
        mp.rules.reward_modulated(), seeds=1, n_train=6, n_test=1, task=task, key=jr.key(0)
    )  # the marginal likelihood over the default draws of the input noise
    network = data.teacher
    train = jax.tree.map(lambda a: a[0], data.train)
    rule = lambda k: mp.TaylorRule.random(("x", "r"), 1, scale=1e-2, key=k)
    return Problem("choices", rule, network.with_rule, train, bh.ChoiceBCE())


def _trace_choice_problem() -> Problem:
    """Choices of a fly learning with an eligibility trace from rewards delayed by a trial:
    the trace's decay trains with the coefficients of the rule it accumulates."""
    bh = mp.behaviour
    task = bh.OperantTask(((0.2, 0.8),), 12)
    true = mp.rules.TraceRule.from_expression("trace(λ=0.6): x", ("x",), 1)
    data = bh.recovery_data(
        true, seeds=1, n_train=6, n_test=1, task=task, reward_delay=1, draws=None, key=jr.key(0)
    )
    train = jax.tree.map(lambda a: a[0], data.train)

    def rule(k):
        inner = mp.TaylorRule(1e-2 * jr.normal(k, (2,)), ("x",))
        return mp.rules.TraceRule(inner, 0.5)

    return Problem("trace_choices", rule, data.teacher.with_rule, train, bh.ChoiceBCE())


def _bcm_activity_problem() -> Problem:
    """Activity of a layer learning by BCM: the threshold's time constant trains with the
    amplitude."""
    teacher = mp.nn.PlasticDense(mp.rules.BCMRule(0.5, 4.0), eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(4, 12, n_trajectories=6, std=0.5, key=jr.key(0))
    w0 = 0.1 * jr.normal(jr.key(1), (6, 3, 4))
    data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))

    def rule(k):
        k1, k2 = jr.split(k)
        return eqx.tree_at(
            lambda r: (r.coefficient, r.log_tau),
            mp.rules.BCMRule(),
            (0.1 * jr.normal(k1, ()), 0.5 * jr.normal(k2, ())),
        )

    wrap = lambda r: mp.nn.PlasticDense(r, eta=1.0)
    return Problem("bcm_activity", rule, wrap, data, mp.losses.ActivityMSE())


PROBLEMS = {
    "activity": _activity_problem,
    "choices": _choice_problem,
    # Rules with memory meet the same contract (their state rides in the layer's state).
    "trace_choices": _trace_choice_problem,
    "bcm_activity": _bcm_activity_problem,
}
# One solver object per name: fits of one problem by one solver share a compiled program
# (as a user's refits do), so each (solver, problem, shape) pair compiles once.
SOLVERS = {
    "adam": mp.Optax(optax.adam(1e-2)),
    "lbfgs": mp.Optax(optax.lbfgs()),
    "levenberg_marquardt": mp.LevenbergMarquardt(),
    # The QR steps whatever the dtype (the default takes them below float64 only).
    "levenberg_marquardt_qr": mp.LevenbergMarquardt(linear_solver="qr"),
}
# Every solver meets every part of the contract on at least one problem in the default run;
# the full solver × problem matrix runs with the slow tests (each fit compiles anew), the
# rules with memory included (8-17 s a case on 2 cores: slow only).
FAST = {
    ("levenberg_marquardt", "activity"),
    ("levenberg_marquardt", "choices"),
    ("levenberg_marquardt_qr", "activity"),
    ("adam", "choices"),
    ("lbfgs", "activity"),
}
CASES = [
    pytest.param(s, p, marks=() if (s, p) in FAST else pytest.mark.slow)
    for s in SOLVERS
    for p in PROBLEMS
]


@pytest.fixture(scope="module")
def problems():
    """`problems(name)`: the problem in float32, `problems(name, x64=True)` in float64 (then
    fit it under `jax.enable_x64`)."""
    cache = {}

    def get(name, x64=False):
        if (name, x64) not in cache:
            with jax.enable_x64(x64):
                cache[name, x64] = PROBLEMS[name]()
        return cache[name, x64]

    return get


def _fit(problem, solver, **kw):
    kw.setdefault("steps", 4)
    kw.setdefault("progress", False)
    return mp.fit(problem.make(jr.key(3)), problem.data, problem.loss, solver=solver, **kw)


def _rule_arrays(rule):
    """The rule's trainable arrays (a Taylor rule's coefficients, a trace's decay too)."""
    return jax.tree.leaves(eqx.filter(rule, eqx.is_inexact_array))


def _bitwise(a, b):
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.parametrize("solver_name,problem_name", CASES)
def test_history_trace_minibatches_and_result(solver_name, problem_name, problems):
    problem = problems(problem_name)
    result = _fit(problem, SOLVERS[solver_name], steps=5, batch_size=2, key=jr.key(7))
    assert isinstance(result, mp.FitResult)
    assert result.n_traces <= 1  # not once per step (0: an equal fit compiled it)
    assert result.history.loss.shape == (5,)
    assert np.all(np.isfinite(result.history.loss))
    recorded = _rule_arrays(result.history.params.rule)
    assert recorded and all(a.shape[0] == 5 for a in recorded)
    # The last recorded parameters are the fitted model's.
    for a, b in zip(recorded, _rule_arrays(result.model.rule), strict=True):
        np.testing.assert_array_equal(a[-1], b)
    # The objective went down over the fit (each step sees another random subset, so
    # compare the full-data objective before and after).
    before = problem.loss(problem.make(jr.key(3)), problem.data)
    after = problem.loss(result.model, problem.data)
    assert after < before
    # A different key draws different minibatches, hence a different fit.
    other = _fit(problem, SOLVERS[solver_name], steps=5, batch_size=2, key=jr.key(8))
    assert not np.array_equal(other.history.loss, result.history.loss)


@pytest.mark.parametrize("solver_name,problem_name", CASES)
def test_ensemble_members_equal_separate_fits(solver_name, problem_name, problems, x64):
    problem = problems(problem_name, x64=True)
    keys = jr.split(jr.key(11), 2)
    members = problem.ensemble(keys)
    kw = dict(steps=3, progress=False, solver=SOLVERS[solver_name])
    ens = mp.fit(members, problem.data, problem.loss, ensemble=True, data_ensemble_axis=None, **kw)
    assert ens.n_traces <= 1 and ens.history.loss.shape == (3, 2)
    for i in range(2):
        single = mp.fit(problem.make(keys[i]), problem.data, problem.loss, **kw)
        np.testing.assert_allclose(ens.history.loss[:, i], single.history.loss, rtol=1e-9)
        assert tree_allclose(
            jax.tree.map(lambda a, i=i: a[i], eqx.filter(ens.model.rule, eqx.is_array)),
            eqx.filter(single.model.rule, eqx.is_array),
            rtol=1e-8,
            atol=1e-12,
        )


@pytest.mark.parametrize("solver_name,problem_name", CASES)
def test_stopped_fit_resumes_bitwise(solver_name, problem_name, problems, tmp_path):
    problem = problems(problem_name)
    kw = dict(steps=6, batch_size=3, key=jr.key(5))
    whole = _fit(problem, SOLVERS[solver_name], checkpoint_dir=tmp_path / "a", **kw)
    stop = lambda step, loss, model: step == 2
    first = _fit(problem, SOLVERS[solver_name], checkpoint_dir=tmp_path / "b", callback=stop, **kw)
    assert len(first.history.loss) == 3  # the callback stopped the fit after step 2
    resumed = _fit(problem, SOLVERS[solver_name], checkpoint_dir=tmp_path / "b", resume=True, **kw)
    _bitwise(resumed.model, whole.model)
    np.testing.assert_array_equal(resumed.history.loss, whole.history.loss)
    _bitwise(resumed.history.params, whole.history.params)


def _poisoned(data, index):
    """The same data with one trajectory's recorded values NaN."""
    if isinstance(data, mp.data.ActivityDataset):
        return eqx.tree_at(lambda d: d.activity, data, data.activity.at[index].set(jnp.nan))
    if isinstance(data, mp.behaviour.NoisyChoices):  # every draw of the trajectory
        x = data.packed.inputs
        return eqx.tree_at(lambda d: d.packed.inputs, data, x.at[index].set(jnp.nan))
    return eqx.tree_at(lambda d: d.inputs, data, data.inputs.at[index].set(jnp.nan))


@pytest.mark.parametrize("solver_name,problem_name", CASES)
def test_divergence_names_the_step_and_keeps_the_last_finite_model(
    solver_name, problem_name, problems, tmp_path
):
    problem = problems(problem_name)
    bad = dataclasses.replace(problem, data=_poisoned(problem.data, 0))
    # Batches of one trajectory: the fit diverges at the first step that draws trajectory 0.
    seen = []
    record = lambda step, loss, model: seen.append(step)
    with pytest.raises(mp.FitDivergedError) as info:
        _fit(
            bad,
            SOLVERS[solver_name],
            steps=60,
            batch_size=1,
            key=jr.key(0),
            callback=record,
            checkpoint_dir=tmp_path,
        )
    err = info.value
    assert err.step == len(seen) and f"step {err.step}" in str(err)
    assert err.quantity in ("loss", "parameter") or err.quantity.startswith("parameter")
    history = err.result.history
    assert len(history.loss) == err.step and np.all(np.isfinite(history.loss))
    last = _rule_arrays(err.last_finite_model.rule)
    assert last and all(np.all(np.isfinite(np.asarray(a))) for a in last)
    if err.step:
        for a, b in zip(_rule_arrays(history.params.rule), last, strict=True):
            np.testing.assert_array_equal(a[-1], b)
    saved, header = mp.load_checkpoint(tmp_path, problem.make(jr.key(3)))
    assert header["status"] == "diverged" and header["step"] == err.step
    _bitwise(saved.model.rule, err.last_finite_model.rule)


@pytest.mark.parametrize("solver_name", SOLVERS)
def test_progress_bar(solver_name, problems, capsys):
    _fit(problems("activity"), SOLVERS[solver_name], steps=2, progress=True)
    err = capsys.readouterr().err
    assert f"fit ({type(SOLVERS[solver_name]).__name__})" in err and "loss=" in err


def test_default_solver_follows_the_loss(problems):
    problem = problems("activity")
    gauss_newton = _fit(problem, None, steps=2)
    assert isinstance(gauss_newton.state, jax.Array) and gauss_newton.state.shape == ()
    plain = _fit(dataclasses.replace(problem, loss=lambda m, b: problem.loss(m, b)), None, steps=2)
    assert not isinstance(plain.state, jax.Array)  # an optax state


def test_levenberg_marquardt_needs_gauss_newton_structure(problems):
    problem = problems("activity")
    with pytest.raises(mp.MetaplasticError, match="Gauss-Newton structure"):
        _fit(dataclasses.replace(problem, loss=lambda m, b: 0.0), mp.LevenbergMarquardt())


@pytest.mark.parametrize("penalty", [mp.losses.L1(1e-2), mp.losses.L2(1e-2)])
@pytest.mark.parametrize("solver_name", ["adam", "levenberg_marquardt"])
def test_every_solver_minimises_the_same_penalised_objective(penalty, solver_name, problems):
    """The recorded objective is the loss plus the penalty, whatever the solver."""
    problem = problems("activity")
    result = _fit(problem, SOLVERS[solver_name], steps=3, penalty=penalty)
    model = eqx.combine(
        jax.tree.map(lambda a: jnp.asarray(a[-1]), result.history.params),
        eqx.partition(result.model, mp.rule_filter_spec(result.model))[1],
    )
    expected = problem.loss(model, problem.data) + penalty(model)
    if solver_name == "levenberg_marquardt":  # LM records the objective after its step
        np.testing.assert_allclose(result.history.loss[-1], expected, rtol=1e-5)
    assert penalty(model) > 0


def test_levenberg_marquardt_matches_optimistix(x64):
    """A full-batch Levenberg-Marquardt fit ends where optimistix's does (same problem, the
    residuals of the activity loss as a least-squares problem)."""
    optx = pytest.importorskip("optimistix")
    problem = _activity_problem()
    model = problem.make(jr.key(3))
    ours = mp.fit(model, problem.data, problem.loss, steps=40, progress=False)
    params, static = eqx.partition(model, mp.rule_filter_spec(model))

    def residuals(p, data):
        (obs,) = problem.loss.observe(eqx.combine(p, static), data)
        return jnp.where(obs.mask, obs.predictions - obs.targets, 0.0)

    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-14)
    theirs = optx.least_squares(residuals, solver, params, args=problem.data, max_steps=400)
    np.testing.assert_allclose(
        ours.model.rule.coefficients, theirs.value.rule.coefficients, rtol=1e-5, atol=1e-7
    )


class _Linear(eqx.Module):
    theta: jax.Array


class _LinearLeastSquares(mp.losses.AbstractGaussNewtonLoss):
    """`mean (A θ − b)²` over the rows of `A` (the "trajectories"): a least-squares problem
    with a closed-form solution, posed as a loss with Gauss–Newton structure."""

    def observe(self, model, batch):
        f = batch["a"] @ model.theta
        return (mp.losses.Observations(f, batch["b"], jnp.ones(f.shape, bool), "squared_error"),)


def _least_squares(kappa, m=4000, n=6, seed=0):
    """`A` (m × n) with singular values from 1 to 1/kappa, a consistent `b`, the solution."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, n)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = (u * np.logspace(0, -np.log10(kappa), n)) @ v.T
    solution = rng.standard_normal(n)
    return a, a @ solution, solution


def _fit_least_squares(a, b, solver, dtype, steps=12):
    data = {"a": jnp.asarray(a, dtype), "b": jnp.asarray(b, dtype)}
    model = _Linear(jnp.zeros(a.shape[1], dtype))
    spec = _Linear(True)
    result = mp.fit(
        model,
        data,
        _LinearLeastSquares(),
        solver=solver,
        steps=steps,
        filter_spec=spec,
        progress=False,
    )
    return np.asarray(result.model.theta, np.float64)


def test_qr_and_normal_steps_agree_on_a_well_conditioned_problem(x64):
    a, b, solution = _least_squares(kappa=10.0)
    qr = mp.LevenbergMarquardt(chunks=4)  # the factor is accumulated over 4 chunks of rows
    normal = mp.LevenbergMarquardt(chunks=4, linear_solver="normal")
    # One step from zero with the same damping: the same damped Gauss-Newton step.
    one_qr = _fit_least_squares(a, b, qr, jnp.float64, steps=1)
    one_normal = _fit_least_squares(a, b, normal, jnp.float64, steps=1)
    np.testing.assert_allclose(one_qr, one_normal, rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(one_qr)) > 0.1  # the step moved
    np.testing.assert_allclose(
        _fit_least_squares(a, b, qr, jnp.float64), solution, rtol=1e-10, atol=1e-12
    )


def test_qr_step_keeps_float32_accuracy_where_normal_equations_lose_it():
    """κ(A) = 1e5: κ² ε₃₂ ≈ 1e3, so float32 normal equations lose the weakest directions,
    while the QR solve's error is of order κ ε₃₂ ≈ 1e-2."""
    a, b, solution = _least_squares(kappa=1e5)
    qr = _fit_least_squares(a, b, mp.LevenbergMarquardt(chunks=4), jnp.float32, steps=30)
    normal = _fit_least_squares(
        a, b, mp.LevenbergMarquardt(chunks=4, linear_solver="normal"), jnp.float32, steps=30
    )
    err_qr = np.max(np.abs(qr - solution)) / np.max(np.abs(solution))
    err_normal = np.max(np.abs(normal - solution)) / np.max(np.abs(solution))
    assert err_qr < 0.02
    assert err_normal > 10 * err_qr


def test_levenberg_marquardt_rejects_bad_options():
    with pytest.raises(mp.MetaplasticError, match="linear_solver"):
        mp.LevenbergMarquardt(linear_solver="cholesky")
    with pytest.raises(mp.MetaplasticError, match="min_damping"):
        mp.LevenbergMarquardt(min_damping=-1.0)
    with pytest.raises(mp.MetaplasticError, match="chunks must be None or a positive integer"):
        mp.LevenbergMarquardt(chunks=0)


@pytest.mark.parametrize("problem_name", ["activity", "choices"])
def test_qr_and_normal_fits_agree_in_float64(problem_name, problems, x64):
    """The QR and normal-equation steps are the same steps in exact arithmetic: on the
    library's own problems (squared error, and Bernoulli choices through the Fisher
    information) a float64 fit takes the same path to rounding."""
    problem = problems(problem_name, x64=True)
    fits = [
        _fit(problem, mp.LevenbergMarquardt(linear_solver=s), steps=4) for s in ("qr", "normal")
    ]
    np.testing.assert_allclose(fits[0].history.loss, fits[1].history.loss, rtol=1e-8)
    np.testing.assert_allclose(
        fits[0].model.rule.coefficients, fits[1].model.rule.coefficients, rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("problem_name, expected", [("activity", "qr"), ("choices", "normal")])
def test_default_linear_solver_in_float32_follows_the_likelihood(problem_name, expected, problems):
    """Below float64 the default takes QR steps for squared-error residuals (whose normal
    equations lose Oja's rule in float32) and the cheaper normal equations for choices."""
    problem = problems(problem_name)
    default = _fit(problem, mp.LevenbergMarquardt(), steps=2)
    chosen = _fit(problem, mp.LevenbergMarquardt(linear_solver=expected), steps=2)
    _bitwise(default.model, chosen.model)


def test_default_chunks_keep_each_jacobian_group_within_the_cpu_budget(monkeypatch, x64):
    """`chunks=None` cuts the trajectories into the fewest equal groups whose Jacobian each
    fits the CPU budget (one trajectory at least), one group on other backends; the fit is
    then the fit with that many chunks, bit for bit."""
    from metaplastic._solver import _base

    a, b, _ = _least_squares(kappa=10.0)  # 4000 "trajectories" of one row, 6 parameters
    data = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    model = _Linear(jnp.zeros(a.shape[1]))
    objective = _base.Objective(_LinearLeastSquares(), (), _Linear(None), mp.Automatic())
    per_trajectory = 6 * 8  # one row of 6 float64 entries
    chosen = lambda: objective.jacobian_chunks(model, data, None)
    assert chosen() == 1  # 4000 rows of 48 bytes: one group of 192 kB
    monkeypatch.setattr(_base, "CPU_JACOBIAN_BYTES", 800 * per_trajectory)
    assert chosen() == 5  # groups of at most 800 rows: 4000 = 5 × 800
    assert objective.jacobian_chunks(model, data, 3) == 3  # an explicit count is kept
    default = _fit_least_squares(a, b, mp.LevenbergMarquardt(), jnp.float64, steps=2)
    explicit = _fit_least_squares(a, b, mp.LevenbergMarquardt(chunks=5), jnp.float64, steps=2)
    assert default.tobytes() == explicit.tobytes()
    monkeypatch.setattr(_base, "CPU_JACOBIAN_BYTES", per_trajectory - 1)
    assert chosen() == 4000  # not even one row fits: one trajectory per group
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chosen() == 1


class _RuleModel(eqx.Module):
    """A model whose only array is a Taylor rule's coefficients, so that the library's
    penalties (which act on Taylor coefficients) see them."""

    rule: mp.TaylorRule


class _RuleLeastSquares(mp.losses.AbstractGaussNewtonLoss):
    """`mean (A θ − b)²` with θ the rule's coefficients, flattened."""

    def observe(self, model, batch):
        f = batch["a"] @ model.rule.coefficients.reshape(-1)
        return (mp.losses.Observations(f, batch["b"], jnp.ones(f.shape, bool), "squared_error"),)


# The penalised problems: A has orthogonal columns with AᵀA/m = c·I, so the objective
# c·θᵢ² − 2 zᵢ θᵢ + penalty(θᵢ) (+ a constant), z = Aᵀb/m, separates into one problem per
# coefficient. The weights are large enough that ignoring the penalty lands far (≥ 0.1) from
# the penalised optimum.
_PENALISED_STEPS = {"adam": 3000, "lbfgs": 200, "levenberg_marquardt": 40}
_PENALISED_STEPS["levenberg_marquardt_qr"] = 40
_PENALISED_TOL = {"adam": 2e-3, "lbfgs": 1e-6, "levenberg_marquardt": 1e-6}
_PENALISED_TOL["levenberg_marquardt_qr"] = 1e-6


def _orthogonal_problem(m=64, c=2.0):
    rng = np.random.default_rng(5)
    q = np.linalg.qr(rng.standard_normal((m, 4)))[0]  # orthonormal columns
    a = q * np.sqrt(c * m)  # AᵀA/m = c I
    z = np.array([0.9, -0.6, 0.15, -0.05])  # two terms survive L1(0.5), two do not
    b = a @ (z / c)  # then Aᵀb/m = z
    return a, b, z, c


def _penalised_fit(solver_name, penalty, a, b):
    data = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    model = _RuleModel(mp.TaylorRule(jnp.full((2, 2), 0.3), ("x", "y")))
    solver = SOLVERS[solver_name]
    result = mp.fit(
        model,
        data,
        _RuleLeastSquares(),
        solver=solver,
        steps=_PENALISED_STEPS[solver_name],
        penalty=penalty,
        progress=False,
    )
    return np.asarray(result.model.rule.coefficients).reshape(-1)


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_reaches_the_closed_form_ridge_optimum(solver_name, x64):
    """L2(λ): the optimum of mean (Aθ − b)² + λ‖θ‖² is (AᵀA/m + λI)⁻¹ Aᵀb/m; a solver that
    dropped the penalty's gradient (or Hessian) would end at the least-squares solution."""
    a, b, z, c = _orthogonal_problem()
    lam = 1.0
    model = _RuleModel(mp.TaylorRule(jnp.asarray(np.arange(4.0).reshape(2, 2)), ("x", "y")))
    data = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    # The loss is the mean squared residual the closed form assumes.
    theta = np.arange(4.0)
    np.testing.assert_allclose(
        _RuleLeastSquares()(model, data), np.mean((a @ theta - b) ** 2), rtol=1e-12
    )
    m = a.shape[0]
    ridge = np.linalg.solve(a.T @ a / m + lam * np.eye(4), a.T @ b / m)
    unpenalised = np.linalg.lstsq(a, b, rcond=None)[0]
    assert np.max(np.abs(ridge - unpenalised)) > 0.1
    fitted = _penalised_fit(solver_name, mp.losses.L2(lam), a, b)
    np.testing.assert_allclose(fitted, ridge, atol=_PENALISED_TOL[solver_name])


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_reaches_the_l1_optimum_on_an_orthogonal_design(solver_name, x64):
    """L1(λ) (smoothed within s of zero) on an orthogonal design: each coefficient solves its
    own 1-D problem, 2cθ − 2z + λθ/√(θ² + s²) = 0, found here by bisection; coefficients with
    |z| < λ/2 end within s of zero (soft thresholding)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    a, b, z, c = _orthogonal_problem()
    lam, s = 0.5, 1e-3
    slope = lambda t, zi: 2 * c * t - 2 * zi + lam * t / np.sqrt(t**2 + s**2)
    optimum = np.array([scipy_optimize.brentq(slope, -5, 5, args=(zi,), xtol=1e-14) for zi in z])
    soft = np.sign(z) * np.maximum(np.abs(z) - lam / 2, 0) / c
    np.testing.assert_allclose(optimum, soft, atol=2 * s)  # the smoothing moves it by < s
    assert np.max(np.abs(optimum - z / c)) > 0.1  # far from the unpenalised solution
    fitted = _penalised_fit(solver_name, mp.losses.L1(lam, smoothing=s), a, b)
    np.testing.assert_allclose(fitted, optimum, atol=_PENALISED_TOL[solver_name])
