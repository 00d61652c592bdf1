"""Metrics: R² of weight and activity trajectories, coefficient errors, deviance."""

import typing

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._errors import MetaplasticError
from ._simulate import simulate, simulate_recordings
from ._types import Scalar
from .data import RecordingDataset
from .nn import AbstractLayer, PlasticDense
from .rules import TaylorRule


def r2_score(
    reference: Float[Array, "..."],
    prediction: Float[Array, "..."],
    mask: Bool[ArrayLike, "..."] | None = None,
) -> Scalar:
    """Coefficient of determination `1 - SS_res / SS_tot` of `prediction` against
    `reference`, over the entries where `mask` (broadcast) is True."""
    if mask is None:
        mask = jnp.ones(reference.shape, bool)
    mask = jnp.broadcast_to(mask, reference.shape)
    count = jnp.maximum(jnp.sum(mask), 1)
    mean = jnp.sum(jnp.where(mask, reference, 0.0)) / count
    ss_tot = jnp.sum(jnp.where(mask, (reference - mean) ** 2, 0.0))
    ss_res = jnp.sum(jnp.where(mask, (reference - prediction) ** 2, 0.0))
    return 1.0 - ss_res / jnp.maximum(ss_tot, jnp.finfo(reference.dtype).tiny)


def compare_layers(
    reference: PlasticDense,
    fitted: PlasticDense,
    initial_weights: Float[Array, "batch n_out n_in"],
    inputs: Float[Array, "batch time n_in"],
    rewards: Float[Array, "batch time"] | None = None,
) -> dict[str, np.ndarray]:
    """Simulate a reference and a fitted layer from the same initial weights on the same
    (held-out) inputs, and score the fitted one against the reference per trajectory.

    **Returns:**

    `{"r2_weights": (batch,), "r2_activity": (batch,)}`, numpy arrays.
    """
    if rewards is None:
        rewards = jnp.zeros(inputs.shape[:2], inputs.dtype)

    @jax.jit
    @jax.vmap
    def score(w0, x, r):
        a = simulate(reference, w0, x, r, return_weights=True)
        b = simulate(fitted, w0, x, r, return_weights=True)
        return r2_score(a.weights, b.weights), r2_score(a.activity, b.activity)

    r2w, r2a = score(initial_weights, inputs, rewards)
    return {"r2_weights": np.asarray(r2w), "r2_activity": np.asarray(r2a)}


def compare_networks(
    reference: AbstractLayer, fitted: AbstractLayer, data: RecordingDataset
) -> dict[str, typing.Any]:
    """Simulate a reference and a fitted network from the same initial states on the same
    (held-out) inputs of `data`, and score the fitted one against the reference per
    trajectory: the R² of its outputs, of every array of its state over the trajectory
    (for a plastic layer, the weights), and of the *changes* of every state array since the
    start (`state_t − state_0`: the part of the weights that plasticity wrote, without the
    initial weights that both simulations share).

    **Returns:**

    `{"r2_outputs": (batch,), "r2_states": {name: (batch,)}, "r2_changes": {name:
    (batch,)}}`, numpy arrays, with `name` each state array's path in the state PyTree
    (`""` for a state that is one array).
    """
    if not isinstance(data, RecordingDataset):
        raise MetaplasticError(
            f"compare_networks needs a metaplastic.data.RecordingDataset, got "
            f"{type(data).__name__}."
        )

    @jax.jit
    def score(data):
        a = simulate_recordings(reference, data, return_states=True)
        b = simulate_recordings(fitted, data, return_states=True)
        valid = data.step_mask
        r2 = jax.vmap(r2_score)
        out = {"r2_outputs": r2(a.outputs, b.outputs, valid[:, :, None])}
        states, changes = {}, {}
        paths = jax.tree_util.tree_flatten_with_path(a.states)[0]
        for (path, sa), sb, s0 in zip(
            paths, jax.tree.leaves(b.states), jax.tree.leaves(data.initial_state)
        ):
            name = jax.tree_util.keystr(path)
            m = valid.reshape(valid.shape + (1,) * (sa.ndim - 2))
            states[name] = r2(sa, sb, m)
            changes[name] = r2(sa - s0[:, None], sb - s0[:, None], m)
        out["r2_states"], out["r2_changes"] = states, changes
        return out

    return jax.tree.map(np.asarray, score(data))


def coefficient_error(fitted: TaylorRule, reference: TaylorRule) -> dict[str, float]:
    """How far a fitted Taylor rule is from a known one (same factors and order).

    **Returns:**

    `{"max_abs": ..., "rmse": ..., "max_abs_off_support": ..., "max_rel_on_support": ...}` where
    the support is the reference's non-zero terms.
    """
    if fitted.factors != reference.factors or fitted.order != reference.order:
        raise MetaplasticError(
            f"Cannot compare rules over {fitted.factors}/order {fitted.order} and "
            f"{reference.factors}/order {reference.order}."
        )
    a = np.asarray(fitted.coefficients, dtype=np.float64)
    b = np.asarray(reference.coefficients, dtype=np.float64)
    support = b != 0
    diff = np.abs(a - b)
    return {
        "max_abs": float(diff.max()),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "max_abs_off_support": float(diff[~support].max()) if (~support).any() else 0.0,
        "max_rel_on_support": float((diff[support] / np.abs(b[support])).max())
        if support.any()
        else 0.0,
    }


def percent_deviance_explained(
    model_log_likelihood: Float[ArrayLike, "..."], null_log_likelihood: Float[ArrayLike, "..."]
) -> Float[Array, "..."]:
    """`100 · (D_null − D_model) / D_null` with `D = −2 · log-likelihood`."""
    d_model = -2.0 * jnp.asarray(model_log_likelihood)
    d_null = -2.0 * jnp.asarray(null_log_likelihood)
    return 100.0 * (d_null - d_model) / d_null


__all__ = [
    "coefficient_error",
    "compare_layers",
    "compare_networks",
    "percent_deviance_explained",
    "r2_score",
]
