"""The one `fit`: a driver loop around any solver's step — one jitted step traced once (and
reused by later fits of the same program), minibatches, vmapped ensembles, history,
checkpoints that resume bit for bit, progress, a callback that can stop, and a clear stop
when the fit diverges."""

import dataclasses
import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import PyTree

from . import _checkpoint as ckpt
from ._errors import (
    CheckpointError,
    FitDivergedError,
    MetaplasticError,
    first_line,
    validates_input,
)
from ._jacobian import AbstractDifferentiation, as_differentiation
from ._multihost import host_array, is_main_process, put
from ._progress import Progress
from ._record import (
    CHECKPOINT_FILE,
    FitRecord,
    FitResult,
    History,
    checkpoint_config,
    is_int,
)
from ._solver import AbstractSolver, LevenbergMarquardt, Objective, Optax
from ._types import Key, Scalar
from .data import ActivityDataset, RecordingDataset
from .losses import AbstractGaussNewtonLoss, AbstractLoss, AbstractPenalty, as_loss, as_penalties
from .nn import layer_rules
from .rules import AbstractRule, TaylorRule


logger = logging.getLogger("metaplastic")

# The most bytes of per-step parameters and solver state that one call of the compiled fit
# returns when `steps_per_call` is left to the solver.
STACKED_BYTES = 64 * 2**20
# ... and about how long one call should take then.
CALL_SECONDS = 0.25
# The solver of losses without Gauss–Newton structure: one object, so that fits that leave
# the solver to `fit` share their compiled program.
DEFAULT_FIRST_ORDER = Optax(optax.adam(1e-2))


def rule_filter_spec(model: PyTree) -> PyTree:
    """The default filter spec: `True` on the floating-point arrays inside plasticity rules
    (the rule parameters θ), `False` everywhere else (weights, fixed layers, data)."""
    spec = jax.tree.map(lambda _: False, model)
    rules = layer_rules(model)
    if not rules:
        raise MetaplasticError("The model contains no plasticity rule to fit; pass a filter_spec.")
    return eqx.tree_at(
        layer_rules, spec, [jax.tree.map(eqx.is_inexact_array, rule) for rule in rules]
    )


def _leading_size(data: PyTree, axis: int) -> int:
    """The number of trajectories: the size of `axis`, which every array must share."""
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


def check_key(key: Any, name: str = "key") -> Key:
    """`key` if it is one JAX PRNG key (a typed key or a raw `uint32[2]`), `jax.random.key(0)`
    for `None`; a `MetaplasticError` naming `name` otherwise (package-internal)."""
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


def partition_trainable(model: PyTree, filter_spec: PyTree | None) -> tuple[PyTree, PyTree, PyTree]:
    """`(filter_spec, params, static)`: the model split by `filter_spec` (default
    `rule_filter_spec(model)`) into its trainable part and the rest, with a
    `MetaplasticError` when the spec does not fit the model or selects no floating-point
    array (package-internal: the one check of `fit`, `laplace` and `bootstrap`)."""
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    try:
        params, static = eqx.partition(model, filter_spec)
    except ValueError as err:
        raise MetaplasticError(f"filter_spec does not match the model's structure: {err}") from err
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    if not all(jnp.issubdtype(p.dtype, jnp.inexact) for p in leaves):
        raise MetaplasticError("filter_spec selects a non-floating-point array for training.")
    return filter_spec, params, static


def check_scalar_options(**options: Any) -> None:
    """Validate the common numeric options of the fitting functions."""
    for name, value in options.items():
        if name in ("batch_size", "checkpoint_every"):
            if value is not None and (not is_int(value) or value < 1):
                raise MetaplasticError(f"{name} must be a positive integer or None, got {value!r}.")
        elif not is_int(value) or value < 1:
            raise MetaplasticError(f"{name} must be a positive integer, got {value!r}.")


def _path_names(tree: PyTree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def take(data: PyTree, idx: Any) -> PyTree:
    """The trajectories `idx` of every array of a dataset (along the leading axis)."""
    return jax.tree.map(lambda a: a[idx] if eqx.is_array(a) else a, data)


class _Traces(threading.local):
    """How many times this thread has traced a fit's steps (a fit reads the difference)."""

    count = 0


_traces = _Traces()


class _Program(NamedTuple):
    """What the compiled steps of a fit depend on besides their arguments' shapes: equal
    programs (the same solver, dataset size, batch and ensemble layout) share one compiled
    program across fits, so refitting a model of the same shapes (another start, another
    key, a profile's next value, a bootstrap's next round) compiles nothing."""

    solver: AbstractSolver
    n: int  # trajectories in the dataset
    batch: int  # trajectories per step (`n`: the whole dataset, no minibatch drawn)
    ensemble: bool
    data_axis: int | None  # the data's member axis of an ensemble (`None`: shared)


def _member_step(program: _Program, p, s, obj, o, d, sub):
    """One member's solver step on its batch: new parameters, solver state, objective and
    whether each parameter leaf is finite."""
    if program.batch == program.n:
        b = d
    else:
        b = take(d, jr.choice(sub, program.n, (program.batch,), replace=False))
    p, s, value = program.solver.step(with_member_arrays(obj, o), p, s, b)
    finite = jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(p)])
    return p, s, value, finite


def _one_step(program: _Program, p, s, k, obj, o, d):
    k, sub = jr.split(k)
    step = functools.partial(_member_step, program)
    if program.ensemble:
        step = eqx.filter_vmap(step, in_axes=(0, 0, None, 0, program.data_axis, None))
    p, s, value, finite = step(p, s, obj, o, d, sub)
    return (p, s, k), (p, s, k, value, finite)


@eqx.filter_jit
def run_step(program: _Program, p, s, obj, o, d, k):
    """One step: the new (parameters, state, key), and each step's (parameters, state, key,
    objective, finite flags) along a leading axis of 1."""
    _traces.count += 1
    carry, out = _one_step(program, p, s, k, obj, o, d)
    return carry, jax.tree.map(lambda a: a[None], out)


@eqx.filter_jit
def run_steps(program: _Program, per_call: int, p, s, obj, o, d, k, count):
    """`count` (traced, at most `per_call`) steps in one loop: the final (parameters, state,
    key), and every step's (parameters, state, key, objective, finite flags) along a leading
    axis of `per_call` (entries past `count` are left as they were)."""
    _traces.count += 1
    dynamic, fixed = eqx.partition((p, s, k), eqx.is_array)
    shapes = eqx.filter_eval_shape(_one_step, program, p, s, k, obj, o, d)[1][3:]
    stack = lambda a: jnp.broadcast_to(a, (per_call,) + a.shape)
    outs = (
        jax.tree.map(stack, dynamic),
        jax.tree.map(lambda t: jnp.zeros((per_call,) + t.shape, t.dtype), shapes),
    )

    def body(j, loop):
        carry, (every, computed) = loop
        carry, out = _one_step(program, *eqx.combine(carry, fixed), obj, o, d)
        carry = eqx.filter(carry, eqx.is_array)
        new = (eqx.filter(out[:3], eqx.is_array), out[3:])
        put_at = lambda buf, a: buf.at[j].set(a)
        return carry, jax.tree.map(put_at, (every, computed), new)

    carry, (every, computed) = jax.lax.fori_loop(0, count, body, (dynamic, outs))
    return eqx.combine(carry, fixed), (*eqx.combine(every, fixed), *computed)


def preflight(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    idx: np.ndarray | None,
    *,
    in_axes: Any = None,
) -> jax.ShapeDtypeStruct:
    """Evaluate the shape of the loss on one batch (the trajectories `idx`, or all of `data`)
    without compiling anything, so that data that does not fit the model fails here with a
    clear message rather than deep in a trace."""
    fn = lambda p, d: loss_fn(p, d if idx is None else take(d, jnp.asarray(idx)))
    if in_axes is not None:
        fn = jax.vmap(fn, in_axes=in_axes)
    try:
        out = eqx.filter_eval_shape(fn, params, data)
    except MetaplasticError:
        raise
    except Exception as err:
        text = str(err).lower()
        shapes = isinstance(err, (TypeError, ValueError)) and any(
            word in text
            for word in ("shape", "dimension", "broadcast", "incompatible", "size", "match")
        )
        hint = (
            " — do the data's shapes (e.g. the number of inputs) match the model's?"
            if shapes
            else ":"
        )
        raise MetaplasticError(
            f"The loss cannot be evaluated on this data with this model{hint} {first_line(err)}"
        ) from err
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise MetaplasticError(f"The loss must return one array, got {type(out).__name__}.")
    return out


def _first_nonfinite(name: str, value: Any) -> str:
    arr = host_array(value)
    bad = np.argwhere(~np.isfinite(arr))
    if arr.ndim == 0 or len(bad) == 0:
        return f"{name} = {arr.item() if arr.ndim == 0 else 'non-finite'}"
    where = tuple(int(i) for i in bad[0])
    return f"{name}{list(where)} = {arr[where]}"


def _place_like(state: PyTree, params: PyTree) -> PyTree:
    """Lay the optimiser state out like parameters placed on a device mesh (replicated, or
    split along the leading member axis of an ensemble), as the jitted step returns it, so
    that every step sees the same layout and the step is traced once."""
    shardings = {leaf.sharding for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.Array)}
    if len(shardings) != 1:
        return state
    sharding = shardings.pop()
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return state
    whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    place = lambda a: put(a, sharding if a.ndim >= len(sharding.spec) else whole)
    return jax.tree.map(lambda a: place(a) if eqx.is_array(a) else a, state)


def _place_as(loaded: PyTree, like: PyTree) -> PyTree:
    """Put arrays read from a checkpoint where the arrays of `like` were placed on a device
    mesh (which may span several processes), so that a resumed fit runs with the layout of
    the fresh one; arrays of `like` that were not on a mesh leave theirs as loaded."""

    def one(a, ref):
        if isinstance(ref, jax.Array) and isinstance(ref.sharding, jax.sharding.NamedSharding):
            return put(np.asarray(a), ref.sharding)
        return a

    return jax.tree.map(one, loaded, like)


@validates_input
def fit(
    model: PyTree,
    data: PyTree,
    loss: AbstractLoss | Callable[[PyTree, PyTree], Scalar],
    *,
    solver: AbstractSolver | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    filter_spec: PyTree | None = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    key: Key | None = None,
    progress: bool = True,
    callback: Callable[[int, float, PyTree], bool | None] | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    per_member: Callable[[PyTree], PyTree] | None = None,
    steps_per_call: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit the trainable parameters of `model` (by default the rule parameters θ) to `data`.

    The solver's steps run inside one jitted function, traced once per fit, `steps_per_call`
    steps per call (a loop inside the compiled program); the host loop around it records
    the history, checkpoints, shows progress and stops on divergence or when the callback
    asks — after every step, exactly as if each step were its own call. A later fit of the
    same program — an equal solver (the same object for an optax optimiser, whose functions
    compare by identity), data and parameters of the same shapes, the same batch and
    ensemble layout — reuses the compiled one whatever the starting values, the data's
    values and the key: refitting from another start compiles nothing.

    **Arguments:**

    - `model`: any PyTree containing a plasticity rule, e.g. a `PlasticDense` layer.
    - `data`: a PyTree of arrays with the trajectories along the leading axis.
    - `loss`: a loss object (`metaplastic.losses.ActivityMSE()`,
      `metaplastic.behaviour.ChoiceBCE()`, ...) or a function `loss(model, batch) -> scalar`.
    - `solver`: `metaplastic.LevenbergMarquardt()` (damped Gauss–Newton; needs a loss with
      Gauss–Newton structure) or `metaplastic.Optax(optax_optimiser)`. Default: Levenberg–
      Marquardt for losses with Gauss–Newton structure (the library's own activity and
      choice losses), `Optax(optax.adam(1e-2))` for plain functions.
    - `steps`: the number of solver steps in total, counting resumed ones (default: the
      solver's `default_steps`).
    - `batch_size`: trajectories per step, a fresh random subset each step; `None` is the
      whole dataset.
    - `filter_spec`: a PyTree of bools like `model` selecting what trains
      (default `rule_filter_spec(model)`: the rule parameters only).
    - `penalty`: one penalty or a sequence, e.g. `metaplastic.losses.L1(1e-3)`, added to the
      loss by every solver.
    - `differentiation`: how derivatives go through the simulation (`ForwardMode()`,
      `ReverseMode(checkpoint=...)`, `TaylorReverse()`, ...); default `Automatic()`, which
      picks the fastest strategy that supports the model and the solver.
    - `key`: PRNG key for the batches (default `jax.random.key(0)`). The same key gives the
      same result.
    - `progress`: show a tqdm progress bar (step, loss, rate).
    - `callback`: `callback(step, loss, model)` after each step; return `True` to stop.
    - `ensemble`: fit a batch of models at once (vmapped): every trainable array of `model`
      has a leading member axis; `data` has one too at `data_ensemble_axis` (`None`: every
      member sees the same data).
    - `per_member`: with `ensemble=True`, the arrays of `model` that do not train but differ
      between members, as a function of the model, e.g. `lambda m: m.initial_weights` or
      `lambda m: (m.initial_weights, m.rule.trainable)` (each member's own initial state,
      its own set of frozen terms). They carry the leading member axis and are vmapped with
      the trainable arrays; every other non-trainable array is shared. `None`: all shared.
    - `steps_per_call`: how many solver steps one call of the compiled program takes at most.
      Default: up to the solver's `default_steps_per_call` (100 for optax optimisers, whose
      short steps would otherwise wait on the host; 1 for Levenberg–Marquardt), as many as
      take about a quarter of a second (measured on the second call), so that long steps
      still run one per call. Every step's parameters, solver state and key come back with
      the call, so the history, the checkpoints (which can fall inside a call), the callback
      (called after each step; when it stops the fit, the fit ends after that step and the
      call's later steps are discarded), divergence (named by its step) and the minibatches
      are those of one step per call, and the result does not depend on how the steps fall
      into calls. One step per call (`steps_per_call=1`) runs another program, which can
      differ in the last bits. Resuming gives the uninterrupted fit's result bit for bit.
      Memory: the parameters and the solver state of `steps_per_call` steps at once.
    - `checkpoint_dir`: a folder (one per fit) for the checkpoint file `fit.ckpt`: the model,
      the solver's state, the step, the PRNG key and the history, written atomically.
    - `checkpoint_every`: save every this many steps (default: about 20 times per fit). A
      checkpoint is also written when the fit ends, stops, is interrupted (Ctrl-C) or
      diverges. How often it is written never changes the result.
    - `resume`: continue from the checkpoint in `checkpoint_dir` if there is one (start
      afresh if there is none). Pass the same model, data, key and options as the first
      time; the resumed fit ends with exactly the parameters of an uninterrupted one. A
      checkpoint that is corrupted, truncated or was written for another model, data or
      configuration raises `CheckpointError` and nothing of it is used. Without `resume`,
      an existing checkpoint raises rather than being overwritten.

    **Returns:**

    A `FitResult` with the fitted model and the `History` (the objective each step
    evaluated and the parameters after it).

    **Raises:**

    `MetaplasticError` on invalid input; `FitDivergedError` (a `MetaplasticError`) when the
    objective or a parameter becomes NaN or infinite: it names the step and the first
    non-finite quantity, and `err.result` / `err.last_finite_model` hold the last finite state
    (which is also saved to the checkpoint when checkpointing).
    """
    start = time.perf_counter()
    check_not_traced("fit", (model, data))
    loss = as_loss(loss)
    if solver is None:
        solver = (
            LevenbergMarquardt()
            if isinstance(loss, AbstractGaussNewtonLoss)
            else DEFAULT_FIRST_ORDER
        )
    if not isinstance(solver, AbstractSolver):
        raise MetaplasticError(
            "solver must be a metaplastic solver such as metaplastic.LevenbergMarquardt() or "
            f"metaplastic.Optax(optax.adam(1e-2)), got {type(solver).__name__}."
        )
    if solver.needs_jacobian and not isinstance(loss, AbstractGaussNewtonLoss):
        raise MetaplasticError(
            f"{type(solver).__name__} needs a loss with Gauss-Newton structure (an "
            "AbstractGaussNewtonLoss such as metaplastic.losses.ActivityMSE()); a plain "
            "function loss needs a first-order solver such as metaplastic.Optax(...)."
        )
    differentiation = as_differentiation(differentiation)
    penalties = as_penalties(penalty)
    if steps is None:
        steps = solver.default_steps
    explicit_per_call = steps_per_call is not None
    if steps_per_call is None:
        steps_per_call = solver.default_steps_per_call
    check_scalar_options(
        steps=steps,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        steps_per_call=steps_per_call,
    )
    key = check_key(key)
    if resume and checkpoint_dir is None:
        raise MetaplasticError("resume=True needs a checkpoint_dir to resume from.")
    filter_spec, params, static = partition_trainable(model, filter_spec)
    param_leaves = jax.tree.leaves(params)
    data_axis = data_ensemble_axis if ensemble else None
    if ensemble:
        check_stacked(params)
    members = check_ensemble(param_leaves, data, data_axis) if ensemble else None
    own, static = split_per_member(model, params, static, per_member, members)
    warn_unused_rewards(model, data)
    chunks = getattr(solver, "chunks", None)
    n = _leading_size(data, 0 if data_axis is None or data_axis != 0 else 1)
    batch = n if batch_size is None else min(batch_size, n)
    whole = batch == n
    if chunks is not None and chunks > 1 and batch % chunks:
        raise MetaplasticError(f"chunks={chunks} must divide the batch size {batch}.")
    if checkpoint_every is None:
        checkpoint_every = max(1, round(steps / 20))
    objective = Objective(loss, penalties, static, differentiation)
    expected_shape = () if not ensemble else (members,)

    def objective_value(p_own, d):
        obj = with_member_arrays(objective, p_own[1])
        return loss(obj.model(p_own[0]), d) + obj.penalty(p_own[0])

    loss_shape = preflight(
        objective_value,
        (params, own),
        data,
        None if whole else np.arange(batch),
        in_axes=None if not ensemble else (0, data_axis),
    )
    if loss_shape.shape != expected_shape or not jnp.issubdtype(loss_shape.dtype, jnp.floating):
        raise MetaplasticError(
            f"The loss must return a floating-point scalar, got {loss_shape.dtype} "
            f"{loss_shape.shape[len(expected_shape) :]}."
        )

    program = _Program(solver, n, batch, bool(ensemble), data_axis)
    traces_before = _traces.count

    init = lambda p: solver.init(objective, p)
    state = eqx.filter_vmap(init)(params) if ensemble else init(params)
    # The step returns strongly typed arrays; a weakly typed initial state (optax's counters)
    # would make the second step trace again.
    strong = lambda a: jnp.asarray(a, a.dtype) if eqx.is_array(a) else a
    state = _place_like(jax.tree.map(strong, state), params)

    param_names = _path_names(params)
    config: dict[str, Any] = {}
    if checkpoint_dir is not None:
        config = checkpoint_config(
            model,
            data,
            key,
            param_names,
            solver=type(solver).__name__,
            solver_options=_options(solver),
            loss=type(loss).__name__,
            penalty=[_options(p) | {"type": type(p).__name__} for p in penalties],
            n_trajectories=n,
            batch_size=batch,
            ensemble=bool(ensemble),
            data_ensemble_axis=data_axis,
        )
    record = FitRecord(
        params,
        steps,
        expected_shape,
        loss_shape.dtype,
        checkpoint_dir,
        config,
        {"checkpoint_every": checkpoint_every},
    )
    path = record.path
    as_model = lambda p: eqx.combine(p, static) if own is None else eqx.combine(p, own, static)

    done = 0
    resumed = record.resume(resume, as_model(params), key, state)
    if resumed is not None:
        done, header, m_arr, key, state = resumed
        params = _place_as(eqx.partition(eqx.combine(m_arr, model), filter_spec)[0], params)
        state = _place_like(jax.tree.map(jnp.asarray, state), params)
        logger.info(
            "fit: resuming from %s at step %d of %d (saved as %s)",
            path,
            done,
            steps,
            header.get("status"),
        )
    # On a device mesh the key goes where the parameters are, or the second step retraces.
    key = _place_like(key, params)
    logger.info(
        "fit: %s, %d trainable values, %s, steps %d to %d%s",
        type(solver).__name__,
        sum(p.size for p in param_leaves),
        "the whole dataset each step" if whole else f"batches of {batch} of {n} trajectories",
        done,
        steps,
        f", {members} ensemble members" if ensemble else "",
    )

    def result(p, s, k_done):
        history = record.history(k_done)
        traced = _traces.count - traces_before
        return FitResult(as_model(p), history, s, traced, time.perf_counter() - start)

    def save(p, s, k, k_done, status, more=None):
        record.save(as_model(p), k, k_done, s, status, more)

    name = type(solver).__name__
    # With several processes, one progress bar (process 0's).
    enabled = progress and is_main_process()
    bar = Progress(steps, desc=f"fit ({name})", unit="step", enabled=enabled, initial=done)
    per_call = max(1, min(steps_per_call, steps - done))
    if not explicit_per_call:
        # Every step's parameters and solver state come back from a call: keep them small.
        step_bytes = sum(a.nbytes for a in jax.tree.leaves((params, state)) if eqx.is_array(a))
        per_call = max(1, min(per_call, STACKED_BYTES // max(step_bytes, 1)))
    # Left to the solver, the steps of a call adapt to take about `CALL_SECONDS` (from the
    # second call on, the first being compiled): short steps run many to a call, long ones one
    # to a call, so that progress shows and a callback's stop wastes little. The same program
    # runs every call, so the result does not depend on how the steps fall into calls. Several
    # processes must agree on each call: they keep `per_call`.
    adaptive = not explicit_per_call and per_call > 1 and jax.process_count() == 1
    next_count = 1 if adaptive else per_call
    calls = 0
    held = done  # the step that (params, state, key) are at
    current = None  # inside a call's steps: (params, state, key) after step `done - 1`
    n_leaves = len(param_leaves)
    stopped = False
    try:
        while done < steps:
            count = min(next_count, steps - done)
            called = time.perf_counter()
            if per_call == 1:
                carry, out = run_step(program, params, state, objective, own, data, key)
            else:
                count_arg = jnp.asarray(count, jnp.int32)
                carry, out = run_steps(
                    program, per_call, params, state, objective, own, data, key, count_arg
                )
            every_params, every_state, every_key, values, finites = out
            values_np = host_array(values)[:count]
            finite_np = host_array(finites)[:count].reshape((count,) + expected_shape + (n_leaves,))
            calls += 1
            if adaptive and calls > 1:
                per_step = (time.perf_counter() - called) / count
                next_count = int(min(per_call, max(1, CALL_SECONDS // max(per_step, 1e-9))))
            ok = np.all(np.isfinite(values_np.reshape(count, -1)), axis=1) & np.all(
                finite_np.reshape(count, -1), axis=1
            )
            good = count if ok.all() else int(np.argmin(ok))
            record.add_steps(done, values_np, every_params, good)
            every = (every_params, every_state, every_key)
            after = functools.partial(_after_step, count=count, carry=carry, every=every)

            for j in range(good):
                i = done
                done = i + 1
                current = functools.partial(after, j)
                mean_loss = float(np.mean(values_np[j]))
                bar.update(1, loss=mean_loss)
                logger.debug("fit: step %d loss %.6g", i, mean_loss)
                last = done == steps
                if path is not None and (last or done % checkpoint_every == 0):
                    p_j, s_j, k_j = after(j)
                    save(p_j, s_j, k_j, done, "finished" if last else "running")
                if callback is not None and callback(i, mean_loss, as_model(after(j)[0])):
                    logger.info("fit stopped by callback at step %d", i)
                    params, state, key = after(j)
                    held = done
                    if path is not None and done < steps:
                        save(params, state, key, done, "stopped")
                    stopped = True
                    break
            if stopped:
                break
            if good < count:
                if good > 0:
                    params, state, key = after(good - 1)
                i = done
                new_params = _step_of(every_params, good)
                quantity, member, shown = _first_nonfinite_quantity(
                    np.asarray(values_np[good]), finite_np[good], new_params, param_names, ensemble
                )
                if path is not None:
                    diverged = {"step": i, "quantity": quantity, "member": member}
                    save(params, state, key, i, "diverged", {"diverged": diverged})
                who = "" if member is None else f" (ensemble member {member})"
                raise FitDivergedError(
                    f"The fit diverged in step {i}{who}: {shown}. The last finite "
                    f"parameters (after {i} step(s)) are in err.last_finite_model and "
                    "err.result"
                    + ("" if path is None else f", and saved in {path}")
                    + ". "
                    + solver.divergence_hint,
                    step=i,
                    quantity=quantity,
                    member=member,
                    result=result(params, state, i),
                    checkpoint=None if path is None else str(path),
                )
            params, state, key = carry
            held, current = done, None
    except KeyboardInterrupt:
        if current is not None:
            (params, state, key), held = current(), done
        if path is not None:
            save(params, state, key, held, "interrupted")
            logger.warning("fit interrupted at step %d; checkpoint saved to %s", held, path)
        raise
    finally:
        bar.close()
    out = result(params, state, done)
    logger.info(
        "fit: %d steps in %.2f s, final loss %s",
        done,
        out.seconds,
        np.array2string(record.losses[done - 1], precision=4) if done else "n/a",
    )
    return out


def _step_of(stacked: PyTree, j: int) -> PyTree:
    """Entry `j` of every array of `stacked` (one step of a call's per-step outputs)."""
    return jax.tree.map(lambda a: a[j] if eqx.is_array(a) else a, stacked)


def _after_step(j: int, *, count: int, carry: tuple, every: tuple) -> tuple:
    """(parameters, state, key) after step `j` of a call of `count` steps: the call's final
    carry for its last step, else entry `j` of its per-step outputs."""
    return carry if j == count - 1 else _step_of(every, j)


def _options(module: Any) -> dict[str, Any]:
    """The JSON-able static options of a solver or penalty (what a checkpoint must match)."""
    out = {}
    for f in dataclasses.fields(module):
        value = getattr(module, f.name)
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[f.name] = value
    return out


def split_per_member(
    model: PyTree,
    params: PyTree,
    static: PyTree,
    per_member: Callable[[PyTree], PyTree] | None,
    members: int | None,
) -> tuple[PyTree, PyTree]:
    """`(own, shared)`: the non-trainable part `static` of `model` split into the arrays
    `per_member(model)` selects (each member's own, leading member axis) and the rest
    (shared by every member); `own` is `None` without `per_member` (package-internal, shared
    by `fit` and `laplace`)."""
    if per_member is None:
        return None, static
    if members is None:
        raise MetaplasticError("per_member needs ensemble=True (it names per-member arrays).")
    if not callable(per_member):
        raise MetaplasticError(
            "per_member must be a function of the model returning the per-member arrays, "
            f"e.g. lambda m: m.initial_weights; got {type(per_member).__name__}."
        )
    false = jax.tree.map(lambda _: False, model)
    try:
        mask = eqx.tree_at(
            per_member, false, replace_fn=lambda node: jax.tree.map(lambda _: True, node)
        )
    except Exception as err:
        raise MetaplasticError(
            f"per_member does not select part of the model: {type(err).__name__}: {err}"
        ) from err
    names = _path_names(eqx.filter(params, mask))
    if names:
        raise MetaplasticError(
            f"per_member selects arrays that train ({', '.join(names)}); it names arrays "
            "that do not train (trainable ones are per member already)."
        )
    own, shared = eqx.partition(static, mask)
    for path, leaf in jax.tree_util.tree_flatten_with_path(own)[0]:
        if not eqx.is_array(leaf) or leaf.ndim == 0 or leaf.shape[0] != members:
            raise MetaplasticError(
                f"per_member array {jax.tree_util.keystr(path) or '(root)'} needs a leading "
                f"member axis of {members}; got shape {getattr(leaf, 'shape', type(leaf))}."
            )
    if not jax.tree.leaves(own):
        raise MetaplasticError("per_member selects no array of the model.")
    return own, shared


def with_member_arrays(objective: Objective, own: PyTree) -> Objective:
    """`objective` with one member's own arrays put back into its model."""
    if own is None:
        return objective
    return eqx.tree_at(lambda o: o.static, objective, eqx.combine(own, objective.static))


def check_not_traced(verb: str, tree: PyTree) -> None:
    """A `MetaplasticError` when `tree` holds a traced array: `verb` is a host loop (it
    compiles its own steps, shows progress, writes checkpoints) and cannot run inside
    `jax.jit`, `jax.vmap` or `jax.grad` (package-internal)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
        raise MetaplasticError(
            f"metaplastic.{verb} was called inside a JAX transformation (jax.jit, jax.vmap, "
            f"jax.grad, ...), on traced arrays. {verb} is a loop on the host that compiles its "
            "own steps: call it outside jit. To fit several models or datasets at once, stack "
            "them and pass ensemble=True (metaplastic.stack_models)."
        )


def stack_models(
    models: Sequence[PyTree],
    *,
    filter_spec: PyTree | None = None,
    per_member: Callable[[PyTree], PyTree] | None = None,
) -> PyTree:
    """An ensemble for `fit(..., ensemble=True)` (and `laplace`, `bootstrap`) from models of
    one structure: their trainable arrays, and the arrays `per_member` selects, stacked
    along a new leading member axis; every other array is shared by the members and must be
    equal in every model.

    **Arguments:**

    - `models`: the members, e.g. `[layer.with_rule(rule_a), layer.with_rule(rule_b)]`:
      the same kind of model with the same hyper-parameters (factors, sizes, activations).
    - `filter_spec`: what trains, as for `fit` (default `rule_filter_spec`: the rules).
    - `per_member`: as for `fit`: the arrays that do not train but differ between members
      (e.g. `lambda m: m.rule.trainable`, each member's own frozen terms).

    **Returns:**

    The stacked model (pass the same `filter_spec` and `per_member` to `fit`).
    """
    models = list(models)
    if not models:
        raise MetaplasticError("stack_models needs at least one model.")
    first = models[0]
    structure = jax.tree.structure(first)
    for i, m in enumerate(models[1:], 1):
        if jax.tree.structure(m) != structure:
            raise MetaplasticError(
                f"stack_models: model {i} differs from model 0 in its structure or its "
                "hyper-parameters (factors, sizes, activations); the members of an ensemble "
                "must differ only in their arrays."
            )
    spec = rule_filter_spec(first) if filter_spec is None else filter_spec
    try:
        trainable = eqx.partition(first, spec)[0]
    except ValueError as err:
        raise MetaplasticError(f"filter_spec does not match the model's structure: {err}") from err
    stacked = jax.tree.map(lambda x: x is not None, trainable, is_leaf=lambda x: x is None)
    if per_member is not None:
        marked = jax.tree.map(lambda _: False, first)
        marked = eqx.tree_at(
            per_member, marked, replace_fn=lambda node: jax.tree.map(lambda _: True, node)
        )
        stacked = jax.tree.map(lambda a, b: a or b, stacked, marked)
    flags = jax.tree.leaves(stacked)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(first)[0]]
    columns = list(zip(*[jax.tree.leaves(m) for m in models]))
    out = []
    for path, flag, column in zip(paths, flags, columns):
        if flag:
            out.append(jnp.stack([jnp.asarray(c) for c in column]))
            continue
        for i, c in enumerate(column[1:], 1):
            if eqx.is_array(c) or eqx.is_array(column[0]):
                a, b = np.asarray(c), np.asarray(column[0])
                same = a.shape == b.shape and bool(np.array_equal(a, b))
            else:
                same = c is column[0] or c == column[0]
            if not same:
                raise MetaplasticError(
                    f"stack_models: {path or '(root)'} differs between model 0 and model {i}, "
                    "but it does not train, so the members share it. Select it with "
                    "per_member=lambda m: ... to give each member its own (and pass the same "
                    "per_member to fit)."
                )
        out.append(column[0])
    return jax.tree.unflatten(structure, out)


def check_stacked(params: PyTree) -> None:
    """A `MetaplasticError` when `ensemble=True` is given a single model: a trainable
    `TaylorRule` whose coefficients have one axis per factor and no member axis
    (package-internal)."""
    for node in jax.tree.leaves(params, is_leaf=lambda n: isinstance(n, TaylorRule)):
        if isinstance(node, TaylorRule) and eqx.is_array(node.coefficients):
            if node.coefficients.ndim == len(node.factors):
                raise MetaplasticError(
                    "ensemble=True needs a stack of models, one per member along a leading "
                    "axis of every trainable array, but this model's Taylor rule has "
                    f"coefficients of shape {tuple(node.coefficients.shape)}: one axis per "
                    f"factor {node.factors}, no member axis. Stack the members with "
                    "metaplastic.stack_models([model_a, model_b, ...]), or fit one model "
                    "without ensemble=True."
                )


def warn_unused_rewards(model: PyTree, data: PyTree) -> None:
    """Warn when a rule of `model` has the factor `r` but `data` (an `ActivityDataset` or
    `RecordingDataset`) carries no reward (none, or all zero): every term with `r` is then
    multiplied by 0, and the data cannot determine it (package-internal)."""
    if not isinstance(data, (ActivityDataset, RecordingDataset)):
        return
    is_rule = lambda n: isinstance(n, AbstractRule)
    rules = [n for n in jax.tree.leaves(model, is_leaf=is_rule) if is_rule(n)]
    if not any("r" in getattr(rule, "factors", ()) for rule in rules):
        return
    rewards = data.rewards
    try:
        silent = rewards is None or not np.any(np.asarray(rewards))
    except Exception:  # arrays spread over other processes: nothing to check here
        return
    if silent:
        warnings.warn(
            "The model's rule has the factor r (reward), but the data carry no reward "
            f"({type(data).__name__}.rewards is {'None' if rewards is None else 'all zero'}): "
            "every term with r is multiplied by 0 and the fit cannot determine it. Pass the "
            "rewards (rewards=...) when building the dataset, or fit a rule over ('x', 'y', "
            "'w') only.",
            stacklevel=3,
        )


def check_ensemble(param_leaves: list, data: PyTree, data_axis: int | None) -> int:
    """The number of ensemble members: the one leading size of the trainable arrays, which
    every data array must have along `data_axis` (`None`: shared data); a
    `MetaplasticError` naming the mismatch otherwise (package-internal)."""
    sizes = {p.shape[0] if p.ndim else None for p in param_leaves}
    if len(sizes) != 1 or None in sizes:
        raise MetaplasticError(
            "ensemble=True needs a leading member axis of one size on every trainable "
            f"array; their leading sizes are {sorted(str(s) for s in sizes)}. Stack the "
            "members with metaplastic.stack_models([model_a, model_b, ...])."
        )
    members = sizes.pop()
    if data_axis is not None:
        if not is_int(data_axis) or data_axis < 0:
            raise MetaplasticError(
                f"data_ensemble_axis must be a non-negative integer or None, got {data_axis!r}."
            )
        for leaf in jax.tree.leaves(data):
            if eqx.is_array(leaf) and (leaf.ndim <= data_axis or leaf.shape[data_axis] != members):
                raise MetaplasticError(
                    f"With data_ensemble_axis={data_axis}, every data array needs {members} "
                    f"members along that axis (one per model); got shape {leaf.shape}."
                )
    return members


def _first_nonfinite_quantity(
    value_np: np.ndarray,
    finite_np: np.ndarray,
    new_params: PyTree,
    param_names: list[str],
    ensemble: bool,
) -> tuple[str, int | None, str]:
    """The first non-finite quantity of a step: the loss, else the first parameter array
    (in tree order) with a non-finite entry. Returns `(quantity, member, description)`."""
    if not np.all(np.isfinite(value_np)):
        if ensemble:
            member = int(np.argmin(np.isfinite(value_np)))
            return "loss", member, f"the loss became {value_np[member]}"
        return "loss", None, f"the loss became {value_np.item()}"
    flat = finite_np.reshape(-1, finite_np.shape[-1])
    row = int(np.argmin(flat.all(axis=1)))
    leaf_i = int(np.argmin(flat[row]))
    leaf = host_array(jax.tree.leaves(new_params)[leaf_i])
    member = None
    if ensemble:
        member, leaf = row, leaf[row]
    quantity = f"parameter {param_names[leaf_i] or '(root)'}"
    return quantity, member, _first_nonfinite(quantity, leaf)


@validates_input
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
    (step, status, configuration, versions).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    header, payload = ckpt.read_checkpoint(path)
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params = eqx.partition(model, filter_spec)[0]
    done = header.get("step")
    shape = header.get("loss_shape")
    if not is_int(done) or done < 0 or not isinstance(shape, list):
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
    return FitResult(fitted, History(l_saved, h_saved), None, 0, 0.0), header
