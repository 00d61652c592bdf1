"""Reward protocols for activity experiments: the reward signal arriving late."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._errors import MetaplasticError, validates_input
from .._validate import real_array


@validates_input
def delayed_rewards(
    rewards: Float[ArrayLike, "*batch time"], delay: int
) -> Float[Array, "*batch time"]:
    """The reward signal of a delayed-reward protocol: each step's reward arrives `delay`
    steps later (`r'_t = r_{t − delay}`, zero for the first `delay` steps, and the last
    `delay` rewards never arrive). Pass the result as the `rewards` of a simulation or a
    dataset; a rule must carry credit across the gap (`metaplastic.TraceRule`) to learn
    from it.

    **Arguments:**

    - `rewards`: the reward earned at each step, `(..., time)`.
    - `delay`: the number of steps, `0 <= delay < time`.

    **Returns:**

    The delivered rewards, the same shape.
    """
    r = real_array("rewards", rewards)
    if r.ndim < 1:
        raise MetaplasticError(f"rewards must have a time axis, got shape {r.shape}.")
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
        raise MetaplasticError(
            f"delay must be a non-negative whole number of steps, got {delay!r}."
        )
    return arriving_late(jnp.asarray(r), int(delay), unit="steps", option="delay")


def arriving_late(
    values: Float[Array, "*batch time"], delay: int, *, unit: str, option: str
) -> Float[Array, "*batch time"]:
    """`values` shifted `delay` places later along the last axis, zeros first (traceable;
    package-internal: `delayed_rewards` and the fly model's delayed reward signal). A
    `MetaplasticError` when the delay is not shorter than the axis, naming the `unit` of
    the axis and the `option` that set the delay."""
    length = values.shape[-1]
    if delay >= length:
        raise MetaplasticError(
            f"The reward delay ({delay} {unit}) is not shorter than the trajectory ({length} "
            f"{unit}): no reward would ever arrive. Use a smaller {option} or longer "
            "trajectories."
        )
    if delay == 0:
        return values
    pad = jnp.zeros(values.shape[:-1] + (delay,), values.dtype)
    return jnp.concatenate([pad, values[..., :-delay]], axis=-1)
