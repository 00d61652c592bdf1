"""Recorded trajectories from a table: one row per (trajectory, time step), one column per
input and per recorded neuron (`from_table`)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import PyTree

from .._errors import MetaplasticError, validates_input
from .._frames import numbers, table_columns
from ._activity import ActivityDataset
from ._recording import RecordingDataset


@validates_input
def from_table(
    table: Any,
    *,
    inputs: Sequence[Any],
    recorded: Sequence[Any],
    initial_weights: Any = None,
    initial_state: PyTree = None,
    trajectory: Any = "trajectory",
    time: Any = "time",
    reward: Any = None,
) -> ActivityDataset | RecordingDataset:
    """Recorded trajectories from a wide table: one row per (trajectory, time step), one
    column per input of the network and one per recorded neuron, e.g. a pandas DataFrame:

    | trajectory | time | x0 | x1 | n0 | n1 |
    |---|---|---|---|---|---|
    | 0 | 0 | 0.1 | −0.3 | 0.52 | 0.47 |
    | 0 | 1 | 0.4 | 0.2 | 0.55 | 0.44 |

    Trajectories may have different lengths (they are padded and masked); a neuron left
    empty (NaN) for a whole trajectory was not recorded in it (`neuron_mask`).

    **Arguments:**

    - `table`: a pandas DataFrame, or a mapping of column names to 1-D arrays (plain NumPy).
    - `inputs`, `recorded`: the columns of the inputs and of the recorded neurons, in the
      order of the network's inputs and outputs.
    - `initial_weights` (an `ActivityDataset`, `(n_out, n_in)` or one per trajectory) or
      `initial_state` (a `RecordingDataset` for any network: its `init_state` PyTree with a
      leading trajectory axis): exactly one.
    - `trajectory`, `time`: the columns naming the trajectory (any labels; trajectories keep
      the order of their first row) and numbering the steps (increasing within a
      trajectory; rows may come in any order).
    - `reward`: the column of the reward signal per step, if any.

    **Returns:**

    An `ActivityDataset` (with `initial_weights`) or a `RecordingDataset` (with
    `initial_state`), trajectories in the order of their first row. No row is dropped.

    Raises `MetaplasticError` naming the column, row and trajectory for a missing column,
    an empty table, a non-numeric value, a repeated time step, or a NaN other than a whole
    unrecorded neuron (and the datasets' own checks on shapes and initial state).
    """
    check_initial(initial_weights, initial_state, "from_table")
    inputs, recorded = list(inputs), list(recorded)
    if not inputs or not recorded:
        raise MetaplasticError("from_table() needs at least one input and one recorded column.")
    wanted = [(trajectory, "trajectory"), (time, "time")]
    wanted += [(c, "an input") for c in inputs] + [(c, "a recorded neuron") for c in recorded]
    if reward is not None:
        wanted.append((reward, "the reward"))
    columns = table_columns(table, [(name, what, "") for name, what in wanted])
    labels = columns[0]
    if len(labels) == 0:
        raise MetaplasticError("table: the table is empty (no time step).")
    steps, *rest = (numbers(v, name, what) for v, (name, what) in zip(columns[1:], wanted[1:]))
    x = np.stack(rest[: len(inputs)], axis=-1)
    y = np.stack(rest[len(inputs) : len(inputs) + len(recorded)], axis=-1)
    r = rest[-1] if reward is not None else None

    order = list(dict.fromkeys(labels.tolist()))
    trajectories = []
    for label in order:
        rows = np.nonzero(labels == label)[0]
        rows = rows[np.argsort(steps[rows], kind="stable")]
        if np.isnan(steps[rows]).any():
            bad = rows[np.isnan(steps[rows])][0]
            raise MetaplasticError(
                f"table: column {time!r} is empty/NaN at row {bad} (trajectory {label!r})."
            )
        repeated = np.nonzero(np.diff(steps[rows]) == 0)[0]
        if repeated.size:
            bad = rows[repeated[0] + 1]
            raise MetaplasticError(
                f"table: time step {steps[bad]:g} of trajectory {label!r} appears twice "
                f"(rows {rows[repeated[0]]} and {bad})."
            )
        for what, values, names in (("an input", x, inputs), ("the reward", r, [reward])):
            if values is None:
                continue
            v = values[rows].reshape(len(rows), -1)
            if np.isnan(v).any():
                k, j = np.argwhere(np.isnan(v))[0]
                raise MetaplasticError(
                    f"table: column {names[j]!r} ({what}) is empty/NaN at row {rows[k]} "
                    f"(trajectory {label!r}); every step needs it."
                )
        rec = y[rows]
        gap = recording_gap(rec)
        if gap is not None:
            k, j = gap
            raise MetaplasticError(
                f"table: column {recorded[j]!r} is empty/NaN at row {rows[k]} (trajectory "
                f"{label!r}) but recorded at other steps; a neuron is either recorded at "
                "every step of a trajectory or left empty for all of it."
            )
        trajectories.append((x[rows], rec, None if r is None else r[rows]))
    return dataset_of(trajectories, initial_weights, initial_state)


def recording_gap(recorded: np.ndarray) -> tuple[int, int] | None:
    """The first `(step, neuron)` at which a neuron that is recorded at other steps of a
    trajectory `(steps, neurons)` is NaN, or `None`: a neuron is either recorded at every
    step of a trajectory or NaN throughout it (then unrecorded there)."""
    missing = np.isnan(recorded)
    gaps = missing & ~missing.all(axis=0)[None, :]
    if not gaps.any():
        return None
    step, neuron = np.argwhere(gaps)[0]
    return int(step), int(neuron)


def check_initial(initial_weights: Any, initial_state: PyTree, caller: str) -> None:
    """Exactly one of the two: the dataset a reader builds depends on which is given."""
    if (initial_weights is None) == (initial_state is None):
        raise MetaplasticError(
            f"{caller}() needs exactly one of initial_weights= (an ActivityDataset) and "
            "initial_state= (a RecordingDataset)."
        )


def spike_counts(trains: Sequence[np.ndarray], times: np.ndarray, step: float) -> np.ndarray:
    """The spikes of each train (spike times, one array per unit) counted in the bins that
    start at `times` (increasing), the last bin `step` long: `(len(times), n_units)`, float64.
    Spikes outside the bins are not counted."""
    edges = np.append(times, times[-1] + step)
    return np.stack(
        [np.histogram(np.asarray(train, np.float64), edges)[0] for train in trains], axis=-1
    ).astype(np.float64)


def dataset_of(
    trajectories: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    initial_weights: Any,
    initial_state: PyTree,
) -> ActivityDataset | RecordingDataset:
    """An `ActivityDataset` (with `initial_weights`) or `RecordingDataset` (with
    `initial_state`) of checked trajectories `(inputs (T, n_in), recorded (T, n_out) with
    NaN for a neuron not recorded in it, rewards (T,) or None)`, padded to the longest."""
    longest = max(len(xi) for xi, _, _ in trajectories)
    b = len(trajectories)
    n_in, n_out = trajectories[0][0].shape[1], trajectories[0][1].shape[1]
    xs = np.zeros((b, longest, n_in))
    ys = np.zeros((b, longest, n_out))
    with_rewards = trajectories[0][2] is not None
    rs = np.zeros((b, longest)) if with_rewards else None
    step_mask = np.zeros((b, longest), bool)
    neuron_mask = np.ones((b, n_out), bool)
    for i, (xi, rec, ri) in enumerate(trajectories):
        t = len(xi)
        missing = np.isnan(rec)
        xs[i, :t] = xi
        ys[i, :t] = np.where(missing, 0.0, rec)
        if with_rewards:
            rs[i, :t] = ri
        step_mask[i, :t] = True
        neuron_mask[i] = ~missing.all(axis=0)
    if initial_weights is not None:
        return ActivityDataset(
            xs,
            ys,
            initial_weights,
            step_mask=step_mask,
            neuron_mask=neuron_mask,
            rewards=rs,
        )
    return RecordingDataset(
        xs, ys, initial_state, step_mask=step_mask, neuron_mask=neuron_mask, rewards=rs
    )
