"""Rules with memory: an eligibility trace of any memoryless rule, and BCM's sliding threshold.

Their state (the trace per synapse, the threshold per neuron) is carried by the layer that
holds them through the one scan of `metaplastic.simulate_network`; their own parameters (the
decay λ, the time constant τ) are arrays of the module and train alongside the coefficients.
"""

import math
import re
import typing
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import MetaplasticError, validates_input
from .._types import Post, Pre, Scalar, Weight
from ._abstract import AbstractRule
from ._taylor import TaylorRule


def _number(name: str, value: typing.Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        if isinstance(value, jax.Array) and value.shape == ():
            return float(value)
        raise MetaplasticError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise MetaplasticError(f"{name} must be finite, got {value!r}.")
    return value


class TraceRule(AbstractRule):
    """A three-factor rule with an eligibility trace: every synapse keeps a trace `e` of a
    memoryless rule `g`, and the reward signal turns the trace into a weight change:

        e ← λ · e + g(x, y, w),    Δw = η · r · e.

    The decay `λ` lies in (0, 1); it is stored as its logit (`decay_logit`), so a fit can move
    it anywhere without leaving the range, and trains with `g`'s parameters by default. The
    trace starts at zero for every trajectory. The rule's factors are `g`'s with `"r"` added:
    a trace rule without a reward signal is refused like any rule over `r`.

    Printed (and parsed back by `TraceRule.from_expression`) as `trace(λ=0.7): x*y`.
    """

    inner: AbstractRule
    decay_logit: Float[Array, ""]
    factors: tuple[str, ...] = eqx.field(static=True)
    stateful: ClassVar[bool] = True

    @validates_input
    def __init__(self, inner: AbstractRule, decay: float = 0.5):
        """**Arguments:**

        - `inner`: the memoryless rule `g` whose output the trace accumulates (a `TaylorRule`
          or an `MLPRule`, usually over `x, y, w`).
        - `decay`: the trace's decay `λ`, strictly between 0 and 1.
        """
        if not isinstance(inner, AbstractRule) or inner.stateful:
            raise MetaplasticError(
                "TraceRule needs a memoryless rule g (a TaylorRule or MLPRule) to accumulate, "
                f"got {type(inner).__name__}."
            )
        decay = _number("TraceRule decay λ", decay)
        if not 0.0 < decay < 1.0:
            raise MetaplasticError(
                f"TraceRule decay λ must lie strictly between 0 and 1 (e.g. decay=0.7), got "
                f"{decay!r}: λ = 0 is the memoryless rule g·r itself, λ >= 1 a trace that never "
                "forgets."
            )
        self.inner = inner
        self.decay_logit = jnp.asarray(math.log(decay / (1.0 - decay)), jnp.result_type(float))
        self.factors = tuple(inner.factors) + (() if "r" in inner.factors else ("r",))

    @property
    def decay(self) -> Float[Array, ""]:
        """The trace's decay `λ = sigmoid(decay_logit)`."""
        return jax.nn.sigmoid(self.decay_logit)

    def natural_parameters(self) -> dict[str, Float[Array, "*members"] | None]:
        """`{"λ": decay}`: the decay in its natural parametrisation (an increasing function
        of the fitted `decay_logit`; `metaplastic.Posterior.natural_intervals` maps
        intervals through it). `None` where the logit is not an array (not trained)."""
        return {"λ": self.decay if eqx.is_array(self.decay_logit) else None}

    def init_state(self, weight: Weight) -> Float[Array, "n_out n_in"]:
        """The trace at the start of a trajectory: zero on every synapse."""
        return jnp.zeros_like(weight)

    def step(
        self,
        state: Float[Array, "n_out n_in"],
        pre: Pre,
        post: Post,
        weight: Weight,
        reward: Scalar | float,
    ) -> tuple[Float[Array, "n_out n_in"], Float[Array, "n_out n_in"]]:
        """`e ← λ e + g(x, y, w, r)`, then the change `r · e` and the new trace."""
        trace = self.decay * state + self.inner(pre, post, weight, reward)
        return jnp.asarray(reward, trace.dtype) * trace, trace

    def __call__(
        self, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> Float[Array, "n_out n_in"]:
        return self.step(self.init_state(weight), pre, post, weight, reward)[0]

    def to_expression(self, tol: float = 0.0) -> str:
        """`trace(λ=0.7): <g>` with `g`'s canonical expression (an MLP is written `mlp`)."""
        inner = self.inner.to_expression(tol) if isinstance(self.inner, TaylorRule) else "mlp"
        return f"trace(λ={float(self.decay):.6g}): {inner}"

    @classmethod
    @validates_input
    def from_expression(
        cls, expression: str, factors: tuple[str, ...] = ("x", "y", "w"), order: int = 2
    ) -> "TraceRule":
        """Parse `trace(λ=0.7): x*y` (or `trace(decay=0.7): ...`): a trace of the Taylor rule
        over `factors` with exponents up to `order`."""
        match = re.fullmatch(
            r"\s*trace\(\s*(?:λ|lambda|decay)\s*=\s*([^)]*)\)\s*:(.*)", str(expression)
        )
        if match is None:
            raise MetaplasticError(
                f"A trace rule is written 'trace(λ=0.7): x*y', got {expression!r}."
            )
        try:
            decay = float(match.group(1))
        except ValueError:
            raise MetaplasticError(
                f"The decay of {expression!r} must be a number, got {match.group(1)!r}."
            ) from None
        return cls(TaylorRule.from_expression(match.group(2), factors, order), decay)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"TraceRule({self.to_expression(tol=1e-6)!r})"


class BCMRule(AbstractRule):
    """The Bienenstock–Cooper–Munro rule: Hebbian with a postsynaptic threshold that slides
    with the neuron's recent activity,

        Δw = η · θ₁ · x · y · (y − y_M),    y_M ← y_M + (y² − y_M) / τ.

    The change uses the threshold before the step; the threshold `y_M` (one per
    postsynaptic neuron) starts at zero for every trajectory. The time constant `τ > 1` (in
    steps) is stored as `log(τ − 1)` (`log_tau`), so a fit cannot leave the range; it trains
    with the amplitude `θ₁` (`coefficient`) by default.

    Printed (and parsed back by `BCMRule.from_expression`) as `bcm(τ=10): 1*x*y*(y - y_M)`.
    """

    coefficient: Float[Array, ""]
    log_tau: Float[Array, ""]
    factors: tuple[str, ...] = eqx.field(static=True)
    stateful: ClassVar[bool] = True

    @validates_input
    def __init__(self, coefficient: float = 1.0, tau: float = 10.0):
        """**Arguments:**

        - `coefficient`: the amplitude `θ₁`.
        - `tau`: the threshold's time constant `τ` in steps, greater than 1.
        """
        coefficient = _number("BCMRule coefficient", coefficient)
        tau = _number("BCMRule time constant τ", tau)
        if not tau > 1.0:
            raise MetaplasticError(
                f"BCMRule time constant τ must be greater than 1 step (e.g. tau=10.0), got "
                f"{tau!r}: the threshold moves by (y² − y_M)/τ per step, which overshoots for "
                "τ < 1."
            )
        dtype = jnp.result_type(float)
        self.coefficient = jnp.asarray(coefficient, dtype)
        self.log_tau = jnp.asarray(math.log(tau - 1.0), dtype)
        self.factors = ("x", "y")

    @property
    def tau(self) -> Float[Array, ""]:
        """The threshold's time constant `τ = 1 + exp(log_tau)`."""
        return 1.0 + jnp.exp(self.log_tau)

    def natural_parameters(self) -> dict[str, Float[Array, "*members"] | None]:
        """`{"τ": tau}`: the time constant in its natural parametrisation (an increasing
        function of the fitted `log_tau`; see `TraceRule.natural_parameters`)."""
        return {"τ": self.tau if eqx.is_array(self.log_tau) else None}

    def init_state(self, weight: Weight) -> Float[Array, " n_out"]:
        """The threshold at the start of a trajectory: zero for every postsynaptic neuron."""
        return jnp.zeros(weight.shape[0], weight.dtype)

    def step(
        self,
        state: Float[Array, " n_out"],
        pre: Pre,
        post: Post,
        weight: Weight,
        reward: Scalar | float,
    ) -> tuple[Float[Array, "n_out n_in"], Float[Array, " n_out"]]:
        """The change `θ₁ x y (y − y_M)` with the threshold before the step, and the new
        threshold `y_M + (y² − y_M)/τ`."""
        change = self.coefficient * (post * (post - state))[:, None] * pre[None, :]
        threshold = state + (post**2 - state) / self.tau
        return change, threshold

    def __call__(
        self, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> Float[Array, "n_out n_in"]:
        return self.step(self.init_state(weight), pre, post, weight, reward)[0]

    def to_expression(self, tol: float = 0.0) -> str:
        """`bcm(τ=10): 1*x*y*(y - y_M)`."""
        return f"bcm(τ={float(self.tau):.6g}): {float(self.coefficient):.6g}*x*y*(y - y_M)"

    @classmethod
    @validates_input
    def from_expression(cls, expression: str) -> "BCMRule":
        """Parse `bcm(τ=10): 0.5*x*y*(y - y_M)` (the amplitude may be left out: 1)."""
        match = re.fullmatch(
            r"\s*bcm\(\s*(?:τ|tau)\s*=\s*([^)]*)\)\s*:\s*(?:([^*\s]+)\s*\*\s*)?"
            r"x\s*\*\s*y\s*\*\s*\(\s*y\s*-\s*y_M\s*\)\s*",
            str(expression),
        )
        if match is None:
            raise MetaplasticError(
                f"A BCM rule is written 'bcm(τ=10): 0.5*x*y*(y - y_M)', got {expression!r}."
            )
        try:
            tau = float(match.group(1))
            coefficient = 1.0 if match.group(2) is None else float(match.group(2))
        except ValueError:
            raise MetaplasticError(
                f"τ and the amplitude of {expression!r} must be numbers."
            ) from None
        return cls(coefficient, tau)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"BCMRule({self.to_expression()!r})"
