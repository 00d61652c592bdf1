import jax.random as jr
from jaxtyping import Array, Float

from .._errors import MetaplasticError
from .._types import Key


def gaussian_stimuli(
    n_in: int,
    length: int,
    *,
    n_trajectories: int | None = None,
    mean: float = 0.0,
    std: float = 0.1,
    key: Key,
) -> Float[Array, "... length n_in"]:
    """Independent Gaussian presynaptic activity, `x_t ~ N(mean, std²)`.

    **Returns:**

    An array of shape `(length, n_in)`, or `(n_trajectories, length, n_in)`.
    """
    if n_in < 1 or length < 1:
        raise MetaplasticError(
            f"gaussian_stimuli needs n_in >= 1 and length >= 1, got {n_in}, {length}."
        )
    if std < 0:
        raise MetaplasticError(f"std must be non-negative, got {std}.")
    shape = (length, n_in) if n_trajectories is None else (n_trajectories, length, n_in)
    return mean + std * jr.normal(key, shape)
