"""The hand-written reverse pass of Taylor-rule layers (`metaplastic.TaylorReverse`) against
jax.grad (`metaplastic.ReverseMode`) and finite differences.

Gradients with respect to the rule go through the public differentiation strategies; gradients
with respect to the data, η and the storage layout need the fast loss as a function
(`metaplastic._fast.taylor_activity_mse`), which has no public name."""

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


def padded_data(factors, *, n_in=4, n_out=5, length=13, key=jr.key(0)):
    """Three trajectories of unequal length (padded, masked), some neurons unrecorded, and a
    reward signal; the recorded activity is arbitrary."""
    k = jr.split(key, 4)
    inputs = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=3, std=0.5, key=k[0])
    lengths = jnp.array([length, length - 4, 6])
    step_mask = jnp.arange(length)[None, :] < lengths[:, None]
    neuron_mask = jnp.ones((3, n_out), bool).at[1, 0].set(False)
    return mp.data.ActivityDataset(
        inputs,
        jr.uniform(k[1], (3, length, n_out)),
        0.3 * jr.normal(k[2], (3, n_out, n_in)),
        step_mask=step_mask,
        neuron_mask=neuron_mask,
        rewards=jr.normal(k[3], (3, length)) if "r" in factors else None,
    )


MSE = mp.losses.ActivityMSE()


def fast_mse(layer, data, *, checkpoint=False):
    """The activity MSE with the hand-written reverse pass (what `TaylorReverse` differentiates)."""
    return _fast.taylor_activity_mse(layer, data, checkpoint=checkpoint)


def loss_of_coefficients(rule, data, *, eta=0.8, activation="sigmoid", fast=True, checkpoint=False):
    def loss(coefficients):
        layer = mp.nn.PlasticDense(
            mp.TaylorRule(coefficients, rule.factors, trainable=rule.trainable),
            eta=eta,
            activation=activation,
        )
        if fast:
            return fast_mse(layer, data, checkpoint=checkpoint)
        with mp.checkpointing(checkpoint):
            return MSE(layer, data)

    return jax.jit(loss)


def value_and_grad_of_coefficients(strategy, rule, data, *, eta=0.8, activation="sigmoid"):
    """The loss and its gradient with respect to the rule's coefficients, as `fit` takes them
    with the differentiation strategy `strategy`."""

    def value_and_grad(coefficients):
        layer = mp.nn.PlasticDense(
            mp.TaylorRule(coefficients, rule.factors, trainable=rule.trainable),
            eta=eta,
            activation=activation,
        )
        params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
        value, grads = strategy.value_and_grad(MSE, params, static, data)
        return value, grads.rule.coefficients

    return jax.jit(value_and_grad)


@pytest.mark.parametrize(
    "factors, activation, checkpoint",
    [
        (("x", "y", "w"), "sigmoid", False),
        (("x", "y", "w", "r"), "tanh", True),
        (("w", "x", "y", "r"), "sigmoid", 4),
        (("y", "x"), "identity", 5),
    ],
)
def test_gradient_matches_autodiff_and_finite_differences(x64, factors, activation, checkpoint):
    data = padded_data(factors)
    rule = mp.TaylorRule.random(factors, key=jr.key(1), scale=0.3)
    layer = mp.nn.PlasticDense(rule, eta=0.8, activation=activation)
    assert mp.Automatic().choose(MSE, layer, data, jacobian=False) == mp.TaylorReverse()
    fast = value_and_grad_of_coefficients(
        mp.TaylorReverse(checkpoint=checkpoint), rule, data, activation=activation
    )
    plain = value_and_grad_of_coefficients(
        mp.ReverseMode(checkpoint=checkpoint), rule, data, activation=activation
    )
    (v_fast, g_fast), (v_plain, g_plain) = fast(rule.coefficients), plain(rule.coefficients)
    np.testing.assert_allclose(v_fast, v_plain, rtol=1e-12)
    g_fast, g_plain = np.asarray(g_fast), np.asarray(g_plain)
    assert np.abs(g_plain).max() > 1e-3  # a real gradient, not a vacuous comparison
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-9, atol=1e-13)
    numeric = finite_difference_grad(lambda c: fast(c)[0], rule.coefficients)
    np.testing.assert_allclose(g_fast, numeric, rtol=1e-5, atol=1e-10)


def test_padded_steps_contribute_nothing(x64):
    data = padded_data(("x", "y", "w"))
    rule = mp.TaylorRule.random(key=jr.key(2), scale=0.3)
    # Garbage beyond each trajectory's end must not change the loss or its gradient. The
    # constructor zeroes masked entries, so the junk is written behind its back.
    pad = ~data.step_mask[:, :, None]
    assert bool(pad.any())
    garbage = eqx.tree_at(
        lambda d: (d.inputs, d.activity, d.rewards),
        data,
        (
            jnp.where(pad, 1e3, data.inputs),
            jnp.where(pad, -7.0, data.activity),
            jnp.where(pad[:, :, 0], 3.0, data.rewards),
        ),
    )
    assert not np.array_equal(garbage.inputs, data.inputs)
    assert not np.array_equal(garbage.activity, data.activity)
    (va, ga), (vb, gb) = (
        value_and_grad_of_coefficients(mp.TaylorReverse(), rule, d)(rule.coefficients)
        for d in (data, garbage)
    )
    np.testing.assert_allclose(va, vb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-12)


def test_frozen_terms_get_no_gradient(x64):
    data = padded_data(("x", "y", "w"))
    rule = mp.TaylorRule.random(key=jr.key(3), scale=0.3)
    trainable = rule.mask(["x*y", "y^2*w", "w", "1"])
    rule = rule.with_trainable(trainable)
    _, g_fast = value_and_grad_of_coefficients(mp.TaylorReverse(), rule, data)(rule.coefficients)
    _, g_plain = value_and_grad_of_coefficients(mp.ReverseMode(), rule, data)(rule.coefficients)
    assert np.all(np.asarray(g_fast)[~trainable] == 0.0)
    assert np.all(np.asarray(g_fast)[trainable] != 0.0)
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-9, atol=1e-14)


def test_gradients_with_respect_to_the_data_and_initial_weights(x64):
    """Initial weights, inputs, rewards and recorded activity can be differentiated too."""
    data = padded_data(("x", "y", "w", "r"))
    layer = mp.nn.PlasticDense(
        mp.TaylorRule.random(("x", "y", "w", "r"), key=jr.key(4), scale=0.3), eta=0.8
    )
    fast = jax.grad(lambda d: fast_mse(layer, d, checkpoint=4), allow_int=True)
    plain = jax.grad(lambda d: MSE(layer, d), allow_int=True)
    with mp.checkpointing(4):
        fast, plain = fast(data), plain(data)
    for name in ("initial_weights", "inputs", "rewards", "activity"):
        ref = np.asarray(getattr(plain, name))
        assert np.abs(ref).max() > 1e-4, name
        np.testing.assert_allclose(getattr(fast, name), ref, rtol=1e-8, atol=1e-14)


def test_gradient_with_respect_to_eta(x64):
    """η is a static float of `PlasticDense`; the reverse pass still returns its exact
    cotangent for a traced η, checked against central differences."""
    data = padded_data(("x", "y", "w"))
    rule = mp.TaylorRule.random(key=jr.key(5), scale=0.3)
    layer = mp.nn.PlasticDense(rule, eta=0.8)
    c4 = _fast.canonical_coefficients(rule)
    cfg = _fast._config("sigmoid", False, data.inputs.shape[1], 8 * 20)

    def loss(eta):
        return _fast._mse(
            cfg,
            c4,
            eta,
            data.initial_weights,
            data.inputs,
            data.rewards,
            data.step_mask,
            data.neuron_mask,
            data.activity,
        )

    np.testing.assert_allclose(loss(0.8), MSE(layer, data), rtol=1e-12)
    eps = 1e-6
    numeric = (loss(0.8 + eps) - loss(0.8 - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(loss)(0.8), numeric, rtol=1e-6)


def test_checkpointed_segments_of_a_long_trajectory(x64, monkeypatch):
    """Past the storage budget the backward pass recomputes √T-step segments."""
    monkeypatch.setattr(_fast, "STORE_BUDGET_BYTES", 10 * 8 * 4 * 5)
    data = padded_data(("x", "y", "w"), length=40)
    assert _fast._config("sigmoid", False, 40, 8 * 4 * 5).segment == 7
    rule = mp.TaylorRule.random(key=jr.key(6), scale=0.3)
    fast = value_and_grad_of_coefficients(mp.TaylorReverse(), rule, data)
    plain = value_and_grad_of_coefficients(mp.ReverseMode(), rule, data)
    np.testing.assert_allclose(fast(rule.coefficients)[1], plain(rule.coefficients)[1], rtol=1e-9)


@pytest.mark.parametrize("chunk", [2, 8])
def test_trajectories_vmapped_in_chunks(x64, monkeypatch, chunk):
    """Chunks of trajectories vmapped together (the layout on accelerators), with a remainder
    (3 trajectories in chunks of 2) or one chunk larger than the batch, give the same loss and
    gradients as one trajectory at a time."""
    data = padded_data(("x", "y", "w", "r"))
    layer = mp.nn.PlasticDense(
        mp.TaylorRule.random(("x", "y", "w", "r"), key=jr.key(7), scale=0.3), eta=0.8
    )

    def value_and_grads():
        return jax.value_and_grad(lambda lay, d: fast_mse(lay, d), argnums=(0, 1), allow_int=True)(
            layer, data
        )

    one_at_a_time = value_and_grads()
    monkeypatch.setattr(_fast, "CHUNK", chunk)
    assert _fast._config("sigmoid", False, 13, 8 * 20).chunk == chunk
    chunked = value_and_grads()
    np.testing.assert_allclose(chunked[0], one_at_a_time[0], rtol=1e-12)
    ref = one_at_a_time[1][0].rule.coefficients
    assert np.abs(ref).max() > 1e-4
    np.testing.assert_allclose(chunked[1][0].rule.coefficients, ref, rtol=1e-10)
    for name in ("initial_weights", "inputs", "rewards", "activity"):
        np.testing.assert_allclose(
            getattr(chunked[1][1], name), getattr(one_at_a_time[1][1], name), rtol=1e-10
        )


def test_taylor_simulate_for_any_cotangent(x64):
    """The hand-written pass behind `TaylorReverse` (`taylor_simulate`, which differentiates
    `RecordingLoss` for any head): cotangents of the activity and of the final weights,
    through `jax.grad` and `jax.jacrev`, against the generic simulation."""
    data = padded_data(("x", "y", "w", "r"))
    rule = mp.TaylorRule.random(("x", "y", "w", "r"), key=jr.key(7), scale=0.3)

    def one(layer, w0, x, r, m, fast):
        if fast:
            return _fast.taylor_simulate(layer, w0, x, r, m, checkpoint=3)
        sim = mp.simulate(layer, w0, x, r, m, checkpoint=3)
        return sim.activity, sim.final_weights

    def run(coefficients, w0, fast):
        layer = mp.nn.PlasticDense(mp.TaylorRule(coefficients, rule.factors), eta=0.8)
        xs = (data.inputs[0], data.rewards[0], data.step_mask[0])
        activity, final = one(layer, w0, *xs, fast)
        return jnp.sum(jnp.sin(activity)) + jnp.sum(final**2)

    args = (rule.coefficients, data.initial_weights[0])
    fast = jax.grad(lambda *a: run(*a, True), argnums=(0, 1))(*args)
    plain = jax.grad(lambda *a: run(*a, False), argnums=(0, 1))(*args)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    layer = mp.nn.PlasticDense(rule, eta=0.8)
    w0 = data.initial_weights

    def residuals(w, fast):
        xs = (w, data.inputs, data.rewards, data.step_mask)
        activity = jax.vmap(lambda *a: one(layer, *a, fast)[0])(*xs)
        mask = data.step_mask[:, :, None] & data.neuron_mask[:, None, :]
        return jnp.where(mask, activity - data.activity, 0.0)

    jac = jax.jacrev(lambda w: residuals(w, True))(w0)
    ref = jax.jacfwd(lambda w: residuals(w, False))(w0)
    np.testing.assert_allclose(jac, ref, rtol=1e-9, atol=1e-14)


def test_forward_mode_needs_the_plain_path():
    data = padded_data(("x", "y", "w"))
    rule = mp.TaylorRule.random(key=jr.key(8), scale=0.3)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(loss_of_coefficients(rule, data))(rule.coefficients)
    jac = jax.jacfwd(loss_of_coefficients(rule, data, fast=False))(rule.coefficients)
    np.testing.assert_allclose(
        jac, jax.grad(loss_of_coefficients(rule, data))(rule.coefficients), rtol=1e-4, atol=1e-8
    )
    # The strategies: the reverse pass gives no Jacobian, forward mode gives the same gradient.
    layer = mp.nn.PlasticDense(rule, eta=0.8)
    params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
    with pytest.raises(mp.MetaplasticError, match="ForwardMode"):
        mp.TaylorReverse().linearise(MSE, params, static, data)
    assert mp.Automatic().choose(MSE, layer, data, jacobian=True) == mp.ForwardMode()
    _, g_forward = value_and_grad_of_coefficients(mp.ForwardMode(), rule, data)(rule.coefficients)
    np.testing.assert_allclose(g_forward, jac, rtol=1e-4, atol=1e-8)


def test_other_layers_fall_back_to_autodiff():
    rule = mp.MLPRule(("x", "y", "w"), width=4, key=jr.key(9))
    data = padded_data(("x", "y", "w"))
    fast = mp.TaylorReverse()
    assert not fast.supports(MSE, mp.nn.PlasticDense(rule), data, jacobian=False)
    assert fast.supports(MSE, mp.nn.PlasticDense(mp.rules.oja()), data, jacobian=False)
    layer = mp.nn.PlasticDense(rule, eta=0.5)
    # Without a hand-written pass, each step's body is recomputed in the backward pass.
    auto = mp.Automatic().choose(MSE, layer, data, jacobian=False)
    assert auto == mp.ReverseMode(checkpoint=True)
    g = eqx.filter_grad(MSE)(layer, data)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_array)))


def test_fit_runs_in_float64_when_enabled(x64):
    data = padded_data(("x", "y", "w"))
    layer = mp.nn.PlasticDense(mp.TaylorRule.zeros(), eta=1.0)
    result = mp.fit(layer, data, MSE, solver=mp.Optax(optax.adam(1e-2)), steps=3, progress=False)
    assert result.model.rule.coefficients.dtype == jnp.float64
    assert result.history.loss.dtype == np.float64
    assert result.n_traces == 1  # not once per step (a new optimiser: a new program)
    assert result.history.loss[-1] < result.history.loss[0]
    # The fitted model is three float64 Adam steps from zeros, taken here by hand with optax.
    params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
    optimiser = optax.adam(1e-2)
    state = optimiser.init(params)
    for _ in range(3):
        grads = jax.grad(lambda p: MSE(eqx.combine(p, static), data))(params)
        updates, state = optimiser.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    expected = np.asarray(params.rule.coefficients)
    assert np.abs(expected).max() > 0.02  # the steps moved the coefficients
    np.testing.assert_allclose(result.model.rule.coefficients, expected, rtol=1e-10, atol=1e-14)
