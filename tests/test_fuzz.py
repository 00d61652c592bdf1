"""Fuzzing the public entry points: every input either works or raises MetaplasticError.

Runtime type checking is on in the test run, so a jaxtyping/beartype error, a JAX or numpy
error, or any other exception escaping these constructors fails the test."""

import math
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from beartype import beartype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jaxtyping import Array, Bool, Float, jaxtyped

import metaplastic as mp
from metaplastic.rules import TaylorRule


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FACTOR_NAMES = ["x", "y", "w", "r", "z", "xy", ""]


@contextmanager
def works_or_metaplastic_error():
    """Any exception other than MetaplasticError propagates and fails the test."""
    try:
        yield
    except mp.MetaplasticError as err:
        assert str(err), "a MetaplasticError must say what is wrong"


valid_factors = st.permutations(["x", "y", "w", "r"]).flatmap(
    lambda p: st.integers(1, 4).map(lambda k: tuple(p[:k]))
)
factors_strategy = st.one_of(
    st.just(("x", "y", "w", "r")),
    valid_factors,
    st.one_of(
        st.lists(st.sampled_from(FACTOR_NAMES), max_size=5).map(tuple),
        st.lists(st.sampled_from(FACTOR_NAMES), max_size=3),
        st.sampled_from(["xyw", None, 3, ("x", 1)]),
    ),
)
order_strategy = st.one_of(
    st.integers(0, 3), st.integers(-2, 4), st.sampled_from([1.0, True, "2", None])
)
TOKENS = ["x", "y", "w", "r", "z", "*", "*", "^", "**", "+", "-", "2", "1", "0.5", "1e3", " "]
text_strategy = st.one_of(
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map("".join),
    st.text(alphabet="xyzwrq0123456789.*^+- eE()_²×٣\t", max_size=24),
    st.lists(st.sampled_from(TOKENS + ["(", "²", "1e999", "x^9"]), max_size=12).map("".join),
    st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map("".join),
)


@FUZZ
@given(
    text=text_strategy,
    factors=factors_strategy,
    order=order_strategy,
)
def test_random_expressions(text, factors, order):
    with works_or_metaplastic_error():
        rule = TaylorRule.from_expression(text, factors, order)
        assert np.all(np.isfinite(np.asarray(rule.coefficients)))
        # What parses prints canonically and parses back to the same coefficients.
        again = TaylorRule.from_expression(rule.to_expression(), factors, order)
        np.testing.assert_allclose(again.coefficients, rule.coefficients, rtol=1e-5, atol=0)
        with works_or_metaplastic_error():
            rule.coefficient(text)
        with works_or_metaplastic_error():
            rule.with_trainable(rule.mask([text]))


term = st.tuples(
    st.sampled_from(["", "-", "+"]),
    st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False).map(lambda v: f"{v:g}")),
    st.lists(st.tuples(st.sampled_from(["x", "y", "w", "r"]), st.integers(0, 4)), max_size=4),
)


@FUZZ
@given(terms=st.lists(term, min_size=1, max_size=5), order=st.integers(0, 3))
def test_structured_expressions_add_up(terms, order):
    factors = ("x", "y", "w", "r")
    text, expected = "", {}
    for i, (sign, coef, powers) in enumerate(terms):
        parts = ([coef] if coef is not None else []) + [
            f if p == 1 else f"{f}^{p}" for f, p in powers
        ]
        body = "*".join(parts) or "1"
        sign = sign or ("+" if i else "")
        text += f" {sign} {body}" if i else f"{sign}{body}"
        exps = [0, 0, 0, 0]
        for f, p in powers:
            exps[factors.index(f)] += p
        value = (-1.0 if sign == "-" else 1.0) * (float(coef) if coef is not None else 1.0)
        expected[tuple(exps)] = expected.get(tuple(exps), 0.0) + value
    too_high = any(e > order for exps in expected for e in exps)
    try:
        rule = TaylorRule.from_expression(text, factors, order)
    except mp.MetaplasticError as err:
        assert too_high, f"{text!r} was refused: {err}"
        assert "above the rule's order" in str(err)
        return
    assert not too_high
    want = np.zeros((order + 1,) * 4)
    for exps, value in expected.items():
        want[exps] += value
    np.testing.assert_allclose(rule.coefficients, want, rtol=1e-6, atol=1e-6)


array_dtype = st.sampled_from([np.float32, np.float64, np.int32, bool, np.complex64, "U1", object])


@st.composite
def arrays(draw, shape, dtype=None):
    dtype = draw(array_dtype) if dtype is None else dtype
    size = math.prod(shape)
    if dtype == "U1":
        return np.full(shape, "a")
    if dtype is object:
        return np.empty(shape, object)
    values = np.asarray(draw(st.lists(st.floats(-2, 2), min_size=size, max_size=size)))
    out = values.reshape(shape).astype(dtype) if dtype is not bool else values.reshape(shape) > -1
    if size and draw(st.integers(0, 3)) == 3 and np.issubdtype(out.dtype, np.floating):
        flat = out.reshape(-1)
        flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return out


def perturbed(draw, shape):
    """Usually the right shape; sometimes one axis off by one, dropped or added."""
    choice = draw(st.integers(0, 9))
    shape = list(shape)
    if choice == 0 and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1])))
    elif choice == 1 and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif choice == 2:
        shape.append(draw(st.integers(0, 2)))
    return tuple(shape)


@st.composite
def dataset_inputs(draw):
    # Hypothesis leans to the first entries of a list: the valid ones come first.
    b, t, n_in, n_out = (draw(st.sampled_from([2, 1, 3, 2, 3, 0])) for _ in range(4))
    often_float = st.sampled_from([np.float32] * 12 + [np.float64, np.int32, bool, "U1", object])

    def array(shape, dtype=None):
        shape = perturbed(draw, shape) if draw(st.integers(0, 5)) == 5 else shape
        return draw(arrays(shape, draw(often_float) if dtype is None else dtype))

    kwargs = {}
    if draw(st.booleans()):
        kwargs["step_mask"] = array((b, t), draw(st.sampled_from([bool] * 8 + [np.int32])))
    if draw(st.booleans()):
        shape = draw(st.sampled_from([(b, n_out), (n_out,)]))
        kwargs["neuron_mask"] = array(shape, draw(st.sampled_from([bool] * 8 + [np.float32])))
    if draw(st.booleans()):
        kwargs["rewards"] = array((b, t))
    w_shape = draw(st.sampled_from([(b, n_out, n_in), (n_out, n_in)]))
    return array((b, t, n_in)), array((b, t, n_out)), array(w_shape), kwargs


@jaxtyped(typechecker=beartype)
def dataset_contract(
    inputs: Float[Array, "b t i"],
    activity: Float[Array, "b t o"],
    initial_weights: Float[Array, "b o i"],
    step_mask: Bool[Array, "b t"],
    neuron_mask: Bool[Array, "b o"],
    rewards: Float[Array, "b t"],
):
    """What the documented field shapes promise, checked with jaxtyping."""


@settings(FUZZ, max_examples=60)  # each accepted dataset traces a loss
@given(args=dataset_inputs())
def test_random_activity_datasets(args):
    inputs, activity, w0, kwargs = args
    with works_or_metaplastic_error():
        data = mp.data.ActivityDataset(inputs, activity, w0, **kwargs)
        dataset_contract(
            data.inputs,
            data.activity,
            data.initial_weights,
            data.step_mask,
            data.neuron_mask,
            data.rewards,
        )
        assert min(data.inputs.shape + data.activity.shape) >= 1
        assert bool(data.step_mask.any(axis=1).all() & data.neuron_mask.any(axis=1).all())
        for leaf in (data.inputs, data.activity, data.initial_weights, data.rewards):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        valid = data.step_mask[:, :, None] & data.neuron_mask[:, None, :]
        assert bool(jnp.all(jnp.where(valid, True, data.activity == 0)))
        # The dataset fits a plastic layer: the loss has the right shape (traced, not run).
        layer = mp.nn.PlasticDense(TaylorRule.zeros())
        out = jax.eval_shape(mp.losses.ActivityMSE(), layer, data)
        assert out.shape == ()


scalar_strategy = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@FUZZ
@given(
    fraction=scalar_strategy,
    noise=scalar_strategy,
    mask=st.one_of(st.none(), st.integers(0, 6).flatmap(lambda n: arrays((n,)))),
    n=st.integers(1, 5),
)
def test_random_readouts(fraction, noise, mask, n):
    with works_or_metaplastic_error():
        readout = mp.nn.ActivityReadout(fraction, noise, mask)
        assert 0.0 < readout.recorded_fraction <= 1.0 and readout.noise_std >= 0.0
        with works_or_metaplastic_error():
            noisy, recorded = readout.observe(jnp.ones((2, n)), key=jr.key(0))
            assert noisy.shape == (2, n) and int(recorded.sum()) >= 1


@FUZZ
@given(
    shape=st.lists(st.integers(0, 3), max_size=4).map(tuple),
    dtype=array_dtype,
    factors=factors_strategy,
    trainable=st.one_of(st.none(), st.lists(st.integers(0, 3), max_size=4).map(tuple)),
    data=st.data(),
)
def test_random_taylor_rules(shape, dtype, factors, trainable, data):
    coefficients = data.draw(arrays(shape, dtype))
    mask = None if trainable is None else data.draw(arrays(trainable, data.draw(array_dtype)))
    with works_or_metaplastic_error():
        rule = TaylorRule(coefficients, factors, trainable=mask)
        assert rule.coefficients.shape == (rule.order + 1,) * len(rule.factors)
        out = rule(jnp.ones(2), jnp.ones(3), jnp.ones((3, 2)), 0.5)
        assert out.shape == (3, 2)


@FUZZ
@given(
    b=st.integers(0, 2),
    t=st.integers(0, 2),
    p=st.integers(0, 3),
    data=st.data(),
)
def test_random_choice_datasets(b, t, p, data):
    def draw(shape, dtypes):
        return data.draw(arrays(perturbed(data.draw, shape), data.draw(st.sampled_from(dtypes))))

    odours = draw((b, t, p), [np.int32] * 4 + [np.float32, "U1"])
    odours = np.where(np.isfinite(odours), odours, 0) if odours.dtype.kind == "f" else odours
    if odours.dtype.kind == "i":
        odours = np.abs(odours) % 2
    with works_or_metaplastic_error():
        mp.behaviour.ChoiceDataset(
            odours,
            draw((b, t, p), [np.float32, bool]),
            draw((b, t, p), [bool] * 4 + [np.int32]),
            draw((b, t), [bool] * 4 + [np.int32]),
            draw((b, t), [np.float32, np.int32]),
            draw((b, t), [np.float32]),
        )
