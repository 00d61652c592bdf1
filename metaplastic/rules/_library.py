"""Known plasticity rules, as Taylor rules with readable coefficients."""

import jax.numpy as jnp

from .._errors import MetaplasticError
from ._expression import FACTORS
from ._taylor import TaylorRule


def oja(factors: tuple[str, ...] = ("x", "y", "w"), order: int = 2) -> TaylorRule:
    """Oja's rule, `Δw = x*y - y^2*w`: Hebbian growth with weight normalisation."""
    return TaylorRule.from_expression("x*y - y^2*w", factors, order)


def hebbian(factors: tuple[str, ...] = ("x", "y", "w"), order: int = 2) -> TaylorRule:
    """Plain Hebbian learning, `Δw = x*y`."""
    return TaylorRule.from_expression("x*y", factors, order)


def reward_modulated(factors: tuple[str, ...] = FACTORS, order: int = 2) -> TaylorRule:
    """The reward-modulated (covariance) rule `Δw = x*r`, with `r` the reward minus its
    expectation: presynaptic activity times the reward prediction error."""
    return TaylorRule.from_expression("x*r", factors, order)


def with_decay(rule: TaylorRule, rate: float = 0.05, term: str = "w") -> TaylorRule:
    """Add a decay / forgetting term, `rule - rate * term` (default `- 0.05*w`)."""
    if not isinstance(rule, TaylorRule):
        raise MetaplasticError("with_decay needs a TaylorRule.")
    decay = TaylorRule.from_expression(term, rule.factors, rule.order)
    return TaylorRule(
        rule.coefficients - rate * decay.coefficients.astype(rule.coefficients.dtype),
        rule.factors,
        trainable=rule.trainable,
    )


def from_expression(
    expression: str, factors: tuple[str, ...] = FACTORS, order: int = 2
) -> TaylorRule:
    """Shorthand for `TaylorRule.from_expression`, defaulting to all four factors."""
    return TaylorRule.from_expression(expression, factors, order)


def zero_like(rule: TaylorRule) -> TaylorRule:
    """The zero rule with the same factors and order (the no-plasticity null model)."""
    return TaylorRule(jnp.zeros_like(rule.coefficients), rule.factors)
