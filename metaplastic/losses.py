"""Losses: masked means over valid entries only, so padding never dilutes a loss."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._fast import supports_fast_gradient, taylor_activity_mse
from ._simulate import simulate_dataset
from ._types import Scalar
from .data import ActivityDataset
from .nn import PlasticDense


def masked_mean(values: Float[Array, "..."], mask: Bool[ArrayLike, "..."]) -> Scalar:
    """Mean of `values` over the entries where `mask` (broadcast to `values`) is True."""
    mask = jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1)


def activity_mse(
    layer: PlasticDense,
    data: ActivityDataset,
    *,
    checkpoint: bool | int = False,
    fast_gradient: bool = True,
) -> Scalar:
    """Mean squared error between simulated and recorded activity, over valid steps and
    recorded neurons only. The simulation starts from each trajectory's initial weights.

    With `fast_gradient` (the default) and a `PlasticDense` layer with a `TaylorRule`, the
    gradient comes from a hand-written reverse pass that is several times faster than
    `jax.grad` through the scan and stores one weight matrix per step (or per `checkpoint`
    segment) of one trajectory at a time. It supports reverse mode only: pass
    `fast_gradient=False` to differentiate the loss in forward mode (`jax.jvp`, `jax.jacfwd`).
    """
    if fast_gradient and supports_fast_gradient(layer):
        return taylor_activity_mse(layer, data, checkpoint=checkpoint)
    sim = simulate_dataset(layer, data, checkpoint=checkpoint)
    mask = data.step_mask[:, :, None] & data.neuron_mask[:, None, :]
    return masked_mean((sim.activity - data.activity) ** 2, mask)


def binary_cross_entropy(
    logits: Float[Array, "..."], targets: Float[ArrayLike, "..."], mask: Bool[ArrayLike, "..."]
) -> Scalar:
    """Mean binary cross-entropy of `sigmoid(logits)` against 0/1 `targets`, over `mask`."""
    per = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
    return masked_mean(per, mask)


def activity_residuals(
    layer: PlasticDense,
    data: ActivityDataset,
    *,
    checkpoint: bool | int = False,
    fast_gradient: bool = False,
) -> Float[Array, "batch time n_out"]:
    """Simulated minus recorded activity, zero on padded steps and unrecorded neurons (for
    `fit_least_squares`; `activity_mse` is their mean square over valid entries).

    `fit_least_squares` differentiates the residuals in forward mode, so the hand-written
    reverse pass is off by default here; `fast_gradient=True` turns it on for reverse-mode
    use (`jax.vjp`, `jax.jacrev`).
    """
    sim = simulate_dataset(layer, data, checkpoint=checkpoint, fast_gradient=fast_gradient)
    mask = data.step_mask[:, :, None] & data.neuron_mask[:, None, :]
    return jnp.where(mask, sim.activity - data.activity, 0.0)
