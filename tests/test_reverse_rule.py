"""Reverse-mode gradients of a layer whose rule has no hand-written pass (`MLPRule`): the
checkpointed reverse pass that `Automatic` picks for it agrees with plain `jax.grad` through
the scan, with forward mode and with finite differences, and the MLP recovery example
reaches its held-out target."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import finite_difference_grad, run_example
from jax.flatten_util import ravel_pytree

import metaplastic as mp


MSE = mp.losses.ActivityMSE()


def mlp_problem(length=12):
    """A 4 -> 5 sigmoid layer with a small MLP rule, three trajectories of unequal length
    (padded, masked) and one unrecorded neuron; the recorded activity is arbitrary."""
    k = jr.split(jr.key(3), 4)
    inputs = mp.tasks.gaussian_stimuli(4, length, n_trajectories=3, std=0.5, key=k[0])
    step_mask = jnp.arange(length)[None, :] < jnp.array([length, length - 3, 5])[:, None]
    data = mp.data.ActivityDataset(
        inputs,
        jr.uniform(k[1], (3, length, 5)),
        0.3 * jr.normal(k[2], (3, 5, 4)),
        step_mask=step_mask,
        neuron_mask=jnp.ones((3, 5), bool).at[1, 0].set(False),
    )
    layer = mp.nn.PlasticDense(mp.MLPRule(("x", "y", "w"), width=4, key=k[3]), eta=0.5)
    return layer, data


def test_automatic_checkpoints_the_scan_for_rules_without_a_hand_written_pass():
    layer, data = mlp_problem()
    auto = mp.Automatic()
    assert auto.choose(MSE, layer, data, jacobian=False) == mp.ReverseMode(checkpoint=True)
    assert auto.choose(MSE, layer, data, jacobian=True) == mp.ForwardMode()
    taylor = mp.nn.PlasticDense(mp.rules.oja(), eta=0.5)
    assert auto.choose(MSE, taylor, data, jacobian=False) == mp.TaylorReverse()
    # A Taylor layer the hand-written pass does not cover keeps the plain reverse mode.
    plain = auto.choose(
        mp.losses.FunctionLoss(lambda m, d: MSE(m, d)), taylor, data, jacobian=False
    )
    assert plain == mp.ReverseMode()


def test_mlp_rule_gradients_agree_across_strategies(x64):
    layer, data = mlp_problem()
    params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
    theta, unravel = ravel_pytree(params)
    assert theta.dtype == jnp.float64 and theta.size == 4 * 3 + 4 + 4 + 1

    def flat_grad(strategy):
        fn = jax.jit(lambda t: strategy.value_and_grad(MSE, unravel(t), static, data))
        value, grads = fn(theta)
        return float(value), np.asarray(ravel_pytree(grads)[0])

    value, reference = flat_grad(mp.ReverseMode())
    assert np.all(np.isfinite(reference)) and np.max(np.abs(reference)) > 1e-4
    # What Automatic picks for this layer (checked above), and forward mode.
    for strategy in (mp.ReverseMode(checkpoint=True), mp.ForwardMode()):
        v, g = flat_grad(strategy)
        assert v == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(g, reference, rtol=1e-9, atol=1e-13)
    loss = jax.jit(lambda t: MSE(eqx.combine(unravel(t), static), data))
    numeric = finite_difference_grad(loss, theta)
    np.testing.assert_allclose(reference, numeric, rtol=1e-5, atol=1e-10)


@pytest.mark.slow
def test_mlp_rule_recovers_oja_weights_held_out(tmp_path):
    """The MLP rule of `recover_oja.py --quick` (L-BFGS, checkpointed reverse mode) predicts
    held-out weight trajectories with R² >= 0.95 (about 20 s)."""
    summary = run_example(
        "recover_oja.py", "--rule", "mlp", "--quick", "--no-progress", "--out", str(tmp_path)
    )
    assert summary["solver"] == "lbfgs"
    assert summary["r2_weights"] >= 0.95
    assert summary["r2_activity"] >= 0.95
