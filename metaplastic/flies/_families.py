"""The rule families compared across flies: their free terms and their initial student rules."""

import jax
import jax.random as jr
import numpy as np

from .._errors import MetaplasticError
from ..behaviour import (
    TAYLOR_STUDENT_SCALE,
    mlp_student,
    taylor_student,
)
from ..rules import AbstractRule, TaylorRule, TraceRule, format_monomial


FAMILY_TERMS = {
    "covariance": ("1", "r", "x", "x*r"),
    "forgetting": ("1", "r", "x", "x*r", "w"),
    "forgetting_y": ("1", "r", "x", "x*r", "y"),
}
"""The free terms of the small families, over (x, y, w, r) to first order: the covariance rule
Δw = θ₀ + θ_r r + θ_x x + θ_xr x·r, the same with a weight-dependent (forgetting) term, and
the same with a postsynaptic term `y`: what the published implementation fitted under the
name "forgetting" (its four-factor coefficient tensor is indexed with the factor axes
reversed, so the coefficient it names `w` multiplies `y`, and those it names `x` and `r`
multiply `r` and `x`, which maps {1, r, x, x*r} onto itself)."""
FAMILIES = ("covariance", "forgetting", "forgetting_y", "taylor", "mlp")
"""Every rule family `fit_families` fits: the small families of `FAMILY_TERMS`, the 81-term
Taylor rule over (x, y, w, r) and an MLP rule."""
MEMORY_FAMILIES = ("trace",)
"""Families of rules with memory, fitted on request only (not part of the default
comparison): "trace", an eligibility trace of θ₀ + θ_x·x released by the reward signal,
`e ← λ e + θ₀ + θ_x x`, `Δw = η r e` (λ, θ₀ and θ_x fitted): the covariance rule's reward
terms {r, x·r} with credit carried over from earlier trials."""
# Taylor families, which the L1 penalty applies to.
TAYLOR_FAMILIES = ("covariance", "forgetting", "forgetting_y", "taylor")
# The factors of the small families' shared rule.
SMALL_FACTORS = ("x", "y", "w", "r")


def family_rule(
    family: str, *, key: jax.Array, scale: float = TAYLOR_STUDENT_SCALE
) -> AbstractRule:
    """A student rule of a named family, started near zero.

    - `"covariance"`: a `TaylorRule` over `(x, y, w, r)` to first order whose only trainable
      terms are `1, r, x, x*r`; `"forgetting"`: the same plus `w`; `"forgetting_y"`: the
      same plus `y` (the published "forgetting" family, see `FAMILY_TERMS`);
    - `"taylor"`: every one of the 81 terms over `(x, y, w, r)` to second order;
    - `"mlp"`: `mlp_student`;
    - `"trace"`: a `TraceRule` of a Taylor rule over `x` to first order (`θ₀ + θ_x x`,
      started near zero) with decay 0.5 (see `MEMORY_FAMILIES`).
    """
    if family in FAMILY_TERMS:
        zero = TaylorRule.zeros(SMALL_FACTORS, order=1)
        mask = zero.mask(list(FAMILY_TERMS[family]))
        c = scale * np.asarray(jr.normal(key, zero.coefficients.shape)) * mask
        return TaylorRule(c, SMALL_FACTORS, trainable=mask)
    if family == "taylor":
        return taylor_student(key=key, scale=scale)
    if family == "mlp":
        return mlp_student(key=key)
    if family == "trace":
        return TraceRule(TaylorRule(scale * jr.normal(key, (2,)), ("x",)), 0.5)
    raise MetaplasticError(f"family must be one of {FAMILIES + MEMORY_FAMILIES}, got {family!r}.")


def family_coefficients(family: str, rules: AbstractRule) -> dict[str, np.ndarray] | None:
    """The coefficients of fitted rules with a leading fly axis, `{term: (flies,)}`: the free
    terms of a small family, every term of the Taylor family, `None` for a non-Taylor rule."""
    if not isinstance(rules, TaylorRule):
        return None
    c = np.asarray(rules.coefficients)
    if family in FAMILY_TERMS:
        out = {}
        for term in FAMILY_TERMS[family]:
            e = rules.monomial(term) if term != "1" else (0,) * len(rules.factors)
            out[term] = c[(slice(None),) + e]
        return out
    return {
        format_monomial(e, rules.factors): c[(slice(None),) + e] for e in np.ndindex(*c.shape[1:])
    }
