import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import finite_difference_grad

import metaplastic as mp
from metaplastic import _fast


def oja_data(n_in=8, n_out=12, length=20, batch=6, *, key=jr.key(0), readout=None):
    k1, k2, k3 = jr.split(key, 3)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=batch, key=k1)
    w0 = 0.01 * jr.normal(k2, (batch, n_out, n_in))
    kwargs = {} if readout is None else {"readout": readout}
    return mp.generate_activity(teacher, x, w0, key=k3, **kwargs)


def test_simulate_shapes_and_padding_is_inert():
    data, weights = oja_data()
    layer = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    sim = mp.simulate(layer, data.initial_weights[0], data.inputs[0], return_weights=True)
    assert sim.activity.shape == (20, 12) and sim.weights.shape == (20, 12, 8)
    np.testing.assert_allclose(sim.weights, weights[0], rtol=1e-6)
    # Padding five steps changes neither the loss nor the weights of the valid part.
    pad = lambda a, v=0.0: jnp.concatenate(
        [a, jnp.full((a.shape[0], 5) + a.shape[2:], v, a.dtype)], 1
    )
    padded = mp.data.ActivityDataset(
        pad(data.inputs, jnp.nan),
        pad(data.activity, jnp.nan),
        data.initial_weights,
        step_mask=pad(data.step_mask, False),
        neuron_mask=data.neuron_mask,
    )
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=jr.key(5), scale=0.1), eta=1.0)
    loss = mp.losses.ActivityMSE()
    a = loss(student, data)
    b = loss(student, padded)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    ga = eqx.filter_grad(loss)(student, data).rule.coefficients
    gb = eqx.filter_grad(loss)(student, padded).rule.coefficients
    np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-12)
    # The same through the hand-written reverse pass (what `fit` uses for this layer).
    params, static = eqx.partition(student, mp.rule_filter_spec(student))
    fast = [mp.TaylorReverse().value_and_grad(loss, params, static, d) for d in (data, padded)]
    np.testing.assert_allclose(fast[0][0], fast[1][0], rtol=1e-6)
    np.testing.assert_allclose(
        fast[0][1].rule.coefficients, fast[1][1].rule.coefficients, rtol=1e-5, atol=1e-12
    )


def hand_simulation(coefficients, factors, eta, activation, w0, inputs, rewards, step_mask):
    """The forward pass written out in numpy, one synapse at a time: `y = f(W x)`, then
    `W ← W + η Σ θ[e] Π_k factor_k^{e_k}` on valid steps, nothing on padded ones."""
    f = {"sigmoid": lambda u: 1 / (1 + np.exp(-u)), "tanh": np.tanh, "identity": lambda u: u}
    w = np.array(w0, np.float64)
    activity, weights = [], []
    for x, r, valid in zip(inputs, rewards, step_mask):
        y = f[activation](w @ x)
        delta = np.zeros_like(w)
        for i, j in np.ndindex(*w.shape):
            local = {"x": x[j], "y": y[i], "w": w[i, j], "r": r}
            for e in np.ndindex(*coefficients.shape):
                delta[i, j] += coefficients[e] * np.prod(
                    [local[k] ** p for k, p in zip(factors, e)]
                )
        if valid:
            w = w + eta * delta
        activity.append(y)
        weights.append(w)
    return np.array(activity), np.array(weights)


@pytest.mark.parametrize("factors", [("x", "y", "w", "r"), ("r", "w", "y", "x")])
def test_simulation_matches_a_hand_written_loop(x64, factors):
    rng = np.random.default_rng(0)
    batch, length, n_out, n_in = 2, 9, 3, 4
    coefficients = 0.3 * rng.standard_normal((3,) * len(factors))
    layer = mp.nn.PlasticDense(mp.TaylorRule(coefficients, factors), eta=0.7, activation="tanh")
    inputs = rng.uniform(-1, 1, (batch, length, n_in))
    rewards = rng.uniform(-1, 1, (batch, length))
    w0 = 0.5 * rng.standard_normal((batch, n_out, n_in))
    # Padded steps in the middle and at the end, with junk behind them that a step that
    # ignored the mask would pick up.
    mask = np.ones((batch, length), bool)
    mask[0, [3, 7, 8]] = False
    mask[1, 5:] = False
    inputs[~mask] = 5.0
    rewards[~mask] = -3.0
    want = [
        hand_simulation(coefficients, factors, 0.7, "tanh", w0[b], inputs[b], rewards[b], mask[b])
        for b in range(batch)
    ]
    activity, weights = (np.stack(a) for a in zip(*want))
    # The reference itself: the rewards and the padded steps matter.
    no_reward = hand_simulation(
        coefficients, factors, 0.7, "tanh", w0[0], inputs[0], 0 * rewards[0], mask[0]
    )
    assert not np.allclose(no_reward[1][-1], weights[0, -1], atol=1e-3)
    unmasked = hand_simulation(
        coefficients, factors, 0.7, "tanh", w0[0], inputs[0], rewards[0], np.ones(length, bool)
    )
    assert not np.allclose(unmasked[1][-1], weights[0, -1], atol=1e-3)
    np.testing.assert_array_equal(weights[0, 3], weights[0, 2])  # a padded step: unchanged

    one = [jnp.asarray(a[0]) for a in (w0, inputs, rewards, mask)]
    for kwargs in ({}, {"checkpoint": True}, {"checkpoint": 4}):
        sim = mp.simulate(layer, *one, return_weights=True, **kwargs)
        np.testing.assert_allclose(sim.activity, activity[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sim.weights, weights[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sim.final_weights, weights[0, -1], rtol=1e-10, atol=1e-12)
    # The hand-written reverse pass has its own forward loop.
    fast_activity, fast_final = _fast.taylor_simulate(layer, *one)
    np.testing.assert_allclose(fast_activity, activity[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast_final, weights[0, -1], rtol=1e-10, atol=1e-12)
    # A dataset, with the junk written behind the mask after the constructor (which zeroes
    # padded entries).
    data = mp.data.ActivityDataset(
        np.where(mask[..., None], inputs, 0.0),
        np.zeros((batch, length, n_out)),
        w0,
        step_mask=mask,
        rewards=np.where(mask, rewards, 0.0),
    )
    data = eqx.tree_at(
        lambda d: (d.inputs, d.rewards), data, (jnp.asarray(inputs), jnp.asarray(rewards))
    )
    np.testing.assert_array_equal(data.inputs, inputs)
    fast = jax.vmap(lambda *a: _fast.taylor_simulate(layer, *a))(
        data.initial_weights, data.inputs, data.rewards, data.step_mask
    )
    sim = mp.simulate_dataset(layer, data)
    for sim_activity, sim_final in ((sim.activity, sim.final_weights), fast):
        valid = mask[..., None]
        np.testing.assert_allclose(
            np.where(valid, sim_activity, 0), np.where(valid, activity, 0), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(sim_final, weights[:, -1], rtol=1e-10, atol=1e-12)
    sim = mp.simulate_dataset(layer, data, return_weights=True)
    np.testing.assert_allclose(sim.weights, weights, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", [mp.ReverseMode, mp.TaylorReverse])
@pytest.mark.parametrize("checkpoint", [False, True, 7])
def test_trajectory_gradient_matches_finite_differences(x64, checkpoint, strategy):
    data, _ = oja_data(n_in=4, n_out=5, length=15, batch=2)
    rule = mp.TaylorRule.random(key=jr.key(1), scale=0.3)
    loss = mp.losses.ActivityMSE()

    @jax.jit
    def value_and_grad(coefficients):
        layer = mp.nn.PlasticDense(mp.TaylorRule(coefficients, rule.factors), eta=1.0)
        params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
        value, grads = strategy(checkpoint=checkpoint).value_and_grad(loss, params, static, data)
        return value, grads.rule.coefficients

    assert rule.coefficients.dtype == jnp.float64
    auto = np.asarray(value_and_grad(rule.coefficients)[1])
    numeric = finite_difference_grad(lambda c: value_and_grad(c)[0], rule.coefficients)
    np.testing.assert_allclose(auto, numeric, rtol=1e-5, atol=1e-11)


def test_one_trace_per_fit_with_minibatches():
    data, _ = oja_data(batch=7)
    layer = mp.nn.PlasticDense(mp.TaylorRule.zeros(), eta=1.0)
    loss = mp.losses.ActivityMSE()
    # 18 steps on random batches of 3: as many updates as 6 epochs of 3 batches.
    result = mp.fit(
        layer,
        data,
        loss,
        solver=mp.Optax(optax.adam(1e-2)),
        steps=18,
        batch_size=3,
        progress=False,
    )
    assert result.n_traces == 1  # not once per step (a new optimiser: a new program)
    assert result.history.loss.shape == (18,)
    assert result.history.params.rule.coefficients.shape == (18, 3, 3, 3)
    # Each step's loss is on its own random batch, so the fit's progress is judged on the
    # whole dataset.
    assert loss(result.model, data) < loss(layer, data)


def test_equal_fits_share_one_compiled_program(x64):
    """A fit compiles its step once; a later fit of the same program (solver, shapes, batch
    layout) reuses it, from any start, and gives what a fresh compile gives, bit for bit."""
    data, _ = oja_data(batch=4)
    loss = mp.losses.ActivityMSE()
    layer = lambda k: mp.nn.PlasticDense(mp.TaylorRule.random(key=k, scale=0.01), eta=1.0)
    fit = lambda model, solver, d=data: mp.fit(
        model, d, loss, solver=solver, steps=4, steps_per_call=1, progress=False
    )
    jax.clear_caches()
    first = fit(layer(jr.key(0)), mp.LevenbergMarquardt())
    assert first.n_traces == 1  # four calls, one trace
    again = fit(layer(jr.key(1)), mp.LevenbergMarquardt())  # an equal solver, another start
    assert again.n_traces == 0
    jax.clear_caches()
    fresh = fit(layer(jr.key(1)), mp.LevenbergMarquardt())
    assert fresh.n_traces == 1
    for a, b in zip(
        jax.tree.leaves((again.model, again.history)), jax.tree.leaves((fresh.model, fresh.history))
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # Another solver option, or data of other shapes, is another program.
    assert fit(layer(jr.key(1)), mp.LevenbergMarquardt(damping=1e-2)).n_traces == 1
    fewer = jax.tree.map(lambda a: a[:3], data)
    assert fit(layer(jr.key(1)), mp.LevenbergMarquardt(), fewer).n_traces == 1


def test_fit_ensemble_matches_separate_fits():
    data, _ = oja_data(batch=4)
    keys = jr.split(jr.key(2), 3)
    layers = eqx.filter_vmap(
        lambda k: mp.nn.PlasticDense(mp.TaylorRule.random(key=k, scale=0.01), eta=1.0)
    )(keys)
    opt = mp.Optax(optax.adam(1e-2))
    ens = mp.fit(
        layers,
        data,
        mp.losses.ActivityMSE(),
        solver=opt,
        steps=4,
        progress=False,
        ensemble=True,
        data_ensemble_axis=None,
    )
    assert ens.n_traces <= 1  # not once per step
    for i in range(3):
        single = mp.nn.PlasticDense(mp.TaylorRule.random(key=keys[i], scale=0.01), eta=1.0)
        res = mp.fit(single, data, mp.losses.ActivityMSE(), solver=opt, steps=4, progress=False)
        np.testing.assert_allclose(
            ens.model.rule.coefficients[i], res.model.rule.coefficients, rtol=1e-4, atol=1e-7
        )


def test_small_recovery_of_oja_rule(x64):
    data, _ = oja_data(n_in=10, n_out=20, length=50, batch=10)
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=jr.key(4)), eta=1.0)
    result = mp.fit(
        student,
        data,
        mp.losses.ActivityMSE(),
        solver=mp.LevenbergMarquardt(chunks=5),
        steps=40,
        batch_size=5,
        progress=False,
    )
    rule = result.model.rule
    # Noiseless data in float64: the fit is Oja's rule to the precision the README states
    # for float64 fits (1e-11 on the 100 -> 1000 example; 1.0e-10 measured here, on a
    # 10 -> 20 layer with minibatches of 5 trajectories).
    error = np.abs(np.asarray(rule.coefficients) - np.asarray(mp.rules.oja().coefficients))
    assert error.max() < 1e-9, error.max()
    assert rule.to_expression(tol=1e-6) == "x*y - y^2*w"
    held_out = mp.tasks.gaussian_stimuli(10, 50, n_trajectories=3, key=jr.key(9))
    w0 = 0.01 * jr.normal(jr.key(8), (3, 20, 10))
    scores = mp.metrics.compare_layers(
        mp.nn.PlasticDense(mp.rules.oja()), result.model, w0, held_out
    )
    assert np.median(scores["r2_weights"]) > 0.99


def test_readout_records_subset_with_fixed_noise():
    readout = mp.nn.ActivityReadout(recorded_fraction=0.5, noise_std=0.1)
    data, _ = oja_data(readout=readout)
    assert int(data.neuron_mask[0].sum()) == 6
    assert bool(jnp.all(data.activity[:, :, ~data.neuron_mask[0]] == 0))
    again, _ = oja_data(readout=readout)
    np.testing.assert_array_equal(data.activity, again.activity)
    with pytest.raises(mp.MetaplasticError, match="recorded_fraction"):
        mp.nn.ActivityReadout(recorded_fraction=0.0, noise_std=0.1)
    with pytest.raises(mp.MetaplasticError, match="noise_std"):
        mp.nn.ActivityReadout(recorded_fraction=1.0, noise_std=-1.0)


def test_readout_noise_has_its_scale_and_zero_noise_is_clean():
    clean = jnp.linspace(-1.0, 1.0, 300 * 40).reshape(300, 40)
    noisy, mask = mp.nn.ActivityReadout(1.0, 0.3).observe(clean, key=jr.key(0))
    assert bool(jnp.all(mask))
    residual = np.asarray(noisy - clean)
    assert residual.std() == pytest.approx(0.3, rel=0.03)
    assert abs(residual.mean()) < 0.01
    assert abs(np.corrcoef(residual.ravel(), np.asarray(clean).ravel())[0, 1]) < 0.03
    exact, _ = mp.nn.ActivityReadout(1.0, 0.0).observe(clean, key=jr.key(0))
    np.testing.assert_array_equal(exact, clean)
    # Through generate_activity: the recording is the simulated activity plus noise of the
    # readout's scale on the recorded neurons.
    for std in (0.0, 0.05):
        readout = mp.nn.ActivityReadout(recorded_fraction=0.5, noise_std=std)
        data, _ = oja_data(readout=readout)
        sim = eqx.filter_jit(mp.simulate_dataset)(mp.nn.PlasticDense(mp.rules.oja()), data)
        recorded = np.asarray(data.neuron_mask[0])
        residual = np.asarray(data.activity - sim.activity)[:, :, recorded]
        if std == 0.0:
            np.testing.assert_allclose(residual, 0.0, atol=1e-6)
        else:
            assert residual.std() == pytest.approx(std, rel=0.1)


def test_r2_score():
    ref = jnp.arange(10.0)
    assert float(mp.metrics.r2_score(ref, ref)) == 1.0
    assert float(mp.metrics.r2_score(ref, jnp.full(10, ref.mean()))) == pytest.approx(0.0)


def test_least_squares_ensemble_matches_single_fits(x64):
    datasets = [oja_data(n_in=5, n_out=6, length=12, batch=4, key=jr.key(s))[0] for s in range(2)]
    data = jax.tree.map(lambda *xs: jnp.stack(xs), *datasets)
    keys = jr.split(jr.key(3), 2)
    make = lambda k: mp.nn.PlasticDense(mp.TaylorRule.random(key=k), eta=1.0)
    kwargs = dict(
        solver=mp.LevenbergMarquardt(chunks=4),
        steps=4,
        progress=False,
        penalty=mp.losses.L2(1e-8),
    )
    loss = mp.losses.ActivityMSE()
    ens = mp.fit(eqx.filter_vmap(make)(keys), data, loss, ensemble=True, **kwargs)
    assert ens.n_traces <= 1  # not once per step
    assert ens.history.loss.shape == (4, 2)
    assert ens.state.shape == (2,)  # one Levenberg-Marquardt damping per member
    for i in range(2):
        single = mp.fit(make(keys[i]), datasets[i], loss, **kwargs)
        np.testing.assert_allclose(
            ens.model.rule.coefficients[i], single.model.rule.coefficients, rtol=1e-7, atol=1e-10
        )
        assert single.history.loss[-1] < single.history.loss[0]
