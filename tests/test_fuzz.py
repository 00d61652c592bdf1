"""Fuzzing the public entry points: every input either works or raises MetaplasticError.

Runtime type checking is on in the test run, so a jaxtyping/beartype error, a JAX or numpy
error, or any other exception escaping these constructors fails the test."""

import collections
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from beartype import beartype
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jaxtyping import Array, Bool, Float, jaxtyped

import metaplastic as mp
from metaplastic.rules import TaylorRule


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FACTOR_NAMES = ["x", "y", "w", "r", "z", "xy", ""]


# Inputs tried, accepted and refused, per fuzzed constructor; printed (run with -s) and
# checked at the end of the module: a fuzzer that never gets past the constructor tests
# nothing after it.
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    for name, c in sorted(COUNTS.items()):
        print(
            f"\nfuzz {name}: {c['tried']} tried, {c['accepted']} accepted, {c['refused']} refused"
        )
    for name, c in COUNTS.items():
        assert c["tried"] == c["accepted"] + c["refused"]
        if name in BOTH_WAYS:  # both outcomes are exercised, each in >= 3% of the cases
            assert min(c["accepted"], c["refused"]) >= 0.03 * c["tried"], (name, c)
        if name == "TaylorRule.from_expression":  # random text rarely parses: examples do
            assert c["accepted"] >= 2 and c["refused"] >= 1, (name, c)


BOTH_WAYS = {"ActivityDataset", "ActivityReadout", "ChoiceDataset", "PackedChoiceDataset"}


def construct(name, build, *args, **kwargs):
    """`build(*args, **kwargs)`, or `None` if it raises a `MetaplasticError` that says what is
    wrong. Only the construction is guarded: the checks a test makes on what was built run
    outside, so any error in them (a round trip, a trace) fails the test."""
    COUNTS[name]["tried"] += 1
    try:
        out = build(*args, **kwargs)
    except mp.MetaplasticError as err:
        assert str(err), "a MetaplasticError must say what is wrong"
        COUNTS[name]["refused"] += 1
        return None
    COUNTS[name]["accepted"] += 1
    return out


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
@example(text="x*y - 0.5*y^2*w", factors=("x", "y", "w", "r"), order=2)
@example(text="-r*x + 2", factors=("x", "r"), order=1)
@given(
    text=text_strategy,
    factors=factors_strategy,
    order=order_strategy,
)
def test_random_expressions(text, factors, order):
    rule = construct("TaylorRule.from_expression", TaylorRule.from_expression, text, factors, order)
    if rule is None:
        return
    assert np.all(np.isfinite(np.asarray(rule.coefficients)))
    # What parses prints canonically and parses back to the same coefficients.
    again = TaylorRule.from_expression(rule.to_expression(), factors, order)
    np.testing.assert_allclose(again.coefficients, rule.coefficients, rtol=1e-5, atol=0)
    # A text that parsed as a rule names a term of it, or is refused clearly.
    construct("TaylorRule.coefficient", rule.coefficient, text)
    mask = construct("TaylorRule.mask", rule.mask, [text])
    if mask is not None:
        rule.with_trainable(mask)


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
    data = construct("ActivityDataset", mp.data.ActivityDataset, inputs, activity, w0, **kwargs)
    if data is None:
        return
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
    # Nothing valid was dropped: the valid recorded activity comes back unchanged.
    # (rounded to the dataset's floating-point type, as the constructor stores it)
    given = np.broadcast_to(np.asarray(activity, float), data.activity.shape)
    given = given.astype(np.asarray(data.activity).dtype)
    np.testing.assert_allclose(
        np.asarray(data.activity)[np.asarray(valid)], given[np.asarray(valid)], rtol=1e-6
    )
    # The dataset fits a plastic layer: the loss has the right shape (traced, not run).
    layer = mp.nn.PlasticDense(TaylorRule.zeros())
    out = jax.eval_shape(mp.losses.ActivityMSE(), layer, data)
    assert out.shape == ()


scalar_strategy = st.one_of(
    st.floats(0.05, 1.0),
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
    readout = construct("ActivityReadout", mp.nn.ActivityReadout, fraction, noise, mask)
    if readout is None:
        return
    assert 0.0 < readout.recorded_fraction <= 1.0 and readout.noise_std >= 0.0
    observed = construct(
        "ActivityReadout.observe", readout.observe, jnp.ones((2, n)), key=jr.key(0)
    )
    if observed is not None:
        noisy, recorded = observed
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
    rule = construct("TaylorRule", TaylorRule, coefficients, factors, trainable=mask)
    if rule is None:
        return
    assert rule.coefficients.shape == (rule.order + 1,) * len(rule.factors)
    out = rule(jnp.ones(2), jnp.ones(3), jnp.ones((3, 2)), 0.5)
    assert out.shape == (3, 2)


CHOICE_MUTATIONS = [
    None,
    None,
    None,
    "nan choice",
    "inf reward",
    "nan expected reward",
    "nan in padding",
    "nan input",
    "inf input in padding",
    "choice 0.5",
    "odour 2",
    "two acceptances",
    "empty",
    "ragged",
    "float odours",
    "int mask",
    "shape",
    "trial without presentation",
]


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), mutation=st.sampled_from(CHOICE_MUTATIONS))
def test_random_choice_datasets(seed, mutation):
    """A valid random dataset, then at most one mutation; what is accepted keeps every valid
    entry, and packs into a `PackedChoiceDataset` with every valid presentation."""
    rng = np.random.default_rng(seed)
    b, t, p = (int(v) for v in rng.integers(1, 4, 3))
    odours = rng.integers(0, 2, (b, t, p))
    n = rng.integers(1, p + 1, (b, t))  # presentations per trial
    pm = np.arange(p)[None, None, :] < n[..., None]
    tm = rng.random((b, t)) < 0.8
    tm[:, 0] = True
    accepted = rng.random((b, t)) < 0.7
    choices = (np.arange(p)[None, None, :] == (n - 1)[..., None]) & accepted[..., None] & pm
    choices = choices.astype(float)
    rewards = rng.integers(0, 2, (b, t)).astype(float)
    expected = rng.random((b, t))
    inputs = rng.normal(size=(b, t, p, 2))
    args = [odours, choices, pm, tm, rewards, expected, inputs]
    valid = (0, 0, 0)
    impossible = False  # a mutation that no valid recording can contain: must be refused
    if mutation is not None:
        i = tuple(int(rng.integers(0, k)) for k in (b, t, p))
        valid = (i[0], 0, 0)  # trial 0 is valid and presentation 0 of it too
        if mutation == "nan choice":
            choices[valid] = np.nan
        elif mutation == "inf reward":
            rewards[valid[:2]] = np.inf
        elif mutation == "nan expected reward":
            expected[valid[:2]] = np.nan
        elif mutation == "nan in padding" and not pm[i]:
            choices[i] = np.nan
        elif mutation == "nan input":
            inputs[valid + (1,)] = np.nan
        elif mutation == "inf input in padding" and not pm[i]:
            inputs[i + (0,)] = np.inf
        elif mutation == "choice 0.5":
            choices[valid] = 0.5
            impossible = True
        elif mutation == "odour 2":
            odours[valid] = 2
            impossible = True
        elif mutation == "two acceptances" and p > 1:
            pm[valid[:2]] = True
            choices[valid[:2]] = 1.0
            impossible = True
        elif mutation == "empty":
            args = [a[:, :0] for a in args]
        elif mutation == "ragged":
            args[1] = [list(map(list, c)) for c in choices[:, :, :-1]] + [[[0.0]]]
        elif mutation == "float odours":
            args[0] = odours + 0.5
        elif mutation == "int mask":
            args[2] = pm.astype(np.int32)
        elif mutation == "shape":
            args[int(rng.integers(0, 7))] = np.zeros((b + 1, t, p))
        elif mutation == "trial without presentation":
            pm[valid[:2]] = False
    data = construct("ChoiceDataset", mp.behaviour.ChoiceDataset, *args)
    if data is None:
        assert mutation is not None, "a valid dataset was refused"
        return
    assert not impossible, f"accepted a dataset with {mutation!r}"
    valid_pm = np.asarray(data.presentation_mask)
    np.testing.assert_array_equal(valid_pm, pm & tm[..., None])
    np.testing.assert_array_equal(np.asarray(data.choices)[valid_pm], choices[valid_pm])
    np.testing.assert_array_equal(np.asarray(data.odours)[valid_pm], odours[valid_pm])
    np.testing.assert_allclose(np.asarray(data.inputs)[valid_pm], inputs[valid_pm], rtol=1e-6)
    for leaf in (data.choices, data.rewards, data.expected_rewards, data.inputs):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    packed = construct("PackedChoiceDataset", mp.behaviour.PackedChoiceDataset.from_choices, data)
    assert packed is not None
    np.testing.assert_array_equal(
        np.asarray(packed.presentation_mask).sum(axis=1), valid_pm.sum(axis=(1, 2))
    )
    without_inputs = eqx.tree_at(lambda d: d.inputs, data, None, is_leaf=lambda x: x is None)
    assert (
        construct(
            "PackedChoiceDataset", mp.behaviour.PackedChoiceDataset.from_choices, without_inputs
        )
        is None
    )
