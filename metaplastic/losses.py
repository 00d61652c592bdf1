"""Losses: masked means over valid entries only, so padding never dilutes a loss."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

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
    layer: PlasticDense, data: ActivityDataset, *, checkpoint: bool | int = False
) -> Scalar:
    """Mean squared error between simulated and recorded activity, over valid steps and
    recorded neurons only. The simulation starts from each trajectory's initial weights."""
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
    layer: PlasticDense, data: ActivityDataset, *, checkpoint: bool | int = False
) -> Float[Array, "batch time n_out"]:
    """Simulated minus recorded activity, zero on padded steps and unrecorded neurons (for
    `fit_least_squares`; `activity_mse` is their mean square over valid entries)."""
    sim = simulate_dataset(layer, data, checkpoint=checkpoint)
    mask = data.step_mask[:, :, None] & data.neuron_mask[:, None, :]
    return jnp.where(mask, sim.activity - data.activity, 0.0)
