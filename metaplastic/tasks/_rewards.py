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
    length = r.shape[-1]
    if delay >= length:
        raise MetaplasticError(
            f"The reward delay ({delay} steps) is not shorter than the trajectory ({length} "
            "steps): no reward would ever arrive. Use a smaller delay or longer trajectories."
        )
    r = jnp.asarray(r)
    if delay == 0:
        return r
    pad = jnp.zeros(r.shape[:-1] + (delay,), r.dtype)
    return jnp.concatenate([pad, r[..., :-delay]], axis=-1)
