"""Loader for the Drosophila operant-learning recordings (one MATLAB file per fly).

Each `.mat` file holds three variables:

- `X`, `(P, 2)`: one-hot odour identity of each odour *presentation* (column 0 = odour A,
  column 1 = odour B);
- `Y`, `(1, P)`: 1 = the fly accepted the presentation, 0 = it rejected it;
- `R`, `(1, T)`: the reward (0/1) of each acceptance, so `T == sum(Y)`.

A *trial* is a run of rejections ended by one acceptance: presentation `i` belongs to trial
`sum(Y[:i])`. Presentations after the last acceptance (a run of rejections with no acceptance
to end it) form one final, *incomplete* trial: it is kept as a valid trial with no accepted
presentation and reward 0, so its rejections still count in a likelihood, and it is reported
in `FlyInfo.trailing_rejections`. Nothing in the file is dropped.

Blocks are not stored in the files; trial `t` (0-based) is given the block `t // block_size`
(`block_size = 80` by default, so blocks start at trials 80 and 160). For flies with fewer than
240 trials this makes the last block the short one, which is an assumption.

`FlyInfo` counts rejections per block so that the limits of a recording stay visible: in the
published per-fly conversion, rejections were reconstructed for the first block only, and for
most flies with rejections the only ones past block 1 form a single run just before the first
acceptance of block 2 (its first trial), which `trials_with_rejections_per_block` shows as 1.
"""

import math
import os
import pathlib
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._errors import MetaplasticError, require, validates_input
from ..behaviour import ChoiceDataset, expected_reward
from ._records import DrosophilaData, FlyInfo


def _scipy_io():
    return require("scipy.io", "data", "Reading the flies' .mat files")


def _natural_key(path: pathlib.Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


def _vector(path: pathlib.Path, name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 2 and 1 in value.shape:
        return value.reshape(-1)
    if value.ndim == 1:
        return value
    raise MetaplasticError(
        f"{path}: variable {name!r} must be a row or column vector, got shape {value.shape}."
    )


def _binary(path: pathlib.Path, name: str, value: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(value)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MetaplasticError(
            f"{path}: variable {name!r} holds a non-finite value ({value[where]}) at index {where}."
        )
    bad = ~np.isin(value, (0, 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MetaplasticError(
            f"{path}: variable {name!r} must hold only 0 and 1, found {value[where]} at index "
            f"{where}."
        )
    return value.astype(np.int64)


# MAT 5 data types: their item sizes (bytes); 14 = miMATRIX, 15 = miCOMPRESSED.
_MAT5_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_MAT5_NUMERIC_CLASSES = range(6, 16)  # double, single, int8 ... uint64 (logical is uint8)


def _mat5_elements(path: pathlib.Path, buf: bytes, endian: str, what: str):
    """Yield `(type, payload)` for the data elements packed in `buf`, or raise naming `path`
    if an element runs past the end of `buf`."""
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < 8:
            raise MetaplasticError(f"{path}: is not a readable MAT file ({what} is truncated).")
        first, second = struct.unpack_from(endian + "II", buf, pos)
        if first >> 16:  # the small data element format: type, size and data in 8 bytes
            kind, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise MetaplasticError(f"{path}: is not a readable MAT file ({what} is corrupt).")
            yield kind, buf[pos + 4 : pos + 4 + size]
            pos += 8
            continue
        start, end = pos + 8, pos + 8 + second
        if end > len(buf):
            raise MetaplasticError(
                f"{path}: is not a readable MAT file ({what} is truncated: an element of "
                f"{second} bytes at byte {pos} runs past the end)."
            )
        yield first, buf[start:end]
        pos = end if first == 15 else start + 8 * math.ceil(second / 8)


def _check_mat5(path: pathlib.Path, names: tuple[str, ...]) -> list[str] | None:
    """Check the structure of a MAT 5 file before scipy reads it, and return the names of its
    variables (`None` for other versions, which scipy checks).

    scipy trusts the array dimensions written in a file: a corrupted dimension (one flipped
    bit) can crash the Python process instead of raising. Here each of the variables `names`
    must be a numeric array whose stored data has exactly as many items as its dimensions
    say; anything else is a `MetaplasticError` naming the file and the variable."""
    raw = path.read_bytes()
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI") or 0 in raw[:4]:
        return None
    endian = "<" if raw[126:128] == b"IM" else ">"
    if struct.unpack_from(endian + "H", raw, 124)[0] != 0x0100:
        return None  # version 7.3 (HDF5): scipy refuses it with a clear message
    found = []
    for kind, payload in _mat5_elements(path, raw[128:], endian, "the file"):
        if kind == 15:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as e:
                raise MetaplasticError(
                    f"{path}: is not a readable MAT file (a compressed variable is corrupt: {e})."
                ) from None
            elements = list(_mat5_elements(path, payload, endian, "a compressed variable"))
            if len(elements) != 1:
                raise MetaplasticError(
                    f"{path}: is not a readable MAT file (a compressed variable is corrupt)."
                )
            kind, payload = elements[0]
        if kind != 14:
            continue
        parts = list(_mat5_elements(path, payload, endian, "a variable"))
        if len(parts) < 3 or len(parts[0][1]) < 4 or parts[1][0] != 5 or parts[2][0] != 1:
            raise MetaplasticError(f"{path}: is not a readable MAT file (a variable is corrupt).")
        flags = struct.unpack_from(endian + "I", parts[0][1])[0]
        dims = struct.unpack(
            f"{endian}{len(parts[1][1]) // 4}i", parts[1][1][: len(parts[1][1]) // 4 * 4]
        )
        name = parts[2][1].decode("latin-1")
        found.append(name)
        if name not in names:
            continue
        if flags & 0xFF not in _MAT5_NUMERIC_CLASSES:
            raise MetaplasticError(
                f"{path}: variable {name!r} must be numeric, got MATLAB class number "
                f"{flags & 0xFF} (cell, struct, char or sparse)."
            )
        n_parts = 5 if flags & 0x800 else 4  # flags, dims, name, real (and imaginary) part
        if len(dims) < 2 or min(dims) < 0 or len(parts) != n_parts:
            raise MetaplasticError(
                f"{path}: is not a readable MAT file (variable {name!r} is corrupt: dimensions "
                f"{dims}, {len(parts)} parts)."
            )
        for kind, data in parts[3:]:
            if kind not in _MAT5_ITEMSIZE or len(data) != math.prod(dims) * _MAT5_ITEMSIZE[kind]:
                raise MetaplasticError(
                    f"{path}: is not a readable MAT file (variable {name!r} is corrupt: its "
                    f"dimensions {dims} do not match the {len(data)} bytes of data stored)."
                )
    return found


def _read_fly(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check one file; returns the odour (0/1) and choice (0/1) of each presentation
    and the reward of each acceptance."""
    sio = _scipy_io()
    present = _check_mat5(path, ("X", "Y", "R"))
    try:
        # Only the three variables are read: nothing else in the file can stop the loader.
        mat = sio.loadmat(str(path), variable_names=("X", "Y", "R"))
    except NotImplementedError as e:
        # scipy reads MAT versions 4 to 7.2; 7.3 files are HDF5.
        raise MetaplasticError(
            f"{path}: cannot be read ({e}); save it as a MAT file of version 7.2 or lower."
        ) from e
    except Exception as e:
        raise MetaplasticError(
            f"{path}: is not a readable MAT file ({type(e).__name__}: {e})."
        ) from e
    values = {}
    for name in ("X", "Y", "R"):
        if name not in mat:
            if present is None:
                present = [k for k in mat if not k.startswith("__")]
            present = sorted(set(present))
            raise MetaplasticError(
                f"{path}: missing variable {name!r} (the file holds {present}); expected X "
                "(presentations x 2), Y (1 x presentations) and R (1 x trials)."
            )
        value = np.asarray(mat[name])
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise MetaplasticError(
                f"{path}: variable {name!r} must be numeric, got dtype {value.dtype}."
            )
        if np.iscomplexobj(value):
            raise MetaplasticError(f"{path}: variable {name!r} must be real, got complex values.")
        values[name] = value
    x, y, r = values["X"], values["Y"], values["R"]
    y = _vector(path, "Y", y)
    r = _vector(path, "R", r) if r.size > 0 else r.reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2:
        raise MetaplasticError(
            f"{path}: variable 'X' must have shape (presentations, 2) (one-hot odour A/B), got "
            f"{x.shape}."
        )
    if x.shape[0] != y.shape[0]:
        raise MetaplasticError(
            f"{path}: X has {x.shape[0]} presentations (rows) but Y has {y.shape[0]}."
        )
    if y.shape[0] == 0:
        raise MetaplasticError(f"{path}: holds no presentation (X and Y are empty).")
    x = _binary(path, "X", x)
    y = _binary(path, "Y", y)
    r = _binary(path, "R", r)
    not_one_hot = x.sum(axis=1) != 1
    if not_one_hot.any():
        i = int(np.argmax(not_one_hot))
        raise MetaplasticError(
            f"{path}: row {i} of X is {x[i].tolist()}, not one-hot (exactly one odour per "
            "presentation)."
        )
    if int(y.sum()) != r.shape[0]:
        raise MetaplasticError(
            f"{path}: sum(Y) = {int(y.sum())} acceptances but len(R) = {r.shape[0]} rewards; "
            "there must be one reward per acceptance."
        )
    if r.shape[0] == 0:
        raise MetaplasticError(f"{path}: holds no acceptance (Y is all 0), so no trial.")
    return np.argmax(x, axis=1), y, r


def recording_files(
    path: str | os.PathLike | Sequence, suffix: str, caller: str
) -> list[pathlib.Path]:
    """The files `path` names: itself, every `*<suffix>` file of a folder (in natural order,
    hidden files left out), or a sequence of files in the order given."""
    if isinstance(path, str | os.PathLike):
        p = pathlib.Path(path)
        if p.is_dir():
            files = sorted(
                (f for f in p.glob(f"*{suffix}") if f.is_file() and not f.name.startswith(".")),
                key=_natural_key,
            )
            if not files:
                raise MetaplasticError(f"{p}: the folder holds no {suffix} file.")
            return files
        if p.is_file():
            return [p]
        raise MetaplasticError(f"{p}: no such file or folder.")
    files = [pathlib.Path(f) for f in path]
    if not files:
        raise MetaplasticError(f"{caller}() got an empty list of files.")
    for f in files:
        if not f.is_file():
            raise MetaplasticError(f"{f}: no such file.")
    return files


def load_drosophila(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    window: int = 10,
    block_size: int = 80,
) -> DrosophilaData:
    """Load the Drosophila operant-learning recordings: one fly per `.mat` file.

    Each file holds `X` `(P, 2)` (one-hot odour of each presentation), `Y` `(1, P)` (1 =
    accepted) and `R` `(1, sum(Y))` (reward of each acceptance). A trial is a run of
    rejections ended by one acceptance; rejections after the last acceptance become one final
    trial without acceptance and with reward 0 (kept, and counted in
    `FlyInfo.trailing_rejections`). Needs scipy.

    **Arguments:**

    - `path`: a `.mat` file, a folder (every `*.mat` in it, in natural order: Fly1, Fly2, ...,
      Fly10), or a sequence of files (in the order given).
    - `window`: the number of past rewards averaged into the reward expectation
      (`expected_reward`).
    - `block_size`: trials per block; trial `t` lies in block `t // block_size`.

    **Returns:**

    A `DrosophilaData`: `dataset` (a `ChoiceDataset`, batch = flies, padded over trials and
    presentations, `inputs=None`), `block` `(flies, trials)` and `flies` (one `FlyInfo` each).

    Raises `MetaplasticError`, naming the file, for a path that does not exist, a folder with
    no `.mat` file, a file that is not a MAT file, a missing variable, wrong shapes, values
    other than 0 and 1, NaN, a row of `X` that is not one-hot, or `sum(Y) != len(R)`.
    """
    check_blocks(window, block_size)
    files = recording_files(path, ".mat", "load_drosophila")
    recordings = [(f.stem, str(f), *_read_fly(f)) for f in files]
    return assemble_flies(recordings, window=window, block_size=block_size)


def check_blocks(window: Any, block_size: Any) -> None:
    """The options every reader of fly recordings takes: positive integers."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise MetaplasticError(f"block_size must be a positive integer, got {block_size!r}.")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise MetaplasticError(f"window must be a positive integer, got {window!r}.")


def assemble_flies(
    recordings: Sequence[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
    *,
    window: int,
    block_size: int,
) -> DrosophilaData:
    """`DrosophilaData` from checked recordings `(name, source, odour, choice, reward)`: the
    odour (0/1) and choice (1 = accepted) of each presentation in order, and the reward of
    each acceptance."""
    flies = []
    infos = []
    for name, source, odour, choice, reward in recordings:
        # Presentation i lies in trial (number of acceptances before i).
        trial = np.cumsum(choice) - choice
        n_trials = int(trial[-1]) + 1
        trailing = 0 if choice[-1] == 1 else int(len(choice) - 1 - np.nonzero(choice)[0][-1])
        lengths = np.bincount(trial, minlength=n_trials)
        n_blocks = math.ceil(n_trials / block_size)
        rejected = choice == 0
        blk = trial // block_size
        rej_per_block = np.bincount(blk[rejected], minlength=n_blocks)
        trials_rej = np.bincount(np.unique(trial[rejected]) // block_size, minlength=n_blocks)
        rewards = np.zeros(n_trials, np.int64)
        rewards[: len(reward)] = reward
        flies.append((odour, choice, trial, lengths, rewards))
        infos.append(
            FlyInfo(
                name=name,
                path=source,
                n_presentations=int(len(choice)),
                n_trials=n_trials,
                n_accepted=int(len(reward)),
                n_rejections=int(rejected.sum()),
                n_rewards=int(reward.sum()),
                trailing_rejections=trailing,
                max_presentations=int(lengths.max()),
                n_blocks=n_blocks,
                rejections_per_block=tuple(int(v) for v in rej_per_block),
                trials_with_rejections_per_block=tuple(int(v) for v in trials_rej),
                accept_only_blocks=int((rej_per_block == 0).sum()),
                accept_only=bool(not rejected.any()),
            )
        )
    b = len(flies)
    t_max = max(info.n_trials for info in infos)
    p_max = max(info.max_presentations for info in infos)
    odours = np.zeros((b, t_max, p_max), np.int32)
    choices = np.zeros((b, t_max, p_max))
    pmask = np.zeros((b, t_max, p_max), bool)
    tmask = np.zeros((b, t_max), bool)
    rewards = np.zeros((b, t_max))
    block = np.full((b, t_max), -1, np.int32)
    for i, (odour, choice, trial, lengths, rew) in enumerate(flies):
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        position = np.arange(len(trial)) - starts[trial]
        odours[i, trial, position] = odour
        choices[i, trial, position] = choice
        pmask[i, trial, position] = True
        n = len(lengths)
        tmask[i, :n] = True
        rewards[i, :n] = rew
        block[i, :n] = np.arange(n) // block_size
    # Padding is at the end of each fly's trials, so it never enters an earlier expectation.
    expected = np.asarray(expected_reward(rewards, window=window))
    dataset = ChoiceDataset(
        odours=odours,
        choices=choices,
        presentation_mask=pmask,
        trial_mask=tmask,
        rewards=rewards,
        expected_rewards=expected,
    )
    return DrosophilaData(
        dataset=dataset,
        block=jnp.asarray(block),
        flies=tuple(infos),
        block_size=block_size,
        window=window,
    )


@validates_input
def save_drosophila(
    data: ChoiceDataset,
    folder: str | os.PathLike,
    *,
    first: int = 1,
    accepted_only_from: int | None = None,
) -> list[pathlib.Path]:
    """Write choice trajectories (e.g. simulated flies, `metaplastic.behaviour.
    generate_behaviour(...).data`) as `.mat` files in the format of the recordings that
    `load_drosophila` reads: per presentation the odour one-hot `X` (`[1, 0]` = odour A) and
    the choice `Y`, and the reward `R` of every accepted presentation. Each file is written
    atomically.

    **Arguments:**

    - `data`: a `ChoiceDataset`; each trajectory of its batch becomes one fly.
    - `folder`: an existing folder; the files are `Fly{first}.mat`, `Fly{first + 1}.mat`, ...
    - `first`: the number of the first fly.
    - `accepted_only_from`: from this trial on, keep the accepted presentations only (as the
      shared conversion of the real recordings does after block 1); `None` keeps every
      presentation.

    **Returns:**

    The paths written, in batch order.
    """
    import io

    from .._io import atomic_write_bytes

    if not isinstance(data, ChoiceDataset):
        raise MetaplasticError(f"data must be a ChoiceDataset, got {type(data).__name__}.")
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise MetaplasticError(f"{folder} is not a folder.")
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise MetaplasticError(f"first must be a non-negative integer, got {first!r}.")
    if accepted_only_from is not None and (
        isinstance(accepted_only_from, bool)
        or not isinstance(accepted_only_from, int)
        or accepted_only_from < 0
    ):
        raise MetaplasticError(
            f"accepted_only_from must be None or a trial index >= 0, got {accepted_only_from!r}."
        )
    sio = _scipy_io()
    odours, choices = np.asarray(data.odours), np.asarray(data.choices)
    shown, trials = np.asarray(data.presentation_mask), np.asarray(data.trial_mask)
    rewards = np.asarray(data.rewards)
    paths = []
    for b in range(odours.shape[0]):
        x, y, r = [], [], []
        for t in np.flatnonzero(trials[b]):
            for p in np.flatnonzero(shown[b, t]):
                accepted = choices[b, t, p] == 1
                if accepted_only_from is not None and t >= accepted_only_from and not accepted:
                    continue
                x.append([1 - odours[b, t, p], odours[b, t, p]])
                y.append(choices[b, t, p])
                if accepted:
                    r.append(rewards[b, t])
        buffer = io.BytesIO()
        sio.savemat(buffer, {"X": np.array(x), "Y": np.array(y)[None], "R": np.array(r)[None]})
        path = folder / f"Fly{first + b}.mat"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
