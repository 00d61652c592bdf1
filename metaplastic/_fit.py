"""The generic fitting loop: one jitted optimisation step, optax, minibatches, ensembles,
checkpoints that resume bit for bit, and a clear stop when the fit diverges."""

import logging
import math
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import PyTree

from . import _checkpoint as ckpt
from ._errors import CheckpointError, FitDivergedError, MetaplasticError
from ._io import stale_temporaries
from ._progress import Progress
from ._types import Key, Scalar
from .rules import AbstractRule, TaylorRule


logger = logging.getLogger("metaplastic")

#: The name of the checkpoint file inside `checkpoint_dir`.
CHECKPOINT_FILE = "fit.ckpt"


class History(eqx.Module):
    """What happened during a fit, one entry per epoch.

    - `loss`: the mean training loss (penalties included) of each epoch, `(epochs,)` — with an
      ensemble, `(epochs, members)`.
    - `params`: the trainable parameters after each epoch, stacked along a leading epoch axis
      (a PyTree shaped like the trainable part of the model).
    """

    loss: np.ndarray
    params: PyTree


class FitResult(eqx.Module):
    """The fitted model, its history, the number of times the step was traced and the time."""

    model: PyTree
    history: History
    n_traces: int
    seconds: float


def rule_filter_spec(model: PyTree) -> PyTree:
    """The default filter spec: `True` on the floating-point arrays inside plasticity rules
    (the rule parameters θ), `False` everywhere else (weights, fixed layers, data)."""
    spec = jax.tree.map(lambda _: False, model)

    def is_rule(node: Any) -> bool:
        return isinstance(node, AbstractRule)

    rules = [leaf for leaf in jax.tree.leaves(model, is_leaf=is_rule) if is_rule(leaf)]
    if not rules:
        raise MetaplasticError("The model contains no plasticity rule to fit; pass a filter_spec.")
    return eqx.tree_at(
        lambda m: [leaf for leaf in jax.tree.leaves(m, is_leaf=is_rule) if is_rule(leaf)],
        spec,
        [jax.tree.map(eqx.is_inexact_array, rule) for rule in rules],
    )


def taylor_penalty(model: PyTree, l1: float, l2: float) -> Scalar:
    """`l1 · Σ|θ| + l2 · Σθ²` over the trainable coefficients of every Taylor rule in `model`."""
    total = jnp.zeros(())
    if l1 == 0.0 and l2 == 0.0:
        return total
    for leaf in jax.tree.leaves(model, is_leaf=lambda n: isinstance(n, TaylorRule)):
        if isinstance(leaf, TaylorRule):
            c = leaf.effective_coefficients
            if leaf.trainable is not None:
                c = jnp.where(leaf.trainable, c, 0.0)
            total = total + l1 * jnp.sum(jnp.abs(c)) + l2 * jnp.sum(c**2)
    return total


def _batch_indices(key: Key, n: int, batch_size: int | None) -> np.ndarray:
    """Indices of one epoch's batches, `(steps, batch_size)`: a permutation, the last batch
    wrapping around so every batch has the same static shape and no trajectory is skipped."""
    if batch_size is None or batch_size >= n:
        return np.arange(n)[None, :]
    steps = math.ceil(n / batch_size)
    perm = np.asarray(jr.permutation(key, n))
    perm = np.concatenate([perm, perm[: steps * batch_size - n]])
    return perm.reshape(steps, batch_size)


def _leading_size(data: PyTree, axis: int) -> int:
    leaves = [leaf for leaf in jax.tree.leaves(data) if eqx.is_array(leaf)]
    if not leaves:
        raise MetaplasticError("The dataset holds no arrays.")
    short = [leaf.shape for leaf in leaves if leaf.ndim <= axis]
    if short:
        raise MetaplasticError(
            f"Every dataset array needs a trajectory axis at position {axis}; an array of shape "
            f"{short[0]} has none."
        )
    sizes = {leaf.shape[axis] for leaf in leaves}
    if len(sizes) != 1:
        raise MetaplasticError(
            f"Dataset arrays disagree on the number of trajectories: {sorted(sizes)}."
        )
    n = sizes.pop()
    if n == 0:
        raise MetaplasticError("The dataset is empty.")
    return n


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_key(key: Any, name: str = "key") -> Key:
    if key is None:
        return jr.key(0)
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise MetaplasticError(
        f"{name} must be one JAX PRNG key such as jax.random.key(0), got "
        f"{getattr(key, 'dtype', type(key).__name__)} {getattr(key, 'shape', '')}."
    )


def _key_data(key: Key) -> np.ndarray:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jr.key_data(key))
    return np.asarray(key)


def _key_from_data(data: np.ndarray, like: Key) -> Key:
    if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jr.wrap_key_data(jnp.asarray(data), impl=jr.key_impl(like))
    return jnp.asarray(data)


def check_scalar_options(**options: Any) -> None:
    """Validate the common numeric options of the fitting functions."""
    for name, value in options.items():
        if name in ("l1", "l2", "damping", "tol"):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise MetaplasticError(f"{name} must be a number, got {value!r}.")
            if not (math.isfinite(float(value)) and float(value) >= 0.0):
                raise MetaplasticError(f"{name} must be finite and non-negative, got {value!r}.")
        elif name in ("batch_size", "checkpoint_every"):
            if value is not None and (not _is_int(value) or value < 1):
                raise MetaplasticError(f"{name} must be a positive integer or None, got {value!r}.")
        elif not _is_int(value) or value < 1:
            raise MetaplasticError(f"{name} must be a positive integer, got {value!r}.")


def _path_names(tree: PyTree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _take(data: PyTree, idx: Any) -> PyTree:
    return jax.tree.map(lambda a: a[idx] if eqx.is_array(a) else a, data)


def preflight(
    loss_fn: Callable, params: PyTree, data: PyTree, idx: np.ndarray, *, in_axes: Any = None
) -> jax.ShapeDtypeStruct:
    """Evaluate the shape of the loss on one batch without compiling anything, so that data
    that does not fit the model fails here with a clear message rather than deep in a trace."""
    fn = lambda p, d: loss_fn(p, _take(d, jnp.asarray(idx)))
    if in_axes is not None:
        fn = jax.vmap(fn, in_axes=in_axes)
    try:
        out = eqx.filter_eval_shape(fn, params, data)
    except MetaplasticError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise MetaplasticError(
            "The loss cannot be evaluated on this data with this model — do the data's shapes "
            f"(e.g. the number of inputs) match the model's? {type(err).__name__}: {first}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise MetaplasticError(f"The loss must return one array, got {type(out).__name__}.")
    return out


def _first_nonfinite(name: str, value: Any) -> str:
    arr = np.asarray(value)
    bad = np.argwhere(~np.isfinite(arr))
    if arr.ndim == 0 or len(bad) == 0:
        return f"{name} = {arr.item() if arr.ndim == 0 else 'non-finite'}"
    where = tuple(int(i) for i in bad[0])
    return f"{name}{list(where)} = {arr[where]}"


def _place_like(state: PyTree, params: PyTree) -> PyTree:
    """Lay the optimiser state out like parameters placed on a device mesh (replicated, or
    split along the leading member axis of an ensemble), as the jitted epoch returns it, so
    that every epoch sees the same layout and the step is traced once."""
    shardings = {leaf.sharding for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.Array)}
    if len(shardings) != 1:
        return state
    sharding = shardings.pop()
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return state
    whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    place = lambda a: jax.device_put(a, sharding if a.ndim >= len(sharding.spec) else whole)
    return jax.tree.map(lambda a: place(a) if eqx.is_array(a) else a, state)


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def fit(
    model: PyTree,
    data: PyTree,
    *,
    loss: Callable[[PyTree, PyTree], Scalar],
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    filter_spec: PyTree | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    key: Key | None = None,
    progress: bool = True,
    callback: Callable[[int, float, PyTree], bool | None] | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit the trainable parameters of `model` (by default the rule parameters θ) to `data`.

    Each epoch runs `ceil(n / batch_size)` optimisation steps over a fresh permutation of the
    trajectories, inside one jitted function (loss, gradient and optax update); a fit traces
    it exactly once.

    **Arguments:**

    - `model`: any PyTree containing a plasticity rule, e.g. a `PlasticDense` layer.
    - `data`: a PyTree of arrays with the trajectories along the leading axis.
    - `loss`: `loss(model, batch) -> scalar`, e.g. `metaplastic.losses.activity_mse`.
    - `optimizer`: an optax transformation (default `optax.adam(1e-2)`). Clip gradients by
      chaining, e.g. `optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))`.
    - `epochs`: number of passes over the data (in total, counting resumed epochs).
    - `batch_size`: trajectories per step; `None` is full batch.
    - `filter_spec`: a PyTree of bools like `model` selecting what trains
      (default `rule_filter_spec(model)`: the rule parameters only).
    - `l1`, `l2`: penalties on the Taylor coefficients.
    - `key`: PRNG key for the batch order (default `jax.random.key(0)`). The same key gives
      the same result.
    - `progress`: show a tqdm progress bar (epoch, loss, rate).
    - `callback`: `callback(epoch, loss, model)` after each epoch; return `True` to stop.
    - `ensemble`: fit a batch of models at once (vmapped): every trainable array of `model`
      has a leading member axis; `data` has one too at `data_ensemble_axis`
      (`None`: every member sees the same data).
    - `checkpoint_dir`: a folder (one per fit) for the checkpoint file `fit.ckpt`: the model,
      optimizer state, epoch, PRNG key and history, written atomically.
    - `checkpoint_every`: save every this many epochs (default: about 20 times per fit). A
      checkpoint is also written when the fit ends, stops, is interrupted (Ctrl-C) or
      diverges. How often it is written never changes the result.
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one (start
      afresh if there is none). Pass the same model, data, key and options as the first
      time; the resumed fit ends with exactly the parameters of an uninterrupted one. A
      checkpoint that is corrupted, truncated or was written for another model, data or
      configuration raises `CheckpointError` and nothing of it is used. Without `resume`,
      an existing checkpoint raises rather than being overwritten.

    **Returns:**

    A `FitResult` with the fitted model and the `History`.

    **Raises:**

    `MetaplasticError` on invalid input; `FitDivergedError` (a `MetaplasticError`) when the
    loss or a parameter becomes NaN or infinite: it names the epoch and the first non-finite
    quantity, and `err.result` / `err.last_finite_model` hold the last finite state (which is
    also saved to the checkpoint when checkpointing).
    """
    start = time.perf_counter()
    if optimizer is None:
        optimizer = optax.adam(1e-2)
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise MetaplasticError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}."
        )
    if not callable(loss):
        raise MetaplasticError(f"loss must be a function loss(model, batch), got {loss!r}.")
    check_scalar_options(
        epochs=epochs, batch_size=batch_size, l1=l1, l2=l2, checkpoint_every=checkpoint_every
    )
    key = _check_key(key)
    if resume and checkpoint_dir is None:
        raise MetaplasticError("resume=True needs a checkpoint_dir to resume from.")
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    try:
        params, static = eqx.partition(model, filter_spec)
    except ValueError as err:
        raise MetaplasticError(f"filter_spec does not match the model's structure: {err}") from err
    param_leaves = jax.tree.leaves(params)
    if not param_leaves:
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    if not all(jnp.issubdtype(p.dtype, jnp.inexact) for p in param_leaves):
        raise MetaplasticError("filter_spec selects a non-floating-point array for training.")
    data_axis = data_ensemble_axis if ensemble else None
    members = None
    if ensemble:
        sizes = {p.shape[0] if p.ndim else None for p in param_leaves}
        if len(sizes) != 1 or None in sizes:
            raise MetaplasticError(
                "ensemble=True needs a leading member axis of one size on every trainable "
                f"array; their leading sizes are {sorted(str(s) for s in sizes)}."
            )
        members = sizes.pop()
        if data_axis is not None:
            if not _is_int(data_axis) or data_axis < 0:
                raise MetaplasticError(
                    f"data_ensemble_axis must be a non-negative integer or None, got {data_axis!r}."
                )
            for leaf in jax.tree.leaves(data):
                if eqx.is_array(leaf) and (
                    leaf.ndim <= data_axis or leaf.shape[data_axis] != members
                ):
                    raise MetaplasticError(
                        f"With data_ensemble_axis={data_axis}, every data array needs {members} "
                        f"members along that axis (one per model); got shape {leaf.shape}."
                    )
    n = _leading_size(data, 0 if data_axis is None or data_axis != 0 else 1)
    steps = 1 if batch_size is None or batch_size >= n else math.ceil(n / batch_size)
    if checkpoint_every is None:
        checkpoint_every = max(1, round(epochs / 20))

    def loss_fn(p, batch):
        m = eqx.combine(p, static)
        return loss(m, batch) + taylor_penalty(m, l1, l2)

    first_batch = np.arange(n if batch_size is None else min(batch_size, n))
    loss_shape = preflight(
        loss_fn, params, data, first_batch, in_axes=None if not ensemble else (0, data_axis)
    )
    expected_shape = () if not ensemble else (members,)
    if loss_shape.shape != expected_shape or not jnp.issubdtype(loss_shape.dtype, jnp.floating):
        raise MetaplasticError(
            f"The loss must return a floating-point scalar, got {loss_shape.dtype} "
            f"{loss_shape.shape[len(expected_shape) :]}."
        )

    traces = [0]

    def one_step(carry, idx, d):
        p, s = carry
        value, grads = jax.value_and_grad(loss_fn)(p, _take(d, idx))
        updates, s = optimizer.update(grads, s, p)
        p = eqx.apply_updates(p, updates)
        return (p, s), value

    def epoch_fn(p, s, d, indices):
        traces[0] += 1
        (p, s), values = jax.lax.scan(lambda c, i: one_step(c, i, d), (p, s), indices)
        finite = jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(p)])
        return p, s, jnp.mean(values), finite

    if ensemble:
        epoch_fn = jax.vmap(epoch_fn, in_axes=(0, 0, data_axis, None))
        opt_state = jax.vmap(optimizer.init)(params)
    else:
        opt_state = optimizer.init(params)
    opt_state = _place_like(opt_state, params)
    run_epoch = jax.jit(epoch_fn)

    param_names = _path_names(params)
    config: dict[str, Any] = {}
    if checkpoint_dir is not None:
        config = checkpoint_config(
            model,
            data,
            key,
            param_names,
            method="gradient",
            n_trajectories=n,
            batch_size=batch_size,
            l1=float(l1),
            l2=float(l2),
            ensemble=bool(ensemble),
            data_ensemble_axis=data_axis,
        )
    record = _FitRecord(
        params,
        epochs,
        expected_shape,
        loss_shape.dtype,
        checkpoint_dir,
        config,
        {"checkpoint_every": checkpoint_every},
    )
    path = record.path
    as_model = lambda p: eqx.combine(p, static)

    done = 0
    resumed = record.resume(resume, as_model(params), key, opt_state)
    if resumed is not None:
        done, header, m_arr, key, opt_state = resumed
        params = eqx.partition(eqx.combine(m_arr, model), filter_spec)[0]
        logger.info(
            "fit: resuming from %s at epoch %d of %d (saved as %s)",
            path,
            done,
            epochs,
            header.get("status"),
        )

    logger.info(
        "fit: %d trainable values, %d trajectories, %d step(s) per epoch, epochs %d to %d%s",
        sum(p.size for p in param_leaves),
        n,
        steps,
        done,
        epochs,
        f", {members} ensemble members" if ensemble else "",
    )

    def result(p, k_done, traced):
        history = record.history(k_done)
        return FitResult(as_model(p), history, traced, time.perf_counter() - start)

    def save(p, s, k, k_done, status, more=None):
        record.save(as_model(p), k, k_done, s, status, more)

    bar = Progress(epochs, desc="fit", unit="epoch", enabled=progress, initial=done)
    try:
        while done < epochs:
            epoch = done
            new_key, sub = jr.split(key)
            indices = jnp.asarray(_batch_indices(sub, n, batch_size))
            new_params, new_opt, value, finite = run_epoch(params, opt_state, data, indices)
            value_np = np.asarray(value)
            finite_np = np.asarray(finite).reshape(expected_shape + (len(param_leaves),))
            if not (np.all(np.isfinite(value_np)) and np.all(finite_np)):
                quantity, member, shown = _first_nonfinite_quantity(
                    value_np, finite_np, new_params, param_names, ensemble
                )
                if path is not None:
                    diverged = {"epoch": epoch, "quantity": quantity, "member": member}
                    save(params, opt_state, key, epoch, "diverged", {"diverged": diverged})
                who = "" if member is None else f" (ensemble member {member})"
                raise FitDivergedError(
                    f"The fit diverged in epoch {epoch}{who}: {shown}. The last finite "
                    f"parameters (after {epoch} epoch(s)) are in err.last_finite_model and "
                    "err.result"
                    + ("" if path is None else f", and saved in {path}")
                    + ". Try a smaller learning rate or clip the gradients, e.g. "
                    "optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)).",
                    epoch=epoch,
                    quantity=quantity,
                    member=member,
                    result=result(params, epoch, traces[0]),
                    checkpoint=None if path is None else str(path),
                )
            record.add(epoch, value_np, new_params)
            params, opt_state, key, done = new_params, new_opt, new_key, epoch + 1
            mean_loss = float(np.mean(value_np))
            bar.update(1, loss=mean_loss)
            logger.debug("fit: epoch %d loss %.6g", epoch, mean_loss)
            if path is not None and (done == epochs or done % checkpoint_every == 0):
                save(params, opt_state, key, done, "finished" if done == epochs else "running")
            if callback is not None and callback(epoch, mean_loss, eqx.combine(params, static)):
                logger.info("fit stopped by callback at epoch %d", epoch)
                if path is not None and done < epochs:
                    save(params, opt_state, key, done, "stopped")
                break
    except KeyboardInterrupt:
        if path is not None:
            save(params, opt_state, key, done, "interrupted")
            logger.warning("fit interrupted at epoch %d; checkpoint saved to %s", done, path)
        raise
    finally:
        bar.close()
    out = result(params, done, traces[0])
    logger.info(
        "fit: %d epochs in %.2f s, final loss %s",
        done,
        out.seconds,
        np.array2string(record.losses[done - 1], precision=4) if done else "n/a",
    )
    return out


class _FitRecord:
    """What `fit` and `fit_least_squares` keep on the host while they run: the history in
    preallocated buffers (so saving and resuming are cheap) and the checkpoint file.

    A checkpoint holds `(model arrays, losses, history, key, extra)`, where `extra` is the
    method's own state (the optimizer state, or the LM parameters and damping)."""

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

    def add(self, i: int, loss: Any, params: PyTree) -> None:
        """Record the loss and the parameters after epoch / iteration `i`."""
        self.losses[i] = loss
        for buf, leaf in zip(self.leaves, jax.tree.leaves(params)):
            buf[i] = np.asarray(leaf)

    def history(self, done: int) -> History:
        """A copy of the first `done` entries."""
        return History(
            loss=self.losses[:done].copy(),
            params=jax.tree.map(lambda buf: buf[:done].copy(), self.params),
        )

    def state(self, model: PyTree, key: Key, done: int, extra: PyTree) -> tuple:
        """The tree a checkpoint holds after `done` epochs."""
        hist = jax.tree.map(lambda buf: buf[:done], self.params)
        arrays = eqx.filter(model, eqx.is_array)
        return (arrays, self.losses[:done], hist, _key_data(key), extra)

    def save(
        self,
        model: PyTree,
        key: Key,
        done: int,
        extra: PyTree,
        status: str,
        more: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint (atomically), if the fit has a `checkpoint_dir`."""
        if self.path is None:
            return
        header = {
            "epoch": done,
            "epochs": self.total,
            "status": status,
            "config": self.config,
            "loss_shape": list(self.loss_shape),
            "loss_dtype": str(self.losses.dtype),
            **self.header,
            **(more or {}),
        }
        ckpt.write_checkpoint(self.path, self.state(model, key, done, extra), header)
        logger.debug("checkpoint: %d epochs saved to %s (%s)", done, self.path, status)

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
        done = int(header["epoch"])
        like = self.state(model, key, done, extra)
        arrays, losses, hist, key_data, extra = ckpt.load_state(self.path, header, payload, like)
        self.losses[:done] = losses
        for buf, saved in zip(self.leaves, jax.tree.leaves(hist)):
            buf[:done] = saved
        return done, header, arrays, _key_from_data(key_data, key), extra


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
    for tmp in stale_temporaries(path):
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    if not resume:
        raise MetaplasticError(
            f"A checkpoint already exists at {path}; pass resume=True to continue it, "
            "or use another checkpoint_dir (it is never overwritten silently)."
        )
    header, payload = ckpt.read_checkpoint(path)
    _check_compatible(path, header, config, total)
    return header, payload


def _check_compatible(path: Path, header: dict, config: dict, epochs: int) -> None:
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
        "method": "the fitting method",
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
    done = header.get("epoch")
    if not _is_int(done) or done < 0:
        raise CheckpointError(f"Checkpoint {path} has an invalid epoch {done!r}.")
    if done > epochs:
        raise CheckpointError(
            f"Checkpoint {path} already holds {done} epochs, more than epochs={epochs}."
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


def _first_nonfinite_quantity(
    value_np: np.ndarray,
    finite_np: np.ndarray,
    new_params: PyTree,
    param_names: list[str],
    ensemble: bool,
) -> tuple[str, int | None, str]:
    """The first non-finite quantity of an epoch: the loss, else the first parameter array
    (in tree order) with a non-finite entry. Returns `(quantity, member, description)`."""
    if not np.all(np.isfinite(value_np)):
        if ensemble:
            member = int(np.argmin(np.isfinite(value_np)))
            return "loss", member, f"the loss became {value_np[member]}"
        return "loss", None, f"the loss became {value_np.item()}"
    flat = finite_np.reshape(-1, finite_np.shape[-1])
    row = int(np.argmin(flat.all(axis=1)))
    leaf_i = int(np.argmin(flat[row]))
    leaf = np.asarray(jax.tree.leaves(new_params)[leaf_i])
    member = None
    if ensemble:
        member, leaf = row, leaf[row]
    quantity = f"parameter {param_names[leaf_i] or '(root)'}"
    return quantity, member, _first_nonfinite(quantity, leaf)


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def load_checkpoint(
    path: str | os.PathLike, model: PyTree, *, filter_spec: PyTree | None = None
) -> tuple[FitResult, dict[str, Any]]:
    """Read the model and history saved by `fit(..., checkpoint_dir=...)`, e.g. the last
    finite state of a fit that diverged.

    **Arguments:**

    - `path`: the checkpoint file, or the `checkpoint_dir` holding `fit.ckpt`.
    - `model`: the model the fit started from (its structure is the template).
    - `filter_spec`: as passed to `fit`.

    **Returns:**

    `(result, header)`: a `FitResult` (with `n_traces=0`) and the checkpoint's JSON header
    (epoch, status, configuration, versions).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    header, payload = ckpt.read_checkpoint(path)
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params = eqx.partition(model, filter_spec)[0]
    done = header.get("epoch")
    shape = header.get("loss_shape")
    if not _is_int(done) or done < 0 or not isinstance(shape, list):
        raise CheckpointError(f"Checkpoint {path} has an invalid header.")
    try:
        dtype = np.dtype(header.get("loss_dtype"))
    except TypeError:
        raise CheckpointError(f"Checkpoint {path} has an invalid header.") from None
    like = (
        eqx.filter(model, eqx.is_array),
        np.zeros((done, *shape), dtype),
        jax.tree.map(lambda p: np.zeros((done,) + p.shape, p.dtype), params),
    )
    m_arr, l_saved, h_saved = ckpt.load_state(path, header, payload, like, prefix=True)
    fitted = eqx.combine(m_arr, model)
    return FitResult(fitted, History(l_saved, h_saved), 0, 0.0), header
