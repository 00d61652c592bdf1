"""How a fit differentiates through the simulation: the differentiation strategies.

A first-order solver needs the gradient of the loss; a Gauss–Newton solver needs the Jacobian
of the loss's predictions. Both go through a scanned simulation, and how best to take them
depends on the model: forward mode is cheap when there are few parameters, reverse mode when
there are many; the Taylor rule of a plastic layer has a hand-written reverse pass, and the
mushroom-body model has forward sensitivities (`metaplastic.behaviour`). Each way is an
Equinox module behind `AbstractDifferentiation`; `Automatic` (the default of
`metaplastic.fit`) picks the first registered one that supports the problem, and any of them
can be passed as `fit(..., differentiation=...)`.
"""

import abc
import typing

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._errors import MetaplasticError
from ._fast import supports_fast_gradient, taylor_activity_mse, taylor_simulate
from ._simulate import check_rewards_used, checkpointing
from ._types import Scalar
from .data import RecordingDataset
from .losses import (
    AbstractGaussNewtonLoss,
    AbstractLoss,
    ActivityMSE,
    Observations,
    RecordingLoss,
    head_observations,
    observations_value,
)
from .nn import Model, PlasticDense
from .rules import TaylorRule


Linearised = tuple[tuple[Observations, Float[Array, "... n_params"]], ...]


def _basis(theta: Array) -> Array:
    return jnp.eye(theta.size, dtype=theta.dtype)


class AbstractDifferentiation(eqx.Module):
    """A way to differentiate a loss through the simulation.

    Methods take the trainable part `params` of the model (`eqx.partition`), the rest
    `static`, and a batch. Jacobians are with respect to the flat vector of `params`
    (`jax.flatten_util.ravel_pytree` order)."""

    @abc.abstractmethod
    def supports(self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool) -> bool:
        """Whether this strategy can take the gradient (or, with `jacobian`, the Jacobian)
        of `loss` for `model` on batches like `batch`."""
        raise NotImplementedError

    @abc.abstractmethod
    def value_and_grad(
        self, loss: AbstractLoss, params: PyTree, static: PyTree, batch: PyTree
    ) -> tuple[Scalar, PyTree]:
        """The loss and its gradient with respect to `params`."""
        raise NotImplementedError

    @abc.abstractmethod
    def linearise(
        self, loss: AbstractGaussNewtonLoss, params: PyTree, static: PyTree, batch: PyTree
    ) -> Linearised:
        """Each group of the loss's `Observations` with the Jacobian of its predictions,
        `predictions.shape + (n_params,)`."""
        raise NotImplementedError


def _observe_fn(loss, static, unravel, batch):
    def fn(theta):
        obs = loss.observe(eqx.combine(unravel(theta), static), batch)
        return tuple(o.predictions for o in obs), obs

    return fn


class ForwardMode(AbstractDifferentiation):
    """Forward-mode differentiation through the scan (`jax.linearize`, one tangent per
    parameter): exact, memory independent of the trajectory length, cheap for the tens of
    coefficients of a Taylor rule."""

    def supports(self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool) -> bool:
        return not jacobian or isinstance(loss, AbstractGaussNewtonLoss)

    def value_and_grad(self, loss, params, static, batch):
        theta, unravel = ravel_pytree(params)
        value, jvp = jax.linearize(lambda t: loss(eqx.combine(unravel(t), static), batch), theta)
        return value, unravel(jax.vmap(jvp)(_basis(theta)))

    def linearise(self, loss, params, static, batch):
        theta, unravel = ravel_pytree(params)
        _, jvp, obs = jax.linearize(_observe_fn(loss, static, unravel, batch), theta, has_aux=True)
        jacs = jax.vmap(jvp, out_axes=-1)(_basis(theta))
        return tuple(zip(obs, jacs))


class ReverseMode(AbstractDifferentiation):
    """Reverse-mode differentiation through the scan (`jax.grad`). `checkpoint=True`
    recomputes each step in the backward pass instead of storing it, an integer `k` stores
    one state per segment of `k` steps (memory ~ √T for `k ≈ √T`): every simulation the loss
    runs is checkpointed so (`metaplastic.checkpointing`), without the loss knowing."""

    checkpoint: bool | int = eqx.field(static=True, default=False)

    def supports(self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool) -> bool:
        return not jacobian or isinstance(loss, AbstractGaussNewtonLoss)

    def value_and_grad(self, loss, params, static, batch):
        fn = lambda p: loss(eqx.combine(p, static), batch)
        with checkpointing(self.checkpoint):
            return jax.value_and_grad(fn)(params)

    def linearise(self, loss, params, static, batch):
        theta, unravel = ravel_pytree(params)
        fn = _observe_fn(loss, static, unravel, batch)
        with checkpointing(self.checkpoint):
            _, vjp, obs = jax.vjp(fn, theta, has_aux=True)
        out = []
        for k, o in enumerate(obs):
            size = o.predictions.size

            def row(v, k=k, shape=o.predictions.shape):
                cot = tuple(
                    v.reshape(shape) if i == k else jnp.zeros_like(p.predictions)
                    for i, p in enumerate(obs)
                )
                return vjp(cot)[0]

            eye = jnp.eye(size, dtype=o.predictions.dtype)
            jac = jax.lax.map(row, eye).reshape(o.predictions.shape + (theta.size,))
            out.append((o, jac))
        return tuple(out)


def _fast_recording_loss(model: Model, batch: RecordingDataset, checkpoint: bool | int) -> Scalar:
    """`RecordingLoss()(model, batch)` with the layer simulated by the hand-written pass
    (`taylor_simulate`, reverse mode only): any head, any likelihood on its activity."""
    network = model.network
    rewards = batch.rewards
    if rewards is None:
        check_rewards_used(network)
        rewards = jnp.zeros(batch.step_mask.shape, batch.inputs.dtype)
    one = lambda xs: taylor_simulate(network, *xs, checkpoint=checkpoint)[0]
    xs = (batch.initial_state, batch.inputs, rewards, batch.step_mask)
    if jax.default_backend() == "cpu":
        # One trajectory at a time, as `taylor_activity_mse` runs them on a CPU: one
        # trajectory's weight-sized loops already use every core (measured: a vmapped
        # batch of 50 took 1.8x the time of the single-layer loss's gradient).
        activity = jax.lax.map(one, xs)
    else:
        activity = jax.vmap(one)(xs)
    return observations_value((head_observations(model.head, batch, activity),))


class TaylorReverse(AbstractDifferentiation):
    """The hand-written reverse pass of a `PlasticDense` layer with a `TaylorRule`:
    several times faster than `jax.grad` through the scan, storing one weight matrix per step
    (or per `checkpoint` segment). It takes the gradient of `ActivityMSE` on the layer (one
    trajectory at a time on a CPU), and of `RecordingLoss` on a `metaplastic.nn.Model` whose
    network is such a layer, whatever its head. Gradients only."""

    checkpoint: bool | int = eqx.field(static=True, default=False)

    def supports(self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool) -> bool:
        if jacobian:
            return False
        if type(loss) is ActivityMSE:
            return supports_fast_gradient(model)
        return (
            type(loss) is RecordingLoss
            and isinstance(model, Model)
            and isinstance(batch, RecordingDataset)
            and supports_fast_gradient(model.network)
        )

    def value_and_grad(self, loss, params, static, batch):
        if type(loss) is RecordingLoss:
            fn = lambda p: _fast_recording_loss(
                eqx.combine(p, static), batch, checkpoint=self.checkpoint
            )
        else:
            fn = lambda p: taylor_activity_mse(
                eqx.combine(p, static), batch, checkpoint=self.checkpoint
            )
        return jax.value_and_grad(fn)(params)

    def linearise(self, loss, params, static, batch):
        raise MetaplasticError(
            "TaylorReverse gives gradients only; a Gauss-Newton solver needs ForwardMode."
        )


_REGISTERED: list[AbstractDifferentiation] = [TaylorReverse()]


def register_differentiation(strategy: AbstractDifferentiation) -> None:
    """Let `Automatic` consider a specialised strategy (before the generic ones). Sub-packages
    with their own models register theirs when imported (e.g. `metaplastic.behaviour`)."""
    if not isinstance(strategy, AbstractDifferentiation):
        raise MetaplasticError(f"not a differentiation strategy: {strategy!r}")
    if strategy not in _REGISTERED:
        _REGISTERED.insert(0, strategy)


class Automatic(AbstractDifferentiation):
    """The default: the first registered specialised strategy that supports the problem
    (the Taylor reverse pass, the mushroom-body sensitivities), else `ForwardMode` for
    Jacobians and `ReverseMode` for gradients — `ReverseMode(checkpoint=True)` for a
    `PlasticDense` layer whose rule has no hand-written pass (such as `MLPRule`) and for a
    `metaplastic.nn.Model` without one (a recurrent network, a chain): their per-synapse
    intermediates would otherwise be stored for every step. Recomputing each step's body
    keeps one state per step and, measured, also halves the time of a gradient: on the MLP
    rule of a 100 → 1000 layer, and on a 300-unit `PlasticRecurrent` network with a
    27-term rule (batch 50, T = 50: 3.95 s instead of 7.86 s a gradient, `python -m
    benchmarks --only zoo`)."""

    def choose(
        self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool
    ) -> AbstractDifferentiation:
        """The strategy used for `loss` and `model`."""
        for strategy in _REGISTERED:
            if strategy.supports(loss, model, batch, jacobian=jacobian):
                return strategy
        if jacobian:
            return ForwardMode()
        other_rule = isinstance(model, PlasticDense) and not isinstance(model.rule, TaylorRule)
        return ReverseMode(checkpoint=other_rule or isinstance(model, Model))

    def supports(self, loss: AbstractLoss, model: PyTree, batch: PyTree, *, jacobian: bool) -> bool:
        return ForwardMode().supports(loss, model, batch, jacobian=jacobian)

    def value_and_grad(self, loss, params, static, batch):
        model = eqx.combine(params, static)
        return self.choose(loss, model, batch, jacobian=False).value_and_grad(
            loss, params, static, batch
        )

    def linearise(self, loss, params, static, batch):
        model = eqx.combine(params, static)
        return self.choose(loss, model, batch, jacobian=True).linearise(loss, params, static, batch)


def as_differentiation(differentiation: typing.Any) -> AbstractDifferentiation:
    """`differentiation` itself, `Automatic()` for `None`, or `MetaplasticError`."""
    if differentiation is None:
        return Automatic()
    if not isinstance(differentiation, AbstractDifferentiation):
        raise MetaplasticError(
            f"differentiation must be a differentiation strategy, got {differentiation!r}."
        )
    return differentiation
