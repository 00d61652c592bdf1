import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metaplastic as mp
from metaplastic.rules import MLPRule, TaylorRule


X, Y, W, R = 2.0, 3.0, 5.0, 7.0


def evaluate(rule, x=X, y=Y, w=W, r=R):
    return float(rule(jnp.array([x]), jnp.array([y]), jnp.array([[w]]), r)[0, 0])


@pytest.mark.parametrize("factors", list(itertools.permutations(("x", "y", "w", "r"))))
def test_asymmetric_terms_every_factor_order(factors):
    # Distinct numbers catch a reversed or permuted axis.
    for expr, expected in [
        ("x^2*r", 28.0),
        ("w", 5.0),
        ("x*y", 6.0),
        ("y^2*w", 45.0),
        ("r^2*x", 98.0),
    ]:
        rule = TaylorRule.from_expression(expr, factors)
        assert evaluate(rule) == pytest.approx(expected), (expr, factors)


def test_index_is_exponent_in_factor_order():
    rule = TaylorRule.from_expression("x^2*r", ("x", "y", "w", "r"))
    assert rule.coefficients[2, 0, 0, 1] == 1.0
    assert float(jnp.sum(rule.coefficients)) == 1.0
    rule = TaylorRule.from_expression("x^2*r", ("r", "w", "y", "x"))
    assert rule.coefficients[1, 0, 0, 2] == 1.0


def test_rule_on_matrices_matches_monomial_sum():
    key = jr.key(0)
    k1, k2, k3, k4 = jr.split(key, 4)
    rule = TaylorRule(jr.normal(k1, (3, 3, 3, 3)), ("w", "r", "x", "y"))
    pre, post, weight = jr.normal(k2, (4,)), jr.normal(k3, (3,)), jr.normal(k4, (3, 4))
    r = 0.7
    got = rule(pre, post, weight, r)
    c = np.asarray(rule.coefficients)
    expected = np.zeros((3, 4))
    for d, e, a, b in itertools.product(range(3), repeat=4):
        expected += (
            c[d, e, a, b]
            * np.asarray(pre)[None] ** a
            * np.asarray(post)[:, None] ** b
            * np.asarray(weight) ** d
            * r**e
        )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_expression_printing_and_coefficients():
    rule = TaylorRule.from_expression("x*y - y^2*w", ("x", "y", "w"))
    assert rule.to_expression() == "x*y - y^2*w"
    assert rule.coefficient("y^2*w") == -1.0
    assert rule.coefficient("x*y") == 1.0
    assert rule.coefficient("w") == 0.0
    rule = TaylorRule.from_expression("-0.05*w + x**2 * r", ("x", "y", "w", "r"))
    assert rule.to_expression() == "x^2*r - 0.05*w"
    # A leading minus is a negative coefficient, never an extra constant term.
    rule = TaylorRule.from_expression("-x*y", ("x", "y", "w"))
    assert rule.coefficient("x*y") == -1.0 and rule.coefficient("1") == 0.0
    assert rule.top_terms(1) == [("x*y", -1.0)]
    assert TaylorRule.zeros(("x",)).to_expression() == "0"
    assert TaylorRule.from_expression("0.3 + x", ("x",)).to_expression() == "x + 0.3"


@pytest.mark.parametrize(
    "expr, match",
    [
        ("x*q", "unknown factor 'q'"),
        ("x^3", "above the rule's order 2"),
        ("x*x*x", "above the rule's order 2"),
        ("x*r", "not among this rule's factors"),
        ("x y", "missing '\\*'"),
        ("x^y", "non-negative integer"),
        ("(x)", "unexpected character"),
        ("", "Empty"),
        ("x +", "ends where a factor"),
        ("x ^ 1.5", "non-negative integer"),
    ],
)
def test_bad_expressions_raise(expr, match):
    with pytest.raises(mp.MetaplasticError, match=match):
        TaylorRule.from_expression(expr, ("x", "y", "w"))
    with pytest.raises(ValueError):
        TaylorRule.from_expression(expr, ("x", "y", "w"))


def test_bad_factors_raise():
    with pytest.raises(mp.MetaplasticError, match="Unknown factor"):
        TaylorRule.zeros(("x", "z"))
    with pytest.raises(mp.MetaplasticError, match="Repeated"):
        TaylorRule.zeros(("x", "x"))


FACTORS = ("x", "y", "w", "r")
monomial = st.tuples(*[st.integers(0, 2)] * 4)
coefficient = st.floats(min_value=-100, max_value=100, allow_nan=False).filter(
    lambda v: abs(v) > 1e-3
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(monomial, coefficient, max_size=8))
def test_expression_round_trip(terms):
    text = mp.rules.format_expression(terms, FACTORS)
    rule = TaylorRule.from_expression(text, FACTORS)
    again = rule.to_expression()
    assert TaylorRule.from_expression(again, FACTORS).to_expression() == again
    for exps, value in terms.items():
        assert float(rule.coefficients[exps]) == pytest.approx(value, rel=1e-5)


def test_library_and_decay():
    assert mp.rules.oja().to_expression() == "x*y - y^2*w"
    assert mp.rules.hebbian().to_expression() == "x*y"
    assert mp.rules.reward_modulated().to_expression() == "x*r"
    assert mp.rules.with_decay(mp.rules.reward_modulated(), 0.05).to_expression() == "x*r - 0.05*w"
    assert mp.rules.with_decay(mp.rules.reward_modulated(), 0.05, "y").coefficient(
        "y"
    ) == pytest.approx(-0.05)


def test_mlp_rule_shapes_and_factors():
    rule = MLPRule(("x", "w"), key=jr.key(0))
    out = rule(jnp.ones(4), jnp.ones(3), jnp.zeros((3, 4)), 0.0)
    assert out.shape == (3, 4)
    assert bool(jnp.all(jnp.abs(out) < 1))
    # Ignores y and r.
    out2 = rule(jnp.ones(4), 5 * jnp.ones(3), jnp.zeros((3, 4)), 3.0)
    np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("shape", [(4, 7), (12, 9)])
@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("factors", [("x", "y", "w"), ("x", "y", "w", "r"), ("w", "r")])
def test_mlp_rule_is_its_mlp_applied_to_every_synapse(x64, factors, depth, shape):
    # Above SMALL_LAYER synapses the rule evaluates its network unit by unit on broadcast
    # factors; either way it must equal (value and gradient) the eqx.nn.MLP applied to each
    # synapse's stacked (x, y, w, r).
    assert (shape[0] * shape[1] > mp.rules._mlp.SMALL_LAYER) == (shape == (12, 9))
    rule = MLPRule(factors, depth=depth, width=5, key=jr.key(depth))
    pre, post = jr.normal(jr.key(1), (shape[1],)), jr.normal(jr.key(2), (shape[0],))
    w, r = jr.normal(jr.key(3), shape), 0.7
    columns = {
        "x": jnp.broadcast_to(pre[None, :], w.shape),
        "y": jnp.broadcast_to(post[:, None], w.shape),
        "w": w,
        "r": jnp.full(w.shape, r),
    }

    def per_synapse(m):
        return jax.vmap(jax.vmap(m.mlp))(jnp.stack([columns[f] for f in factors], -1))

    np.testing.assert_allclose(rule(pre, post, w, r), per_synapse(rule), rtol=1e-12, atol=1e-14)
    loss = lambda f: eqx.filter_grad(lambda m: jnp.sum(jnp.sin(f(m)) * w))(rule)
    got = jax.tree.leaves(eqx.filter(loss(lambda m: m(pre, post, w, r)), eqx.is_array))
    want = jax.tree.leaves(eqx.filter(loss(per_synapse), eqx.is_array))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_trainable_mask_validation():
    rule = TaylorRule.zeros(("x", "r"))
    with pytest.raises(mp.MetaplasticError, match="freezes every term"):
        rule.with_trainable(np.zeros((3, 3), bool))
    with pytest.raises(mp.MetaplasticError, match="shape"):
        rule.with_trainable(np.ones((2, 3), bool))


def test_frozen_terms_receive_no_gradient_and_no_update():
    rule = TaylorRule.from_expression("0.3*x*y + 0.2*w", ("x", "y", "w"))
    family = rule.mask(["x", "x*y"])
    rule = rule.with_trainable(family)
    layer = mp.nn.PlasticDense(rule, eta=0.5)
    pre, w0 = jr.normal(jr.key(1), (6, 3)), 0.1 * jr.normal(jr.key(2), (2, 3))
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=0.5)
    data, _ = mp.generate_activity(teacher, pre[None], w0[None], key=jr.key(3))

    loss = mp.losses.ActivityMSE()
    grads = eqx.filter_grad(loss)(layer, data)
    g = np.asarray(grads.rule.coefficients)
    assert np.all(g[~family] == 0.0)
    assert np.any(g[family] != 0.0)

    before = np.asarray(rule.coefficients)
    for solver, penalty in [
        (mp.Optax(optax.adam(0.05)), mp.losses.L1(1e-3, smoothing=0.0)),
        (mp.LevenbergMarquardt(), mp.losses.L1(1e-3)),
    ]:
        result = mp.fit(layer, data, loss, solver=solver, steps=5, progress=False, penalty=penalty)
        after = np.asarray(result.model.rule.coefficients)
        np.testing.assert_array_equal(after[~family], before[~family])
        assert np.any(after[family] != before[family])
