"""Losses and penalties as objects that say what they are.

A loss is called as `loss(model, batch) -> scalar`. A loss with *Gauss–Newton structure*
(`AbstractGaussNewtonLoss`) also says how it is built: a mean, over the valid observations, of
a per-observation negative log-likelihood of the model's predictions — squared error for
recorded activity, the Bernoulli likelihood for binary choices. That is what a second-order
solver (`metaplastic.LevenbergMarquardt`) needs: the Jacobian of the predictions and the
curvature of the per-observation term give the Gauss–Newton matrix `Jᵀ diag(ℓ'') J` (the
Fisher information for choices). Means are over valid entries only, so padding never dilutes a
loss.

Penalties (`L1`, `L2`) act on the trainable Taylor coefficients of every rule in a model and
are added to the loss by every solver, with one meaning.
"""

import abc
import math
import typing
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from ._errors import MetaplasticError
from ._likelihood import AbstractExactLikelihood as AbstractExactLikelihood
from ._likelihood import AbstractLikelihood as AbstractLikelihood
from ._likelihood import Bernoulli as Bernoulli
from ._likelihood import Poisson as Poisson
from ._likelihood import SquaredError as SquaredError
from ._likelihood import as_likelihood
from ._likelihood import bernoulli_log_likelihood as bernoulli_log_likelihood
from ._simulate import simulate_dataset, simulate_recordings
from ._types import Scalar
from .data import ActivityDataset, RecordingDataset
from .nn import AbstractHead, Model, PlasticDense
from .rules import TaylorRule


def masked_mean(values: Float[Array, "..."], mask: Bool[ArrayLike, "..."]) -> Scalar:
    """Mean of `values` over the entries where `mask` (broadcast to `values`) is True."""
    mask = jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1)


def binary_cross_entropy(
    logits: Float[Array, "..."], targets: Float[ArrayLike, "..."], mask: Bool[ArrayLike, "..."]
) -> Scalar:
    """Mean binary cross-entropy of `sigmoid(logits)` against 0/1 `targets`, over `mask`."""
    return masked_mean(-bernoulli_log_likelihood(logits, targets), mask)


class Observations(eqx.Module):
    """A model's predictions, the observations they are scored against, and how.

    - `predictions`: the model's outputs, any shape (activity, the logits of choices, the
      log expected counts of spikes).
    - `targets`: the observations, the same shape.
    - `mask`: `True` on the valid entries, the same shape.
    - `likelihood`: an `AbstractLikelihood` (`SquaredError()`, `Bernoulli()`, `Poisson()`,
      or one of a user's own), or the name of one of the library's (`"squared_error"`,
      `"bernoulli"`, `"poisson"`).
    - `weight`: the weight of this group's mean in the loss.
    """

    predictions: Float[Array, "..."]
    targets: Float[Array, "..."]
    mask: Bool[Array, "..."]
    likelihood: AbstractLikelihood = eqx.field(static=True, converter=as_likelihood)
    weight: float = eqx.field(static=True, default=1.0)


def per_observation(obs: Observations) -> tuple[Array, Array, Array]:
    """The per-observation loss `ℓ`, its derivative `ℓ'` and its (Gauss–Newton) curvature
    `ℓ''` with respect to the prediction, zero on masked entries."""
    value, slope, curve = obs.likelihood.per_observation(obs.predictions, obs.targets)
    zero = lambda a: jnp.where(obs.mask, a, 0.0)
    return zero(value), zero(slope), zero(curve)


def observations_value(observations: tuple[Observations, ...]) -> Scalar:
    """`Σ_k weight_k · mean ℓ_k` over the valid entries of each group."""
    total = jnp.zeros(())
    for obs in observations:
        value = per_observation(obs)[0]
        total = total + obs.weight * jnp.sum(value) / jnp.maximum(jnp.sum(obs.mask), 1)
    return total


class AbstractLoss(eqx.Module):
    """A loss `loss(model, batch) -> scalar` to minimise.

    A loss only says what is compared with what: how its simulation is differentiated
    (checkpointed or not) is the differentiation strategy's business
    (`metaplastic.ReverseMode(checkpoint=...)` sets it around the loss).
    """

    @abc.abstractmethod
    def __call__(self, model: PyTree, batch: PyTree) -> Scalar:
        raise NotImplementedError


class AbstractGaussNewtonLoss(AbstractLoss):
    """A loss with Gauss–Newton structure: `Σ_k weight_k · mean ℓ_k(prediction, target)` over
    the groups of `Observations` that `observe` returns."""

    @abc.abstractmethod
    def observe(self, model: PyTree, batch: PyTree) -> tuple[Observations, ...]:
        """The model's predictions on `batch` with their targets and masks."""
        raise NotImplementedError

    def __call__(self, model: PyTree, batch: PyTree) -> Scalar:
        return observations_value(self.observe(model, batch))


class FunctionLoss(AbstractLoss):
    """A plain function `fn(model, batch) -> scalar` as a loss (first-order solvers only)."""

    fn: Callable = eqx.field(static=True)

    @typing.no_type_check  # `fit` checks what the function returns, with a clear error
    def __call__(self, model: PyTree, batch: PyTree) -> Scalar:
        return self.fn(model, batch)


class ActivityMSE(AbstractGaussNewtonLoss):
    """Mean squared error between simulated and recorded activity of a `PlasticDense` layer,
    over valid steps and recorded neurons only. The simulation starts from each trajectory's
    initial weights."""

    def observe(self, model: PyTree, batch: PyTree) -> tuple[Observations, ...]:
        """**Arguments:** `model`, a `metaplastic.nn.PlasticDense`; `batch`, a
        `metaplastic.data.ActivityDataset` (each refused with a clear error otherwise)."""
        if not isinstance(batch, ActivityDataset):
            raise MetaplasticError(
                "ActivityMSE fits the recorded activity of a PlasticDense layer (a "
                f"metaplastic.data.ActivityDataset), got {type(batch).__name__}: "
                + loss_hint(batch)
            )
        if not isinstance(model, PlasticDense):
            raise MetaplasticError(
                "ActivityMSE simulates a metaplastic.nn.PlasticDense layer, got "
                f"{type(model).__name__}: for any other network with a head use "
                "metaplastic.losses.RecordingLoss() on a RecordingDataset."
            )
        sim = simulate_dataset(model, batch)
        mask = batch.step_mask[:, :, None] & batch.neuron_mask[:, None, :]
        return (Observations(sim.activity, batch.activity, mask, "squared_error"),)


class RecordingLoss(AbstractGaussNewtonLoss):
    """The negative log-likelihood of recordings under a `metaplastic.nn.Model`: the network
    is simulated from each trajectory's initial state, its head predicts the recordings, and
    the head's likelihood scores them over the valid steps and recorded neurons (a mean, so
    padding never dilutes it). Any network and any head: squared error for activity and
    fluorescence, Poisson for spike counts, Bernoulli for binary events."""

    def observe(self, model: PyTree, batch: PyTree) -> tuple[Observations, ...]:
        """**Arguments:** `model`, a `metaplastic.nn.Model`; `batch`, a
        `metaplastic.data.RecordingDataset` (each refused with a clear error otherwise)."""
        if not isinstance(model, Model):
            raise MetaplasticError(
                "RecordingLoss fits a metaplastic.nn.Model(network, head), got "
                f"{type(model).__name__}."
            )
        if not isinstance(batch, RecordingDataset):
            raise MetaplasticError(
                "RecordingLoss needs a metaplastic.data.RecordingDataset, got "
                f"{type(batch).__name__}."
            )
        sim = simulate_recordings(model.network, batch)
        return (head_observations(model.head, batch, sim.outputs),)


def loss_hint(batch: typing.Any) -> str:
    """The loss that fits a dataset of `batch`'s type, as advice for a message."""
    name = type(batch).__name__
    if name in ("ChoiceDataset", "PackedChoiceDataset", "NoisyChoices"):
        return "recorded choices are fitted with metaplastic.behaviour.ChoiceBCE()."
    if name == "ChoiceActivityDataset":
        return "choices with activity are fitted with metaplastic.behaviour.ChoiceActivity()."
    if isinstance(batch, ActivityDataset):
        return "recorded activity is fitted with metaplastic.losses.ActivityMSE()."
    if isinstance(batch, RecordingDataset):
        return "recordings are fitted with metaplastic.losses.RecordingLoss()."
    return "pass the dataset this loss is made for, or a loss made for this dataset."


def head_observations(
    head: AbstractHead, batch: RecordingDataset, outputs: Float[Array, "batch time n_out"]
) -> Observations:
    """The observations of `RecordingLoss`: the head's predictions from a network's
    simulated `outputs` on `batch`, scored against the recordings over the valid steps and
    recorded neurons with the head's likelihood (shared with the hand-written gradient of
    `metaplastic.TaylorReverse`)."""
    predictions = jax.vmap(head.predict)(outputs)
    mask = batch.step_mask[:, :, None] & batch.neuron_mask[:, None, :]
    return Observations(predictions, batch.recordings, mask, head.likelihood)


def as_loss(loss: typing.Any) -> AbstractLoss:
    """`loss` itself if it is an `AbstractLoss`, a plain function wrapped as one, or
    `MetaplasticError` (also for the class of a loss instead of an instance, and for a
    penalty passed as the loss)."""
    if isinstance(loss, AbstractLoss):
        return loss
    if isinstance(loss, type) and issubclass(loss, (AbstractLoss, AbstractPenalty)):
        raise MetaplasticError(
            f"loss is the class {loss.__name__}, not a loss object: call it, "
            f"loss={loss.__name__}()."
        )
    if isinstance(loss, AbstractPenalty):
        raise MetaplasticError(
            f"loss is the penalty {type(loss).__name__}, which acts on the coefficients, not "
            "on the data: pass it as penalty= and give a loss for the data, e.g. "
            f"fit(model, data, metaplastic.losses.ActivityMSE(), penalty={type(loss).__name__}(...))."
        )
    if callable(loss):
        return FunctionLoss(loss)
    raise MetaplasticError(
        f"loss must be a loss object such as metaplastic.losses.ActivityMSE() or a function "
        f"loss(model, batch), got {loss!r}."
    )


# ---------------------------------------------------------------------------------- penalties
def trainable_taylor_coefficients(model: PyTree) -> list[Array]:
    """The effective coefficients of every `TaylorRule` in `model`, frozen terms as 0."""
    out = []
    for leaf in jax.tree.leaves(model, is_leaf=lambda n: isinstance(n, TaylorRule)):
        if isinstance(leaf, TaylorRule):
            c = leaf.effective_coefficients
            if leaf.trainable is not None:
                c = jnp.where(leaf.trainable, c, 0.0)
            out.append(c)
    return out


def _check_weight(name: str, value: typing.Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetaplasticError(f"{name} must be a number, got {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise MetaplasticError(f"{name} must be finite and non-negative, got {value!r}.")
    return float(value)


class AbstractPenalty(eqx.Module):
    """A penalty `penalty(model) -> scalar` added to the loss by every solver."""

    @abc.abstractmethod
    def __call__(self, model: PyTree) -> Scalar:
        raise NotImplementedError


class L1(AbstractPenalty):
    """`weight · Σ (sqrt(θ² + s²) − s)` over the trainable Taylor coefficients θ of every
    rule in the model: the L1 norm, smoothed within `s = smoothing` of zero so that
    second-order solvers see a curvature (`smoothing=0` is the exact `Σ|θ|`)."""

    weight: float = eqx.field(static=True)
    smoothing: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        _check_weight("L1 weight", self.weight)
        _check_weight("L1 smoothing", self.smoothing)

    def __call__(self, model: PyTree) -> Scalar:
        total = jnp.zeros(())
        s = self.smoothing
        for c in trainable_taylor_coefficients(model):
            term = jnp.abs(c) if s == 0 else jnp.sqrt(c**2 + s**2) - s
            total = total + jnp.sum(term)
        return self.weight * total


class L2(AbstractPenalty):
    """`weight · Σ θ²` over the trainable Taylor coefficients θ of every rule in the model."""

    weight: float = eqx.field(static=True)

    def __check_init__(self):
        _check_weight("L2 weight", self.weight)

    def __call__(self, model: PyTree) -> Scalar:
        total = jnp.zeros(())
        for c in trainable_taylor_coefficients(model):
            total = total + jnp.sum(c**2)
        return self.weight * total


def as_penalties(penalty: typing.Any) -> tuple[AbstractPenalty, ...]:
    """One penalty or a sequence of them, as a tuple; `MetaplasticError` for anything else."""
    try:
        penalties = (penalty,) if isinstance(penalty, AbstractPenalty) else tuple(penalty)
    except TypeError:
        penalties = (penalty,)
    if not all(isinstance(p, AbstractPenalty) for p in penalties):
        raise MetaplasticError(
            f"penalty must be a penalty such as metaplastic.losses.L1(1e-3), got {penalty!r}."
        )
    return penalties


def total_penalty(penalties: tuple[AbstractPenalty, ...], model: PyTree) -> Scalar:
    """The sum of `penalties` on `model` (0 without any)."""
    total = jnp.zeros(())
    for penalty in penalties:
        total = total + penalty(model)
    return total


__all__ = [
    "AbstractExactLikelihood",
    "AbstractGaussNewtonLoss",
    "AbstractLikelihood",
    "AbstractLoss",
    "AbstractPenalty",
    "ActivityMSE",
    "Bernoulli",
    "FunctionLoss",
    "L1",
    "L2",
    "Observations",
    "Poisson",
    "RecordingLoss",
    "SquaredError",
    "bernoulli_log_likelihood",
    "binary_cross_entropy",
    "head_observations",
    "masked_mean",
    "observations_value",
    "per_observation",
    "total_penalty",
    "trainable_taylor_coefficients",
]
