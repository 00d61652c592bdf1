"""Recorded trajectories from pynapple objects: an input `Tsd`/`TsdFrame`, a recorded one
(or a `TsGroup` of spike trains, counted per step) and an `IntervalSet` whose epochs are the
trajectories (`from_pynapple`). Needs pynapple (the optional extra `pynapple`)."""

from typing import Any

import numpy as np
from jaxtyping import PyTree

from .._errors import MetaplasticError, require, validates_input
from ._activity import ActivityDataset
from ._recording import RecordingDataset
from ._table import check_initial, dataset_of, recording_gap, spike_counts


# Two series share a time base when their times agree to this fraction of the inputs' step
# (pynapple itself rounds times to a nanosecond, so times computed two ways may differ a bit).
_TIME_TOLERANCE = 1e-3


def _series(nap: Any, series: Any, what: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The times `(T,)`, samples `(T, channels)` (float64) and channel names of a `Tsd` or
    `TsdFrame`."""
    if isinstance(series, nap.TsdFrame):
        names = [str(c) for c in series.columns]
    elif isinstance(series, nap.Tsd):
        names = [what]
    else:
        raise MetaplasticError(
            f"from_pynapple(): {what} must be a pynapple Tsd or TsdFrame, got "
            f"{type(series).__name__}."
        )
    values = np.asarray(series.values)
    if values.dtype.kind not in "biuf":
        raise MetaplasticError(
            f"from_pynapple(): {what} must hold numbers, got dtype {values.dtype}."
        )
    values = values.astype(np.float64).reshape(len(values), -1)
    return np.asarray(series.t, np.float64), values, names


def _where(k: int, start: float, end: float) -> str:
    return f"epoch {k} ({start:g} to {end:g} s)"


def _on_time_base(
    t: np.ndarray, x_times: np.ndarray, tolerance: float, what: str, where: str
) -> None:
    if len(t) != len(x_times) or not np.allclose(t, x_times, rtol=0.0, atol=tolerance):
        span = f" from {t[0]:g} to {t[-1]:g} s" if len(t) else ""
        raise MetaplasticError(
            f"from_pynapple(): {where}: {what} has {len(t)} samples{span}, the inputs "
            f"{len(x_times)} from {x_times[0]:g} to {x_times[-1]:g} s; they need one time base: "
            f"resample {what} at the inputs' times first (e.g. its .interpolate(inputs))."
        )


@validates_input
def from_pynapple(
    inputs: Any,
    recorded: Any,
    *,
    epochs: Any = None,
    initial_weights: Any = None,
    initial_state: PyTree = None,
    reward: Any = None,
) -> ActivityDataset | RecordingDataset:
    """Recorded trajectories from pynapple objects, one trajectory per epoch.

    **Arguments:**

    - `inputs`: what drives the network, a `TsdFrame` `(T, n_in)` (or a `Tsd`: one input).
    - `recorded`: the recorded neurons, a `TsdFrame` `(T, n_out)` (or a `Tsd`: one neuron)
      sampled at the inputs' times; or a `TsGroup` of spike trains, whose spikes are counted
      in the bins that start at the inputs' times (the last bin as long as the inputs'
      median step): a count per unit and step, for a `PoissonHead`. A channel that is NaN
      throughout an epoch was not recorded in it (`neuron_mask`).
    - `epochs`: an `IntervalSet`, one trajectory per interval (a step is a sample of the
      inputs with `start <= t <= end`, as pynapple's `restrict`); default: the inputs'
      `time_support`. Samples outside the epochs are not used.
    - `initial_weights` / `initial_state`: exactly one, as in `mp.data.from_table`.
    - `reward`: the reward signal, a `Tsd` (or one-column `TsdFrame`) at the inputs' times.

    **Returns:** an `ActivityDataset` or a `RecordingDataset`, epochs in order of time;
    trajectories of different lengths are padded and masked.

    Raises `MetaplasticError` naming the object and the epoch for an object that is not a
    pynapple time series, an epoch without any sample of the inputs, a recording or reward
    not sampled at the inputs' times, NaN in the inputs or the reward, and a NaN in a
    channel that is recorded at other steps of the epoch.
    """
    nap = require("pynapple", "pynapple", "Reading pynapple objects")
    check_initial(initial_weights, initial_state, "from_pynapple")
    x_times, x, x_names = _series(nap, inputs, "the inputs")
    units = isinstance(recorded, nap.TsGroup)
    if units:
        unit_names = [str(u) for u in recorded.keys()]
        if not unit_names:
            raise MetaplasticError("from_pynapple(): the recorded TsGroup has no unit.")
        trains = [np.asarray(recorded[u].t, np.float64) for u in recorded.keys()]
    else:
        y_times, y, y_names = _series(nap, recorded, "the recording")
    if reward is not None:
        r_times, r, _ = _series(nap, reward, "the reward")
        if r.shape[1] != 1:
            raise MetaplasticError(
                f"from_pynapple(): the reward must be one value per step, got {r.shape[1]} columns."
            )
    if epochs is None:
        epochs = inputs.time_support
    elif not isinstance(epochs, nap.IntervalSet):
        raise MetaplasticError(
            f"from_pynapple(): epochs must be a pynapple IntervalSet, got {type(epochs).__name__}."
        )
    if len(epochs) == 0:
        raise MetaplasticError("from_pynapple(): epochs is an empty IntervalSet (no epoch).")
    step = float(np.median(np.diff(x_times))) if len(x_times) > 1 else 1.0
    tolerance = _TIME_TOLERANCE * step

    trajectories = []
    for k, (start, end) in enumerate(zip(np.asarray(epochs.start), np.asarray(epochs.end))):
        where = _where(k, start, end)
        inside = (x_times >= start) & (x_times <= end)
        if not inside.any():
            span = f"{x_times[0]:g} to {x_times[-1]:g} s" if len(x_times) else "nowhere"
            raise MetaplasticError(
                f"from_pynapple(): {where} holds no sample of the inputs (they run {span})."
            )
        times, xi = x_times[inside], x[inside]
        if np.isnan(xi).any():
            s, j = np.argwhere(np.isnan(xi))[0]
            raise MetaplasticError(
                f"from_pynapple(): {where}: the inputs ({x_names[j]!r}) are NaN at "
                f"{times[s]:g} s; every step needs them."
            )
        if units:
            yi = spike_counts(trains, times, step)
        else:
            in_y = (y_times >= start) & (y_times <= end)
            _on_time_base(y_times[in_y], times, tolerance, "the recording", where)
            yi = y[in_y]
            gap = recording_gap(yi)
            if gap is not None:
                s, j = gap
                raise MetaplasticError(
                    f"from_pynapple(): {where}: the recording ({y_names[j]!r}) is NaN at "
                    f"{times[s]:g} s but recorded at other steps; a neuron is either recorded "
                    "at every step of an epoch or NaN throughout it."
                )
        ri = None
        if reward is not None:
            in_r = (r_times >= start) & (r_times <= end)
            _on_time_base(r_times[in_r], times, tolerance, "the reward", where)
            ri = r[in_r, 0]
            if np.isnan(ri).any():
                s = np.nonzero(np.isnan(ri))[0][0]
                raise MetaplasticError(
                    f"from_pynapple(): {where}: the reward is NaN at {times[s]:g} s; every "
                    "step needs it."
                )
        trajectories.append((xi, yi, ri))
    return dataset_of(trajectories, initial_weights, initial_state)
