"""Bad input gets a clear MetaplasticError that says what is wrong and where."""

import logging

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import metaplastic as mp
from metaplastic.rules import TaylorRule


B, T, N_IN, N_OUT = 2, 4, 3, 5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, T, N_IN))
Y = RNG.normal(size=(B, T, N_OUT))
W0 = RNG.normal(size=(B, N_OUT, N_IN))


def dataset(**changes):
    args = dict(inputs=X, activity=Y, initial_weights=W0)
    args.update(changes)
    return mp.data.ActivityDataset(
        args.pop("inputs"), args.pop("activity"), args.pop("initial_weights"), **args
    )


def with_value(array, index, value):
    out = np.array(array, dtype=float)
    out[index] = value
    return out


@pytest.mark.parametrize(
    "changes, match",
    [
        # Mismatched shapes between the arrays (and so between the data and a layer).
        (dict(initial_weights=RNG.normal(size=(B, N_OUT, N_IN + 1))), r"n_in=3"),
        (dict(initial_weights=RNG.normal(size=(N_OUT + 1, N_IN))), r"initial_weights must"),
        (dict(activity=RNG.normal(size=(B + 1, T, N_OUT))), r"activity must have shape"),
        (dict(activity=RNG.normal(size=(B, T - 1, N_OUT))), r"activity must have shape"),
        (dict(inputs=RNG.normal(size=(B, T))), r"inputs must have shape"),
        (dict(rewards=np.zeros((B, T + 1))), r"rewards must have shape \(2, 4\)"),
        # NaN or Inf in entries marked valid, reported with their index.
        (
            dict(activity=with_value(Y, (1, 2, 3), np.nan)),
            r"activity .*nan.* trajectory 1, step 2, neuron 3 \(index \(1, 2, 3\)\)",
        ),
        (
            dict(inputs=with_value(X, (0, 1, 2), np.inf)),
            r"inputs .*inf.* trajectory 0, step 1, input 2 \(index \(0, 1, 2\)",
        ),
        (
            dict(initial_weights=with_value(W0, (1, 0, 0), -np.inf)),
            r"initial_weights .*\(1, 0, 0\)",
        ),
        (dict(rewards=with_value(np.zeros((B, T)), (1, 3), np.nan)), r"rewards .*\(1, 3\)"),
        # Masks of the wrong shape or type.
        (
            dict(step_mask=np.ones((B, T + 1), bool)),
            r"step_mask must be a boolean array of shape \(2, 4\)",
        ),
        (dict(step_mask=np.ones((B, T), int)), r"step_mask must be a boolean array"),
        (
            dict(neuron_mask=np.ones(N_OUT + 1, bool)),
            r"neuron_mask must be a boolean array of shape \(5,\)",
        ),
        (dict(neuron_mask=np.ones((B + 1, N_OUT), bool)), r"neuron_mask"),
        # Empty datasets and trajectories shorter than one step.
        (dict(inputs=X[:0], activity=Y[:0], initial_weights=W0[:0]), r"empty"),
        (dict(inputs=X[:, :0], activity=Y[:, :0]), r"at least one time step"),
        (dict(step_mask=np.array([[True] * T, [False] * T])), r"Trajectory 1 has no valid step"),
        (
            dict(neuron_mask=np.array([[True] * N_OUT, [False] * N_OUT])),
            r"Trajectory 1 records no neuron",
        ),
        (dict(inputs=X[:, :, :0], initial_weights=W0[:, :, :0]), r"n_in=0"),
        (dict(activity=Y[:, :, :0], initial_weights=W0[:, :0]), r"n_out=0"),
        (dict(inputs=np.full((B, T, N_IN), "a")), r"inputs must hold real numbers"),
        (dict(activity=[[1, 2], [3]]), r"activity is a list .*different lengths \[2, 1\]"),
    ],
)
def test_bad_dataset(changes, match):
    with pytest.raises(mp.MetaplasticError, match=match):
        dataset(**changes)


def test_missing_samples_are_masked_not_nan():
    """A NaN in recorded activity is refused when the dataset is built, naming where it is,
    instead of surfacing as a fit that diverges at its first step; the same gap marked
    missing with the masks is accepted, zeroed, and fits."""
    gappy = with_value(Y, (0, 3, 1), np.nan)
    gappy[1, :, 4] = np.nan  # neuron 4 of trajectory 1 was never recorded
    with pytest.raises(mp.MetaplasticError, match=r"trajectory 0, step 3, neuron 1 .*5 such"):
        dataset(activity=gappy, step_mask=np.ones((B, T), bool))
    step_mask = np.ones((B, T), bool)
    step_mask[0, 3] = False
    neuron_mask = np.ones((B, N_OUT), bool)
    neuron_mask[1, 4] = False
    data = dataset(activity=gappy, step_mask=step_mask, neuron_mask=neuron_mask)
    assert bool(jnp.all(jnp.isfinite(data.activity)))
    assert float(data.activity[0, 3, 1]) == 0.0 and float(data.activity[1, 0, 4]) == 0.0
    layer = mp.nn.PlasticDense(TaylorRule.zeros())
    value, grads = jax.value_and_grad(
        lambda c: mp.losses.ActivityMSE()(
            mp.nn.PlasticDense(TaylorRule(c, layer.rule.factors)), data
        )
    )(layer.rule.coefficients)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grads)))


def test_invalid_entries_may_hold_anything_and_are_zeroed(caplog):
    mask = np.ones((B, T), bool)
    mask[1, 2:] = False
    neurons = np.ones(N_OUT, bool)
    neurons[4] = False
    y = with_value(with_value(Y, (1, 3, 0), np.nan), (0, 0, 4), np.inf)
    data = dataset(activity=y, step_mask=mask, neuron_mask=neurons)
    assert np.all(np.isfinite(data.activity)) and data.activity[1, 3, 0] == 0
    # A trajectory with a single valid step carries no information about the rule: warned.
    mask[1, 1:] = False
    with caplog.at_level(logging.WARNING, logger="metaplastic"):
        dataset(step_mask=mask)
    assert "single valid step" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recorded_fraction=0.0), r"recorded_fraction must be in \(0, 1\], got 0.0"),
        (dict(recorded_fraction=1.5), r"recorded_fraction must be in \(0, 1\]"),
        (dict(recorded_fraction=-0.2), r"recorded_fraction"),
        (dict(recorded_fraction=float("nan")), r"recorded_fraction"),
        (dict(recorded_fraction="half"), r"recorded_fraction must be a number"),
        (dict(noise_std=-0.1), r"noise_std must be finite and non-negative"),
        (dict(noise_std=float("inf")), r"noise_std"),
        (dict(noise_std=float("nan")), r"noise_std"),
        (dict(mask=np.zeros(4, bool)), r"records no neuron"),
        (dict(mask=np.ones(4)), r"1-D boolean"),
    ],
)
def test_bad_readout(kwargs, match):
    with pytest.raises(mp.MetaplasticError, match=match):
        mp.nn.ActivityReadout(**kwargs)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("x*z",), {}, r"unknown factor 'z'"),
        (("x*r",), {}, r"factor 'r' is not among this rule's factors"),
        (("x^3*y",), {}, r"exponent 3 of 'x' is above the rule's order 2"),
        (("x*x*x",), {}, r"exponent 3 of 'x' is above the rule's order 2"),
        (("y^2",), {"order": 1}, r"exponent 2 of 'y' is above the rule's order 1"),
        (("x^-1",), {}, r"exponent of 'x' must be a non-negative integer"),
        (("x^1.5",), {}, r"exponent of 'x' must be a non-negative integer"),
        (("x y",), {}, r"missing '\*'"),
        (("(x+y)*w",), {}, r"unexpected character '\('"),
        (("",), {}, r"Empty rule expression"),
        (("x*",), {}, r"ends where a factor was expected"),
        (("1e999*x",), {}, r"finite"),
        (("1e39*x",), {}, r"finite"),  # overflows float32
        (("x",), {"factors": ("x", "q")}, r"Unknown factor 'q'"),
        (("x",), {"factors": ("x", "x")}, r"Repeated factor"),
        (("x",), {"factors": "xy"}, r"tuple of names"),
        (("x",), {"order": -1}, r"order"),
        (("x",), {"order": True}, r"order"),
        ((3,), {}, r"must be a string"),
    ],
)
def test_bad_rule_expression(args, kwargs, match):
    with pytest.raises(mp.MetaplasticError, match=match):
        TaylorRule.from_expression(*args, **kwargs)


def test_bad_rule_coefficients_and_masks():
    rule = mp.rules.oja()
    with pytest.raises(mp.MetaplasticError, match="freezes every term"):
        rule.with_trainable(rule.mask([]))
    with pytest.raises(mp.MetaplasticError, match="freezes every term"):
        TaylorRule(rule.coefficients, trainable=np.zeros((3, 3, 3), bool))
    with pytest.raises(mp.MetaplasticError, match=r"mask has shape \(3, 3\)"):
        TaylorRule(rule.coefficients, trainable=np.ones((3, 3), bool))
    with pytest.raises(mp.MetaplasticError, match="boolean"):
        TaylorRule(rule.coefficients, trainable=np.ones((3, 3, 3)))
    with pytest.raises(mp.MetaplasticError, match=r"shape \(order\+1,\)\*3"):
        TaylorRule(np.zeros((3, 3)))
    with pytest.raises(mp.MetaplasticError, match=r"shape \(order\+1,\)\*3"):
        TaylorRule(np.zeros((3, 2, 3)))
    with pytest.raises(mp.MetaplasticError, match=r"term 'x\*y' is nan"):
        TaylorRule(with_value(np.zeros((3, 3, 3)), (1, 1, 0), np.nan))
    with pytest.raises(mp.MetaplasticError, match="real numbers"):
        TaylorRule(np.zeros((3, 3, 3), complex))
    with pytest.raises(mp.MetaplasticError, match="single monomial"):
        rule.coefficient("x + y")
    with pytest.raises(mp.MetaplasticError, match="list of monomials"):
        rule.mask("x*y")
    with pytest.raises(mp.MetaplasticError, match="scale"):
        TaylorRule.random(scale=-1.0, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="width"):
        mp.MLPRule(width=0, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="PRNG key"):
        mp.MLPRule(key=0)


@pytest.mark.parametrize(
    "inputs, w0, kwargs, match",
    [
        (X[0], W0, {}, r"inputs must have shape \(batch, time, n_in\)"),
        (X, W0[:, :, :2], {}, r"n_in=3"),
        (X, W0[:1], {}, r"batch=2"),
        (X, W0, {"rewards": np.zeros((B, T + 2))}, r"rewards must have shape"),
        (
            with_value(X, (1, 1, 1), np.nan),
            W0,
            {},
            r"inputs holds a non-finite value at index \(1, 1, 1\)",
        ),
        (X, W0, {"readout": mp.nn.ActivityReadout(mask=np.ones(N_OUT + 1, bool))}, r"readout mask"),
        (X, W0, {"key": 7}, r"PRNG key"),
    ],
)
def test_bad_generate_activity(inputs, w0, kwargs, match):
    kwargs.setdefault("key", jr.key(0))
    layer = mp.nn.PlasticDense(mp.rules.oja())
    with pytest.raises(mp.MetaplasticError, match=match):
        mp.generate_activity(layer, inputs, w0, **kwargs)


def test_fit_refuses_data_without_trajectories():
    layer = mp.nn.PlasticDense(TaylorRule.zeros())
    with pytest.raises(mp.MetaplasticError, match="holds no arrays"):
        mp.fit(layer, {}, mp.losses.ActivityMSE(), progress=False)
    with pytest.raises(mp.MetaplasticError, match="empty"):
        mp.fit(layer, {"a": jnp.zeros((0, 3))}, mp.losses.ActivityMSE(), progress=False)
    with pytest.raises(mp.MetaplasticError, match="disagree on the number of trajectories"):
        mp.fit(layer, {"a": jnp.zeros((2, 3)), "b": jnp.zeros(3)}, mp.losses.ActivityMSE())
