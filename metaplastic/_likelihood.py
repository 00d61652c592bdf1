"""Observation likelihoods: what the solvers, `laplace` and `compare_models` need to know of
how a prediction meets an observation.

A likelihood scores one prediction `f` against one observation `t` by a per-observation loss
`ℓ(f, t)` — a negative log-likelihood, up to a scale and a constant for the Gaussian — and
says its slope `ℓ'` and its Gauss–Newton curvature `ℓ''` (the Fisher information of one
observation) with respect to `f`. A loss is `Σ_k w_k · mean ℓ_k` over groups of observations
(`metaplastic.losses.Observations`), and from these three quantities alone a solver builds
the gradient `Jᵀℓ'` and the Gauss–Newton matrix `Jᵀ diag(ℓ'') J`.

Two more facts turn the loss back into a log-likelihood, for intervals and model comparison:

- `estimates_noise`: whether the likelihood has a noise scale that is not known in advance
  and is estimated from the residuals (the Gaussian's σ). Then `ℓ` is the squared residual,
  the Fisher information is `ℓ'' · fisher_scale(σ²)` and the log-likelihood of a group is
  `log_likelihood(Σ ℓ, n, σ²)`.
- otherwise `ℓ` is the exact negative log-likelihood: `fisher_scale` is 1 and the
  log-likelihood of a group is `−Σ ℓ`.

A new observation model is one subclass of `AbstractLikelihood` (or of
`AbstractExactLikelihood` when `ℓ` is its exact negative log-likelihood).
"""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._errors import MetaplasticError
from ._types import Scalar


class AbstractLikelihood(eqx.Module):
    """How one prediction is scored against one observation (see the module's docstring).

    Subclasses implement `per_observation`, `fisher_scale` and `log_likelihood`, and set the
    class variable `estimates_noise`."""

    estimates_noise: ClassVar[bool]

    @abc.abstractmethod
    def per_observation(
        self, predictions: Float[Array, "..."], targets: Float[Array, "..."]
    ) -> tuple[Float[Array, "..."], Float[Array, "..."], Float[Array, "..."]]:
        """`(ℓ, ℓ', ℓ'')` elementwise: the per-observation loss, its derivative and its
        Gauss–Newton curvature with respect to the prediction (all shaped like
        `predictions`; `ℓ'' >= 0`)."""
        raise NotImplementedError

    @abc.abstractmethod
    def fisher_scale(self, noise_variance: Scalar | None) -> Scalar | float:
        """The factor that turns `Jᵀ diag(ℓ'') J` into the Fisher information of the
        log-likelihood, given the group's noise variance (`None` unless `estimates_noise`)."""
        raise NotImplementedError

    @abc.abstractmethod
    def log_likelihood(self, total: Scalar, count: Scalar, noise_variance: Scalar | None) -> Scalar:
        """The log-likelihood of a group whose per-observation losses sum to `total` over
        `count` valid observations, at the noise variance `noise_variance` (`None` unless
        `estimates_noise`)."""
        raise NotImplementedError


class SquaredError(AbstractLikelihood):
    """Gaussian observations of unknown noise σ: `ℓ = (f − t)²`, `ℓ' = 2(f − t)`, `ℓ'' = 2`.

    The log-likelihood of a group is `−½ (RSS/σ² + n log 2πσ²)`; its Fisher information is
    the Gauss–Newton matrix times `1/(2σ²)`."""

    estimates_noise: ClassVar[bool] = True

    def per_observation(self, predictions, targets):
        r = predictions - targets
        return r**2, 2 * r, jnp.full_like(predictions, 2.0)

    def fisher_scale(self, noise_variance):
        return 1 / (2 * noise_variance)

    def log_likelihood(self, total, count, noise_variance):
        var = noise_variance
        return -0.5 * (total / var + count * jnp.log(2 * math.pi * var))


class AbstractExactLikelihood(AbstractLikelihood):
    """A likelihood whose per-observation loss `ℓ` is the exact negative log-likelihood, with
    no noise scale to estimate: subclasses implement `per_observation` only."""

    estimates_noise: ClassVar[bool] = False

    def fisher_scale(self, noise_variance):
        return 1.0

    def log_likelihood(self, total, count, noise_variance):
        return -total


def bernoulli_log_likelihood(
    logits: Float[Array, "..."], targets: Float[ArrayLike, "..."]
) -> Float[Array, "..."]:
    """`log p(target)` of 0/1 `targets` under `p(1) = sigmoid(logits)`, elementwise (the one
    Bernoulli log-likelihood of the package)."""
    return targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits)


class Bernoulli(AbstractExactLikelihood):
    """Binary observations (choices), the prediction a logit: `ℓ = −log p(t)` with
    `p(1) = sigmoid(f)`, `ℓ' = p − t`, `ℓ'' = p(1 − p)` (Fisher scoring)."""

    def per_observation(self, predictions, targets):
        p = jax.nn.sigmoid(predictions)
        value = -bernoulli_log_likelihood(predictions, targets)
        return value, p - targets, p * (1 - p)


class Poisson(AbstractExactLikelihood):
    """Counts, the prediction the log of the expected count per bin, `f = log λ`:
    `ℓ = λ − t f + log t!`, `ℓ' = λ − t`, `ℓ'' = λ` (the Fisher information of the canonical
    link). `ℓ` is the exact negative log-likelihood, so log-likelihoods and evidences compare
    across models."""

    def per_observation(self, predictions, targets):
        rate = jnp.exp(predictions)
        value = rate - targets * predictions + jax.lax.lgamma(targets + 1.0)
        return value, rate - targets, rate


LIKELIHOODS: dict[str, AbstractLikelihood] = {
    "squared_error": SquaredError(),
    "bernoulli": Bernoulli(),
    "poisson": Poisson(),
}


def as_likelihood(likelihood: object) -> AbstractLikelihood:
    """`likelihood` itself if it is an `AbstractLikelihood`, the named one for
    `"squared_error"`, `"bernoulli"` or `"poisson"`, or `MetaplasticError`."""
    if isinstance(likelihood, AbstractLikelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood in LIKELIHOODS:
        return LIKELIHOODS[likelihood]
    raise MetaplasticError(
        f"likelihood must be an AbstractLikelihood such as metaplastic.losses.SquaredError() "
        f"or one of {sorted(LIKELIHOODS)}, got {likelihood!r}."
    )
