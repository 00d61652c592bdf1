"""What a fit records and returns — `History`, `FitResult` — and keeps on the host while it
runs: the history buffers and the checkpoint file, written atomically and resumed only when
it matches the fit (`FitRecord`)."""

import logging
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PyTree

from . import _checkpoint as ckpt
from ._errors import CheckpointError, MetaplasticError
from ._frames import frame, history_rows
from ._io import stale_temporaries
from ._multihost import gather, host_array, is_main_process, read_on_main_process
from ._types import Key


logger = logging.getLogger("metaplastic")

#: The name of the checkpoint file inside `checkpoint_dir`.
CHECKPOINT_FILE = "fit.ckpt"


class History(eqx.Module):
    """What happened during a fit, one entry per step.

    - `loss`: the objective (penalties included) on each step's batch, as the solver
      evaluated it — after the step for `LevenbergMarquardt`, which evaluates its candidate
      steps, before it for `Optax` — `(steps,)`, or `(steps, members)` for an ensemble.
    - `params`: the trainable parameters after each step, stacked along a leading step axis
      (a PyTree shaped like the trainable part of the model).
    """

    loss: np.ndarray
    params: PyTree

    def to_dataframe(self) -> Any:
        """The history as a pandas DataFrame (needs pandas): one row per step, and per
        member for an ensemble (`step`, `member`, `loss`, then one column per trainable
        value, named by its path and index, e.g. `.rule.coefficients[1, 1, 0]`)."""
        columns, rows = history_rows(self.loss, self.params)
        return frame(rows, columns)


class FitResult(eqx.Module):
    """The outcome of `fit`.

    - `model`: the fitted model.
    - `history`: the `History` of the fit.
    - `state`: the solver's final state (the optax state, or the Levenberg–Marquardt damping).
    - `n_traces`: how many times this fit traced its step: 1, or 0 when an earlier fit in
      the process had compiled the same program (an equal solver, data of the same shapes,
      the same batch and ensemble layout), which the fit then reuses.
    - `seconds`: the wall time of the fit.
    """

    model: PyTree
    history: History
    state: PyTree
    n_traces: int
    seconds: float


def is_int(value: Any) -> bool:
    """Whether `value` is an integer (numpy included), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def key_data(key: Key) -> np.ndarray:
    """The raw data of a PRNG key, to store it."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return host_array(jr.key_data(key))
    return host_array(key)


def key_from_data(data: np.ndarray, like: Key) -> Key:
    """A PRNG key of the same kind as `like` from stored data."""
    if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jr.wrap_key_data(jnp.asarray(data), impl=jr.key_impl(like))
    return jnp.asarray(data)


class FitRecord:
    """What `fit` keeps on the host while it runs: the history in
    preallocated buffers (so saving and resuming are cheap) and the checkpoint file.

    With several processes (`jax.distributed`) every process keeps the whole history
    (arrays split over processes are gathered) and process 0 alone writes the checkpoint; a
    resumed fit reads it through process 0.

    A checkpoint holds `(model arrays, losses, history, key, extra)`, where `extra` is the
    solver's state (the optax state, or the Levenberg–Marquardt damping)."""

    def __init__(
        self,
        params: PyTree,
        total: int,
        loss_shape: tuple[int, ...],
        loss_dtype: Any,
        checkpoint_dir: str | os.PathLike | None,
        config: dict[str, Any],
        header: dict[str, Any],
    ):
        self.total = total
        self.loss_shape = tuple(loss_shape)
        self.losses = np.zeros((total,) + self.loss_shape, np.dtype(loss_dtype))
        self.params = jax.tree.map(lambda p: np.zeros((total,) + p.shape, p.dtype), params)
        self.leaves = jax.tree.leaves(self.params)
        self.path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
        self.config = config
        self.header = header

    def add_steps(self, i: int, losses: np.ndarray, stacked: PyTree, count: int) -> None:
        """Record the losses and the parameters after steps `i` to `i + count - 1`; `stacked`
        holds the parameters of each step along a leading axis (at least `count` long)."""
        self.losses[i : i + count] = losses[:count]
        for buf, leaf in zip(self.leaves, jax.tree.leaves(stacked)):
            buf[i : i + count] = host_array(leaf)[:count]

    def history(self, done: int) -> History:
        """A copy of the first `done` entries."""
        return History(
            loss=self.losses[:done].copy(),
            params=jax.tree.map(lambda buf: buf[:done].copy(), self.params),
        )

    def state(self, model: PyTree, key: Key, done: int, extra: PyTree) -> tuple:
        """The tree a checkpoint holds after `done` steps."""
        hist = jax.tree.map(lambda buf: buf[:done], self.params)
        arrays = eqx.filter(model, eqx.is_array)
        return (arrays, self.losses[:done], hist, key_data(key), extra)

    def save(
        self,
        model: PyTree,
        key: Key,
        done: int,
        extra: PyTree,
        status: str,
        more: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint (atomically), if the fit has a `checkpoint_dir`. Every process
        calls it (it gathers what is split over processes); process 0 writes the file."""
        if self.path is None:
            return
        state = gather(self.state(model, key, done, extra))
        if not is_main_process():
            return
        header = {
            "step": done,
            "steps": self.total,
            "status": status,
            "config": self.config,
            "loss_shape": list(self.loss_shape),
            "loss_dtype": str(self.losses.dtype),
            **self.header,
            **(more or {}),
        }
        ckpt.write_checkpoint(self.path, state, header)
        logger.debug("checkpoint: %d steps saved to %s (%s)", done, self.path, status)

    def resume(
        self, resume: bool, model: PyTree, key: Key, extra: PyTree
    ) -> tuple[int, dict[str, Any], PyTree, Key, PyTree] | None:
        """Load the checkpoint to continue from, if there is one (and `resume`), into the
        history buffers. `model`, `key` and `extra` are templates of the saved state.

        **Returns:**

        `None` (start afresh) or `(done, header, model arrays, key, extra)`.
        """
        opened = open_checkpoint(self.path, resume, self.config, self.total)
        if opened is None:
            return None
        header, payload = opened
        done = int(header["step"])
        like = self.state(model, key, done, extra)
        arrays, losses, hist, saved_key, extra = ckpt.load_state(self.path, header, payload, like)
        self.losses[:done] = losses
        for buf, saved in zip(self.leaves, jax.tree.leaves(hist)):
            buf[:done] = saved
        return done, header, arrays, key_from_data(saved_key, key), extra


def checkpoint_config(
    model: PyTree, data: PyTree, key: Key, trainable: list[str], **options: Any
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: digests of the model, data and key, and
    the options that change the result."""
    config = {
        "model_structure": ckpt.structure_digest(model),
        "initial_model": ckpt.array_digest(model),
        "trainable": trainable,
        "data_structure": ckpt.structure_digest(data),
        "data": ckpt.array_digest(data),
        "key": ckpt.array_digest(key),
    }
    config.update(options)
    return config


def open_checkpoint(
    path: Path | None, resume: bool, config: dict[str, Any], total: int
) -> tuple[dict[str, Any], bytes] | None:
    """The verified header and payload to resume from, or `None` to start afresh."""
    if path is None:
        return None
    if is_main_process():
        for tmp in stale_temporaries(path):
            tmp.unlink(missing_ok=True)
    try:
        blob = read_on_main_process(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(f"Cannot read checkpoint {path}: {err}.") from err
    if not resume:
        raise MetaplasticError(
            f"A checkpoint already exists at {path}; pass resume=True to continue it, "
            "or use another checkpoint_dir (it is never overwritten silently)."
        )
    header, payload = ckpt.parse_checkpoint(path, blob)
    _check_compatible(path, header, config, total)
    return header, payload


def _check_compatible(path: Path, header: dict, config: dict, steps: int) -> None:
    saved = header.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"Checkpoint {path} has no fit configuration in its header.")
    names = {
        "model_structure": "the model's structure (classes, static fields)",
        "initial_model": "the initial model's arrays",
        "trainable": "which arrays train (filter_spec)",
        "data_structure": "the data's structure",
        "data": "the data",
        "key": "the PRNG key",
        "solver": "the solver",
    }
    differ = [k for k in config if saved.get(k) != config[k]]
    if differ:
        what = "; ".join(
            names.get(k, k) + ("" if k in names else f" ({saved.get(k)!r} vs {config[k]!r})")
            for k in differ
        )
        raise CheckpointError(
            f"Checkpoint {path} was written for another fit and is not used: {what} differ(s). "
            "Resume with the same model, data, key and options, or use a new checkpoint_dir."
        )
    done = header.get("step")
    if not is_int(done) or done < 0:
        raise CheckpointError(f"Checkpoint {path} has an invalid step {done!r}.")
    if done > steps:
        raise CheckpointError(
            f"Checkpoint {path} already holds {done} steps, more than steps={steps}."
        )
    ours = ckpt.versions()
    theirs = header.get("versions", {})
    for lib in ("metaplastic", "jax", "jaxlib"):
        if theirs.get(lib) != ours[lib]:
            logger.warning(
                "checkpoint %s was written with %s %s, this is %s: the resumed fit may differ "
                "in the last bits from an uninterrupted one",
                path,
                lib,
                theirs.get(lib),
                ours[lib],
            )
    if header.get("status") == "diverged":
        logger.warning(
            "checkpoint %s holds the last finite state of a diverged fit (%s); resuming from it",
            path,
            header.get("diverged"),
        )
