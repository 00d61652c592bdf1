"""Checks of user-supplied arrays, shared by the dataset constructors and `simulate`.

Each turns bad input into a `MetaplasticError` naming the argument, instead of a numpy or
JAX traceback; all work on the host (concrete arrays only).
"""

from typing import Any

import jax
import numpy as np

from ._errors import MetaplasticError


def _as_numpy(name: str, value: Any, what: str, allow_traced: bool) -> Any:
    """`np.asarray(value)`, or a `MetaplasticError` saying that `name` must be `what`; a
    traced value is refused, or passed through with `allow_traced`."""
    if isinstance(value, jax.core.Tracer):
        if allow_traced:
            return value
        raise MetaplasticError(f"{name} must be a concrete array, not a traced value inside jit.")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise MetaplasticError(f"{name} must be {what}: {err}") from None


def real_array(name: str, value: Any, *, allow_traced: bool = False) -> np.ndarray | jax.Array:
    """`value` as a numpy array of real numbers (bool and int allowed), or `MetaplasticError`
    (for a traced value unless `allow_traced`, an object array or a non-numeric dtype)."""
    arr = _as_numpy(name, value, "an array of numbers", allow_traced)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise MetaplasticError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    return arr


def mask_array(name: str, value: Any) -> np.ndarray:
    """`value` as a numpy boolean array, or `MetaplasticError`."""
    arr = _as_numpy(name, value, "a boolean array", False)
    if arr.dtype != bool:
        raise MetaplasticError(f"{name} must be a boolean array (True = valid), got {arr.dtype}.")
    return arr


def finite_where(
    name: str, values: np.ndarray, valid: np.ndarray, axes: tuple[str, ...] | None = None
) -> None:
    """Raise `MetaplasticError` if `values` is NaN or infinite anywhere `valid` is true
    (padding may hold anything). With `axes` (one name per axis, e.g. `("trajectory",
    "step", "neuron")`), the message names the place in those words as well as by index."""
    bad = valid & ~np.isfinite(values)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        place = f"index {where}"
        if axes is not None:
            place = ", ".join(f"{a} {i}" for a, i in zip(axes, where)) + f" (index {where})"
        raise MetaplasticError(
            f"{name} holds a non-finite value ({values[where]}) at {place}, which is marked "
            f"valid ({int(bad.sum())} such value(s) in all); mark it invalid in the mask or "
            "remove it."
        )


def is_size(value: Any) -> bool:
    """Whether `value` is a positive integer (numpy included), not a bool."""
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, (bool, np.bool_))
        and value >= 1
    )
