"""Results as pandas DataFrames (pandas is an optional dependency: the `pandas` extra), and
the column checks of the readers of tables."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._errors import MetaplasticError, require


def pandas() -> Any:
    """The pandas module, or a `MissingDependencyError` that says how to install it."""
    return require("pandas", "pandas", "to_dataframe()")


def is_dataframe(table: Any) -> bool:
    """Whether `table` is a pandas DataFrame, without importing pandas (for the functions
    that take one or another table)."""
    return hasattr(table, "columns") and hasattr(table, "iloc") and hasattr(table, "to_csv")


def frame(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """A DataFrame of `rows` (dicts) with `columns` in this order (also when empty; default:
    the keys of the first row)."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    return pandas().DataFrame.from_records(rows, columns=list(columns))


def members_frame(
    members: int | None,
    rows_of: Callable[[int | None], list[dict[str, Any]]],
    columns: Sequence[str],
) -> Any:
    """The DataFrame of a result's table: `rows_of(None)` for a single result (`members` is
    `None`), or every member's `rows_of(i)` behind a leading `member` column."""
    if members is None:
        return frame(rows_of(None), columns)
    rows = [{"member": i, **row} for i in range(members) for row in rows_of(i)]
    return frame(rows, ["member", *columns])


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


# ---------------------------------------------------------------------- tables in


def table_columns(table: Any, wanted: Sequence[tuple[Any, str, str]]) -> list[np.ndarray]:
    """The 1-D columns `wanted` of `table` (a pandas DataFrame or a mapping of column names to
    arrays), all of one length: `wanted` holds `(name, what it is, hint)`, and a missing
    column is named with what it is, the table's columns and the hint."""
    try:
        present = list(table.keys())
    except AttributeError as err:
        raise MetaplasticError(
            "from_table() needs a pandas DataFrame or a mapping of column names to 1-D arrays, "
            f"got {type(table).__name__}."
        ) from err
    out = []
    for name, what, hint in wanted:
        if name not in present:
            raise MetaplasticError(
                f"table: no column {name!r} ({what}); the table has columns {present}.{hint}"
            )
        values = np.asarray(table[name])
        if values.ndim != 1:
            raise MetaplasticError(f"table: column {name!r} must be 1-D, got shape {values.shape}.")
        out.append(values)
    lengths = {name: len(v) for (name, _, _), v in zip(wanted, out)}
    if len(set(lengths.values())) > 1:
        raise MetaplasticError(f"table: columns of different lengths {lengths}.")
    return out


def numbers(
    values: np.ndarray, name: Any, what: str = "", at: Callable[[int], str] = str
) -> np.ndarray:
    """The column `values` as float64, or a `MetaplasticError` naming the first value that
    is not a number (`what`: what the column is; `at(row)`: where that row is)."""
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError) as err:
        items = values.tolist()
        row = next((k for k, v in enumerate(items) if not _is_number(v)), 0)
        kind = f" ({what})" if what else ""
        raise MetaplasticError(
            f"table: column {name!r}{kind} must be numeric, got dtype {values.dtype}: "
            f"{items[row]!r} at row {at(row)}."
        ) from err


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
