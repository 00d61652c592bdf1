"""The scanned step loop of a plastic layer, and generation of activity datasets."""

import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._errors import MetaplasticError
from ._fast import supports_fast_gradient, taylor_simulate
from ._types import Key
from ._validate import real_array
from .data import ActivityDataset
from .data._activity import float_dtype
from .nn import ActivityReadout, PlasticDense


class Simulation(eqx.Module):
    """The result of simulating one trajectory.

    - `activity`: postsynaptic activity `y_t`, `(time, n_out)`.
    - `weights`: the weights after each step's update, `(time, n_out, n_in)`, or `None`.
    - `final_weights`: the weights at the end, `(n_out, n_in)`.
    """

    activity: Float[Array, "time n_out"]
    weights: Float[Array, "time n_out n_in"] | None
    final_weights: Float[Array, "n_out n_in"]


def _scan_segments(body, carry, xs, length: int, segment: int):
    """Scan `body` over `length` steps as `length/segment` checkpointed segments, so that the
    backward pass stores one carry per segment and recomputes inside it (√T memory)."""
    n_seg = -(-length // segment)
    pad = n_seg * segment - length

    def pad_and_split(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((n_seg, segment) + a.shape[1:])

    xs, valid = xs
    xs = jax.tree.map(pad_and_split, xs)
    valid = pad_and_split(valid)

    @jax.checkpoint
    def outer(c, seg):
        return jax.lax.scan(body, c, seg)

    carry, ys = jax.lax.scan(outer, carry, (xs, valid))
    ys = jax.tree.map(lambda a: a.reshape((n_seg * segment,) + a.shape[2:])[:length], ys)
    return carry, ys


def simulate(
    layer: PlasticDense,
    initial_weights: Float[Array, "n_out n_in"],
    inputs: Float[Array, "time n_in"],
    rewards: Float[Array, " time"] | None = None,
    step_mask: Bool[Array, " time"] | None = None,
    *,
    return_weights: bool = False,
    checkpoint: bool | int = False,
    fast_gradient: bool = False,
) -> Simulation:
    """Run a plastic layer over one trajectory with `jax.lax.scan`.

    At each step `y_t = f(W_t x_t)` and `W_{t+1} = W_t + η · rule(x_t, y_t, W_t, r_t)`. Padded
    steps (`step_mask` False) leave the weights unchanged. Vmap it for batches.

    **Arguments:**

    - `layer`: the plastic layer (rule, η, activation).
    - `initial_weights`: `(n_out, n_in)`.
    - `inputs`: presynaptic activity, `(time, n_in)`.
    - `rewards`: the reward signal per step, `(time,)`; zeros if `None`.
    - `step_mask`: valid steps, `(time,)`; all valid if `None`.
    - `return_weights`: also return the weight trajectory.
    - `checkpoint`: `True` checkpoints every step of the scan body; an integer `k` scans in
      checkpointed segments of `k` steps, storing one weight matrix per segment for the
      backward pass instead of one per step.
    - `fast_gradient`: for a `PlasticDense` layer with a `TaylorRule` and without
      `return_weights`, differentiate with the hand-written reverse pass (faster than
      `jax.grad` through the scan; reverse mode only, so not under `jax.jvp`/`jax.jacfwd`).

    **Returns:**

    A `Simulation`.
    """
    length = inputs.shape[0]
    if rewards is None:
        rewards = jnp.zeros(length, inputs.dtype)
    if step_mask is None:
        step_mask = jnp.ones(length, bool)
    if fast_gradient and not return_weights and supports_fast_gradient(layer):
        activity, final = taylor_simulate(
            layer, initial_weights, inputs, rewards, step_mask, checkpoint=checkpoint
        )
        return Simulation(activity, None, final)

    def body(weight, xs):
        (pre, reward), valid = xs
        post, new_weight = layer.step(weight, pre, reward)
        new_weight = jnp.where(valid, new_weight, weight)
        return new_weight, (post, new_weight if return_weights else None)

    xs = ((inputs, rewards), step_mask)
    if checkpoint is True:
        final, (activity, weights) = jax.lax.scan(jax.checkpoint(body), initial_weights, xs)
    elif checkpoint is False or checkpoint is None:
        final, (activity, weights) = jax.lax.scan(body, initial_weights, xs)
    else:
        if int(checkpoint) < 1:
            raise MetaplasticError(f"checkpoint segment length must be >= 1, got {checkpoint}.")
        final, (activity, weights) = _scan_segments(
            body, initial_weights, xs, length, int(checkpoint)
        )
    return Simulation(activity, weights, final)


def simulate_dataset(
    layer: PlasticDense,
    data: ActivityDataset,
    *,
    return_weights: bool = False,
    checkpoint: bool | int = False,
    fast_gradient: bool = False,
) -> Simulation:
    """Simulate every trajectory of a dataset from its initial weights (vmapped); the
    keywords are those of `simulate`."""
    return jax.vmap(
        lambda w0, x, r, m: simulate(
            layer,
            w0,
            x,
            r,
            m,
            return_weights=return_weights,
            checkpoint=checkpoint,
            fast_gradient=fast_gradient,
        )
    )(data.initial_weights, data.inputs, data.rewards, data.step_mask)


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def generate_activity(
    layer: PlasticDense,
    inputs: Float[Array, "batch time n_in"],
    initial_weights: Float[Array, "batch n_out n_in"],
    *,
    readout: ActivityReadout = ActivityReadout(1.0, 0.0),
    rewards: Float[Array, "batch time"] | None = None,
    key: Key,
) -> tuple[ActivityDataset, Float[Array, "batch time n_out n_in"]]:
    """Simulate a ground-truth layer and record it through a readout.

    **Returns:**

    The recorded `ActivityDataset` and the true weight trajectories.
    """
    if not isinstance(layer, PlasticDense):
        raise MetaplasticError(f"layer must be a PlasticDense, got {type(layer).__name__}.")
    if not isinstance(readout, ActivityReadout):
        raise MetaplasticError(f"readout must be an ActivityReadout, got {type(readout).__name__}.")
    if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
        raise MetaplasticError(f"key must be one JAX PRNG key, got {key!r}.")
    x = real_array("inputs", inputs)
    w0 = real_array("initial_weights", initial_weights)
    if x.ndim != 3 or 0 in x.shape:
        raise MetaplasticError(
            f"inputs must have shape (batch, time, n_in) with no empty axis, got {x.shape}."
        )
    batch, length, n_in = x.shape
    if w0.ndim == 2:
        w0 = np.broadcast_to(w0, (batch,) + w0.shape)
    if w0.ndim != 3 or w0.shape[0] != batch or w0.shape[2] != n_in or w0.shape[1] < 1:
        raise MetaplasticError(
            f"initial_weights must have shape (batch={batch}, n_out, n_in={n_in}), got "
            f"{np.shape(initial_weights)}."
        )
    if rewards is not None:
        rewards = real_array("rewards", rewards)
        if rewards.shape != (batch, length):
            raise MetaplasticError(
                f"rewards must have shape (batch={batch}, time={length}), got {rewards.shape}."
            )
    if readout.mask is not None and readout.mask.shape != (w0.shape[1],):
        raise MetaplasticError(
            f"readout mask has shape {readout.mask.shape}, expected ({w0.shape[1]},) for "
            f"{w0.shape[1]} neurons."
        )
    for name, arr in (("inputs", x), ("initial_weights", w0), ("rewards", rewards)):
        if arr is not None and not np.all(np.isfinite(arr)):
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise MetaplasticError(f"{name} holds a non-finite value at index {where}.")
    dtype = float_dtype(x, w0)
    inputs = jnp.asarray(x, dtype)
    initial_weights = jnp.asarray(w0, dtype)
    rewards = jnp.zeros((batch, length), dtype) if rewards is None else jnp.asarray(rewards, dtype)
    mask = jnp.ones((batch, length), bool)
    sim = jax.jit(jax.vmap(lambda w0, x, r, m: simulate(layer, w0, x, r, m, return_weights=True)))(
        initial_weights, inputs, rewards, mask
    )
    observed, neuron_mask = readout.observe(sim.activity, key=key)
    data = ActivityDataset(
        inputs, observed, initial_weights, neuron_mask=neuron_mask, rewards=rewards
    )
    return data, sim.weights
