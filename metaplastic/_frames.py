"""Results as pandas DataFrames (pandas is an optional dependency: the `pandas` extra)."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._errors import require


def pandas() -> Any:
    """The pandas module, or a `MissingDependencyError` that says how to install it."""
    return require("pandas", "pandas", "to_dataframe()")


def frame(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A DataFrame of `rows` (dicts) with `columns` in this order (also when empty; default:
    the keys of the first row)."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    return pandas().DataFrame.from_records(rows, columns=list(columns))


def per_member(
    members: int | None, rows_of: Callable[[int | None], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of a single result (`members` is `None`), or of every ensemble member with a
    leading `member` column."""
    if members is None:
        return rows_of(None)
    return [{"member": i, **row} for i in range(members) for row in rows_of(i)]


def history_rows(loss: np.ndarray, params: PyTree) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per step (and ensemble member): `step`, (`member`,) `loss`, and one column per
    trainable value, named by its path in the model and its index, e.g.
    `.rule.coefficients[1, 1, 0]`."""
    loss = np.asarray(loss)
    steps = loss.shape[0]
    members = loss.shape[1] if loss.ndim == 2 else None
    lead = 1 if members is None else 2
    names, values = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.asarray(leaf)
        base = jax.tree_util.keystr(path)
        shape = leaf.shape[lead:]
        flat = leaf.reshape(leaf.shape[:lead] + (-1,))
        for k, index in enumerate(np.ndindex(*shape)):
            suffix = "" if not shape else "[" + ", ".join(str(i) for i in index) + "]"
            names.append(base + suffix)
            values.append(flat[..., k])
    rows = []
    for t in range(steps):
        for m in [None] if members is None else range(members):
            row: dict[str, Any] = {"step": t}
            if m is not None:
                row["member"] = m
            at = (t,) if m is None else (t, m)
            row["loss"] = float(loss[at])
            row.update({name: v[at].item() for name, v in zip(names, values)})
            rows.append(row)
    columns = ["step"] + ([] if members is None else ["member"]) + ["loss"] + names
    return columns, rows
