import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._errors import MetaplasticError, validates_input
from .._types import Key, Post, Pre, Scalar, Weight
from .._validate import real_array
from ._abstract import AbstractMemorylessRule
from ._expression import (
    FACTORS,
    as_factors,
    check_order,
    format_expression,
    format_monomial,
    parse_expression,
)


def powers(v: Array, n: int) -> list[Array]:
    """The first `n` powers `[1, v, v², ..., v^(n-1)]` of an array, each the previous one
    times `v` (the building block of every Taylor-rule evaluation, here and in the fast
    gradient and the sensitivities of behaviour fits).

    **Arguments:**

    - `v`: an array of any shape.
    - `n`: the number of powers (at least 1).

    **Returns:**

    A list of `n` arrays shaped like `v`.
    """
    out = [jnp.ones_like(v)]
    for _ in range(n - 1):
        out.append(out[-1] * v)
    return out


class TaylorRule(AbstractMemorylessRule):
    """A truncated Taylor-series rule, `Δw = Σ θ[a, b, c, d] · x^a · y^b · w^c · r^d`.

    `coefficients` has one axis per factor, **in the order of `factors`**, and the index along
    an axis is the exponent of that factor; every axis has length `order + 1`.

    Terms can be frozen with `trainable` (a boolean array of the same shape): a frozen term
    keeps its value and receives no gradient.
    """

    coefficients: Float[Array, "..."]
    trainable: Bool[Array, "..."] | None
    factors: tuple[str, ...] = eqx.field(static=True)
    order: int = eqx.field(static=True)

    @validates_input
    def __init__(
        self,
        coefficients: Float[ArrayLike, "..."],
        factors: tuple[str, ...] = ("x", "y", "w"),
        *,
        trainable: Bool[ArrayLike, "..."] | None = None,
    ):
        """**Arguments:**

        - `coefficients`: array of shape `(order + 1,) * len(factors)`.
        - `factors`: tuple of distinct names from `"x"`, `"y"`, `"w"`, `"r"`.
        - `trainable`: optional boolean mask of the same shape; `False` freezes a term.
        """
        factors = as_factors(factors)
        coefficients = jnp.asarray(
            real_array("TaylorRule coefficients", coefficients, allow_traced=True)
        )
        if not jnp.issubdtype(coefficients.dtype, jnp.floating):
            coefficients = coefficients.astype(jnp.result_type(float))
        shape = coefficients.shape
        if len(shape) != len(factors) or len(set(shape)) != 1 or 0 in shape:
            raise MetaplasticError(
                f"TaylorRule coefficients must have shape (order+1,)*{len(factors)} for factors "
                f"{factors!r}, got {shape}."
            )
        if not isinstance(coefficients, jax.core.Tracer):
            bad = np.argwhere(~np.isfinite(np.asarray(coefficients)))
            if len(bad):
                where = tuple(int(i) for i in bad[0])
                raise MetaplasticError(
                    f"TaylorRule coefficients must be finite; the term "
                    f"{format_monomial(where, factors)!r} is {np.asarray(coefficients)[where]} "
                    f"(in {coefficients.dtype})."
                )
        if trainable is not None:
            if isinstance(trainable, jax.core.Tracer) or np.asarray(trainable).dtype != bool:
                raise MetaplasticError(
                    "`trainable` must be a concrete boolean array (True: the term trains), got "
                    f"{getattr(trainable, 'dtype', type(trainable).__name__)}."
                )
            trainable = jnp.asarray(trainable, dtype=bool)
            if trainable.shape != shape:
                raise MetaplasticError(
                    f"`trainable` mask has shape {trainable.shape}, expected {shape} like the "
                    "coefficients."
                )
            if not bool(np.any(np.asarray(trainable))):
                raise MetaplasticError(
                    "`trainable` freezes every term of the rule; nothing would be fitted."
                )
        self.coefficients = coefficients
        self.trainable = trainable
        self.factors = factors
        self.order = shape[0] - 1

    # ------------------------------------------------------------------ constructors
    @classmethod
    @validates_input
    def zeros(cls, factors: tuple[str, ...] = ("x", "y", "w"), order: int = 2) -> "TaylorRule":
        """The zero rule (no plasticity) over `factors`, exponents `0..order`."""
        factors = as_factors(factors)
        order = check_order(order)
        return cls(jnp.zeros((order + 1,) * len(factors)), factors)

    @classmethod
    @validates_input
    def random(
        cls,
        factors: tuple[str, ...] = ("x", "y", "w"),
        order: int = 2,
        *,
        scale: float = 1e-4,
        key: Key,
    ) -> "TaylorRule":
        """A small random rule: coefficients drawn from N(0, scale²)."""
        rule = cls.zeros(factors, order)
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
            raise MetaplasticError(f"`scale` must be a number, got {scale!r}.")
        if not (math.isfinite(scale) and scale >= 0):
            raise MetaplasticError(f"`scale` must be finite and non-negative, got {scale!r}.")
        if not (isinstance(key, jax.Array) and (key.shape == () or key.shape == (2,))):
            raise MetaplasticError(f"`key` must be one JAX PRNG key, got {key!r}.")
        return cls(scale * jr.normal(key, rule.coefficients.shape), rule.factors)

    @classmethod
    @validates_input
    def from_expression(
        cls, expression: str, factors: tuple[str, ...] = ("x", "y", "w"), order: int = 2
    ) -> "TaylorRule":
        """Build a rule from an expression such as `"x*y - y^2*w"` or `"x*r - 0.05*w"`.

        Accepts `*`, `^` and `**`; raises `MetaplasticError` (a `ValueError`) on unknown
        factors or exponents above `order`.
        """
        rule = cls.zeros(factors, order)
        terms = parse_expression(expression, rule.factors, order)
        coefficients = np.zeros(rule.coefficients.shape)
        for exps, value in terms.items():
            coefficients[exps] += value
        with np.errstate(over="ignore"):  # an overflow is reported as a non-finite term
            coefficients = coefficients.astype(rule.coefficients.dtype)
        return cls(coefficients, rule.factors)

    # ------------------------------------------------------------------ inspection
    @validates_input
    def monomial(self, term: str) -> tuple[int, ...]:
        """The exponents of one monomial, one per factor in the order of `factors`: the index
        of its coefficient, e.g. `rule.monomial("x*r")` is `(1, 0, 0, 1)` over `x, y, w, r`."""
        terms = parse_expression(term, self.factors, self.order)
        if len(terms) != 1:
            raise MetaplasticError(f"Expected a single monomial such as 'y^2*w', got {term!r}.")
        return next(iter(terms))

    @validates_input
    def coefficient(self, term: str) -> float:
        """The coefficient of one monomial, e.g. `rule.coefficient("y^2*w")`."""
        return float(self.coefficients[self.monomial(term)])

    def terms(self) -> list[tuple[str, float]]:
        """All `(monomial, coefficient)` pairs, largest magnitude first."""
        c = np.asarray(self.coefficients)
        out = [
            (format_monomial(exps, self.factors), float(c[exps]))
            for exps in itertools.product(range(self.order + 1), repeat=len(self.factors))
        ]
        return sorted(out, key=lambda kv: -abs(kv[1]))

    def top_terms(self, n: int = 5) -> list[tuple[str, float]]:
        """The `n` terms of largest magnitude."""
        return self.terms()[:n]

    def to_dict(self) -> dict[str, float]:
        """Every term's coefficient, keyed by its monomial (`"x*y"`, `"1"` for the constant)."""
        return dict(self.terms())

    def to_expression(self, tol: float = 0.0) -> str:
        """The rule as a canonical expression, dropping terms with `|θ| <= tol`."""
        c = np.asarray(self.coefficients, dtype=np.float64)
        terms = {
            exps: float(c[exps])
            for exps in itertools.product(range(self.order + 1), repeat=len(self.factors))
            if abs(c[exps]) > tol
        }
        return format_expression(terms, self.factors)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"TaylorRule({self.to_expression(tol=1e-6)!r}, factors={self.factors})"

    @validates_input
    def mask(self, expression_terms: list[str] | tuple[str, ...]) -> Bool[np.ndarray, "..."]:
        """A boolean array that is `True` on the listed monomials, e.g. `["1", "r", "x", "x*r"]`;
        pass it as `trainable=` to fit only that family."""
        if isinstance(expression_terms, str) or not isinstance(expression_terms, (list, tuple)):
            raise MetaplasticError(
                f"mask() takes a list of monomials such as ['x*y', 'w'], got {expression_terms!r}."
            )
        out = np.zeros(self.coefficients.shape, dtype=bool)
        for term in expression_terms:
            out[self.monomial(term) if term != "1" else (0,) * len(self.factors)] = True
        return out

    @validates_input
    def with_trainable(self, trainable: Bool[ArrayLike, "..."] | None) -> "TaylorRule":
        """The same rule with a new trainable mask (`None`: every term trains)."""
        return TaylorRule(self.coefficients, self.factors, trainable=trainable)

    @property
    def effective_coefficients(self) -> Float[Array, "..."]:
        """The coefficients, with frozen terms cut off from the gradient."""
        if self.trainable is None:
            return self.coefficients
        return jnp.where(
            self.trainable, self.coefficients, jax.lax.stop_gradient(self.coefficients)
        )

    @property
    def n_terms(self) -> int:
        return math.prod(self.coefficients.shape)

    # ------------------------------------------------------------------ evaluation
    def __call__(
        self, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> Float[Array, "n_out n_in"]:
        # Bring the coefficients to canonical (x, y, w, r) order, size-1 axes for absent factors.
        c = self.effective_coefficients
        present = [f for f in FACTORS if f in self.factors]
        c = jnp.transpose(c, [self.factors.index(f) for f in present])
        c = jnp.reshape(c, [self.order + 1 if f in self.factors else 1 for f in FACTORS])
        nx, ny, nw, nr = c.shape
        # Contract the scalar reward, then the powers of x (n_in) and y (n_out), so that only
        # rank-one matrices meet the weights: no per-synapse monomial vector is ever built.
        r_pows = jnp.stack(powers(jnp.asarray(reward, dtype=c.dtype), nr))
        c = jnp.tensordot(c, r_pows, axes=[[3], [0]])  # (nx, ny, nw)
        x_pows = jnp.stack(powers(pre, nx))  # (nx, n_in)
        a = jnp.tensordot(c, x_pows, axes=[[0], [0]])  # (ny, nw, n_in)
        y_pows = powers(post, ny)
        # Horner in w: ((M_2) w + M_1) w + M_0, with M_c = Σ_b y^b ⊗ a[b, c].
        out = None
        for k in reversed(range(nw)):
            m_k = sum(y_pows[b][:, None] * a[b, k][None, :] for b in range(ny))
            out = m_k if out is None else out * weight + m_k
        return out
