"""Recorded trajectories from NWB files: an input time series and a recorded one (any
`TimeSeries`, e.g. a `RoiResponseSeries` of `Fluorescence` or `DfOverF`) or the units' spike
times binned into counts (`from_nwb`). Needs pynwb (the optional extra `nwb`)."""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import PyTree

from .._errors import MetaplasticError, require, validates_input
from ._activity import ActivityDataset
from ._recording import RecordingDataset
from ._table import check_initial, dataset_of, spike_counts


def _series(nwb: Any, name: str, path: Any, what: str) -> Any:
    pynwb = require("pynwb", "nwb", "Reading NWB files")
    found = [o for o in nwb.objects.values() if o.name == name]
    series = [o for o in found if isinstance(o, pynwb.TimeSeries)]
    if not series:
        names = sorted(o.name for o in nwb.objects.values() if isinstance(o, pynwb.TimeSeries))
        raise MetaplasticError(
            f"{path}: no time series named {name!r} ({what}); the file's time series are {names}."
        )
    return series[0]


def _values(series: Any, path: Any) -> tuple[np.ndarray, np.ndarray]:
    """The series' samples `(T, channels)` and their times `(T,)`."""
    data = np.asarray(series.data[:], np.float64)
    data = data[:, None] if data.ndim == 1 else data.reshape(data.shape[0], -1)
    if series.timestamps is not None:
        times = np.asarray(series.timestamps[:], np.float64)
    else:
        times = series.starting_time + np.arange(len(data)) / series.rate
    if len(data) == 0:
        raise MetaplasticError(f"{path}: the time series {series.name!r} is empty.")
    return data, times


@validates_input
def from_nwb(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    inputs: str,
    recorded: str,
    initial_weights: Any = None,
    initial_state: PyTree = None,
    reward: str | None = None,
) -> ActivityDataset | RecordingDataset:
    """Recorded trajectories from NWB files, one trajectory per file.

    **Arguments:**

    - `path`: an `.nwb` file, a folder (every `*.nwb` in it, in natural order), or a
      sequence of files. Files from the DANDI archive are read the same way once downloaded
      (`dandi download DANDI:<dandiset>/<version>`).
    - `inputs`: the name of the time series that drives the network (in the file's stimulus,
      acquisition or a processing module), `(T, n_in)`.
    - `recorded`: the name of the recorded time series, `(T, n_out)` — any `TimeSeries`,
      e.g. the `RoiResponseSeries` of a `Fluorescence` or `DfOverF` — sampled at the
      inputs' times; or `"units"`: the spike times of the file's units, counted in the bins
      that start at the inputs' times (a count per unit and step, for a `PoissonHead`).
    - `initial_weights` / `initial_state`: exactly one, as in `mp.data.from_table`.
    - `reward`: the name of a time series of the reward signal, if any, `(T,)`.

    **Returns:** an `ActivityDataset` or a `RecordingDataset`, files in order; trajectories
    of different lengths are padded and masked.

    Raises `MetaplasticError` naming the file for one that is not an NWB file, a missing
    series or units table, a recorded series not sampled at the inputs' times, and NaN in
    the inputs (a recorded channel that is NaN throughout is an unrecorded neuron).
    """
    pynwb = require("pynwb", "nwb", "Reading NWB files")
    from ..flies._loader import recording_files

    check_initial(initial_weights, initial_state, "from_nwb")
    trajectories = []
    for f in recording_files(path, ".nwb", "from_nwb"):
        try:
            io = pynwb.NWBHDF5IO(str(f), "r")
            nwb = io.read()
        except Exception as err:
            raise MetaplasticError(
                f"{f}: is not a readable NWB file ({type(err).__name__}: {err})."
            ) from err
        try:
            x, times = _values(_series(nwb, inputs, f, "the inputs"), f)
            if np.isnan(x).any():
                k, j = np.argwhere(np.isnan(x))[0]
                raise MetaplasticError(f"{f}: the inputs {inputs!r} are NaN at sample {k}, {j}.")
            if recorded == "units":
                if nwb.units is None:
                    raise MetaplasticError(f"{f}: the file has no units table (recorded='units').")
                step = np.median(np.diff(times)) if len(times) > 1 else 1.0
                spikes = nwb.units["spike_times"]
                y = spike_counts([spikes[u] for u in range(len(nwb.units))], times, step)
            else:
                y, y_times = _values(_series(nwb, recorded, f, "the recording"), f)
                if len(y_times) != len(times) or not np.allclose(y_times, times):
                    raise MetaplasticError(
                        f"{f}: the recording {recorded!r} has {len(y_times)} samples from "
                        f"{y_times[0]:g} s, the inputs {inputs!r} {len(times)} from "
                        f"{times[0]:g} s; resample them onto one time base first."
                    )
            r = None
            if reward is not None:
                r, r_times = _values(_series(nwb, reward, f, "the reward"), f)
                if r.shape[1] != 1 or len(r_times) != len(times):
                    raise MetaplasticError(
                        f"{f}: the reward {reward!r} must be one value per input sample, got "
                        f"shape {r.shape}."
                    )
                r = r[:, 0]
        finally:
            io.close()
        trajectories.append((x, y, r))
    shapes = {(t[0].shape[1], t[1].shape[1]) for t in trajectories}
    if len(shapes) != 1:
        raise MetaplasticError(
            f"the files' (inputs, recorded) channel counts differ: {sorted(shapes)}."
        )
    return dataset_of(trajectories, initial_weights, initial_state)
