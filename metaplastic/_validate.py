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
        lengths = _ragged_lengths(value)
        if lengths is not None:
            raise MetaplasticError(
                f"{name} is a list of trajectories (or trials) of different lengths "
                f"{lengths}, which is not an array. Pad them to one length and mark the "
                "padding invalid in the dataset's mask (e.g. step_mask=), or build the "
                "dataset from a table, which pads and masks for you (metaplastic.data."
                "from_table, metaplastic.flies.from_table)."
            ) from None
        raise MetaplasticError(f"{name} must be {what}: {err}") from None


def _ragged_lengths(value: Any) -> list[int] | None:
    """The lengths of the items of a list or tuple of sequences whose lengths differ (at
    the first nesting level where they do), else `None`."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    try:
        shapes = [np.shape(item) for item in value]
    except (TypeError, ValueError):
        shapes = None
    if shapes is not None and all(shapes) and len({s[0] for s in shapes}) > 1:
        return [s[0] for s in shapes]
    for item in value:
        inner = _ragged_lengths(item)
        if inner is not None:
            return inner
    return None


def real_array(name: str, value: Any, *, allow_traced: bool = False) -> np.ndarray | jax.Array:
    """`value` as a numpy array of real numbers (bool and int allowed), or `MetaplasticError`
    (for a traced value unless `allow_traced`, an object array or a non-numeric dtype)."""
    arr = _as_numpy(name, value, "an array of numbers", allow_traced)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise MetaplasticError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    return arr


def batched_inputs(inputs: Any) -> np.ndarray:
    """`inputs` as a real array of shape `(batch, time, n_in)` with no empty axis."""
    x = real_array("inputs", inputs)
    if x.ndim != 3 or 0 in x.shape:
        raise MetaplasticError(
            f"inputs must have shape (batch, time, n_in) with no empty axis, got {x.shape}."
        )
    return x


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


def weight_bound(value: Any) -> float | None:
    """`value` as the clipping bound of a layer's weights: `None` (no clipping) or a positive
    finite number (not a bool); anything else is refused."""
    if value is None:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not 0 < value < np.inf
    ):
        raise MetaplasticError(
            f"weight_bound must be None or a positive finite number, got {value!r}."
        )
    return float(value)


def trajectory_masks(
    step_mask: Any, neuron_mask: Any, batch: int, time: int, neurons: int
) -> tuple[np.ndarray, np.ndarray]:
    """The step mask `(batch, time)` and the neuron mask `(batch, neurons)` of a dataset
    (all valid where `None`; a neuron mask `(neurons,)` is shared by every trajectory), or a
    `MetaplasticError` for a wrong shape or dtype, or a trajectory without a valid step or
    recorded neuron: the one check of `ActivityDataset` and `RecordingDataset`."""
    b, t, n = batch, time, neurons
    sm = np.ones((b, t), bool) if step_mask is None else mask_array("step_mask", step_mask)
    if sm.shape != (b, t):
        raise MetaplasticError(
            f"step_mask must be a boolean array of shape ({b}, {t}), got {sm.dtype} {sm.shape}."
        )
    if not sm.any(axis=1).all():
        empty = int(np.argmin(sm.any(axis=1)))
        raise MetaplasticError(f"Trajectory {empty} has no valid step in step_mask.")
    nm = np.ones((b, n), bool) if neuron_mask is None else mask_array("neuron_mask", neuron_mask)
    if nm.ndim == 1 and nm.shape == (n,):
        nm = np.broadcast_to(nm, (b,) + nm.shape)
    if nm.shape != (b, n):
        raise MetaplasticError(
            f"neuron_mask must be a boolean array of shape ({n},) or ({b}, {n}), "
            f"got {nm.dtype} {nm.shape}."
        )
    if not nm.any(axis=1).all():
        empty = int(np.argmin(nm.any(axis=1)))
        raise MetaplasticError(f"Trajectory {empty} records no neuron in neuron_mask.")
    return sm, nm
