"""The generic fitting loop: one jitted optimisation step, optax, minibatches, ensembles."""

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import PyTree

from ._errors import MetaplasticError
from ._types import Key, Scalar
from .rules import AbstractRule, TaylorRule


logger = logging.getLogger("metaplastic")


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
    sizes = {leaf.shape[axis] for leaf in leaves if leaf.ndim > axis}
    if len(sizes) != 1:
        raise MetaplasticError(
            f"Dataset arrays disagree on the number of trajectories: {sorted(sizes)}."
        )
    n = sizes.pop()
    if n == 0:
        raise MetaplasticError("The dataset is empty.")
    return n


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
) -> FitResult:
    """Fit the trainable parameters of `model` (by default the rule parameters θ) to `data`.

    Each epoch runs `ceil(n / batch_size)` optimisation steps over a fresh permutation of the
    trajectories, inside one jitted function (loss, gradient and optax update); a fit traces
    it exactly once.

    **Arguments:**

    - `model`: any PyTree containing a plasticity rule, e.g. a `PlasticDense` layer.
    - `data`: a PyTree of arrays with the trajectories along the leading axis.
    - `loss`: `loss(model, batch) -> scalar`, e.g. `metaplastic.losses.activity_mse`.
    - `optimizer`: an optax transformation (default `optax.adam(1e-2)`).
    - `epochs`: number of passes over the data.
    - `batch_size`: trajectories per step; `None` is full batch.
    - `filter_spec`: a PyTree of bools like `model` selecting what trains
      (default `rule_filter_spec(model)`: the rule parameters only).
    - `l1`, `l2`: penalties on the Taylor coefficients.
    - `key`: PRNG key for the batch order (default `jax.random.key(0)`).
    - `progress`: show a tqdm progress bar.
    - `callback`: `callback(epoch, loss, model)` after each epoch; return `True` to stop.
    - `ensemble`: fit a batch of models at once (vmapped): every trainable array of `model`
      has a leading member axis; `data` has one too at `data_ensemble_axis`
      (`None`: every member sees the same data).

    **Returns:**

    A `FitResult` with the fitted model and the `History`.
    """
    start = time.perf_counter()
    if optimizer is None:
        optimizer = optax.adam(1e-2)
    if not isinstance(epochs, int) or epochs < 1:
        raise MetaplasticError(f"epochs must be a positive integer, got {epochs!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise MetaplasticError(
            f"batch_size must be a positive integer or None, got {batch_size!r}."
        )
    if key is None:
        key = jr.key(0)
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params, static = eqx.partition(model, filter_spec)
    if not jax.tree.leaves(params):
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    data_axis = data_ensemble_axis if ensemble else None
    n = _leading_size(data, 0 if data_axis is None or data_axis != 0 else 1)

    traces = [0]

    def loss_fn(p, batch):
        m = eqx.combine(p, static)
        return loss(m, batch) + taylor_penalty(m, l1, l2)

    def one_step(carry, idx, d):
        p, s = carry
        batch = jax.tree.map(lambda a: a[idx] if eqx.is_array(a) else a, d)
        value, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, s = optimizer.update(grads, s, p)
        p = eqx.apply_updates(p, updates)
        return (p, s), value

    def epoch_fn(p, s, d, indices):
        traces[0] += 1
        (p, s), values = jax.lax.scan(lambda c, i: one_step(c, i, d), (p, s), indices)
        return p, s, jnp.mean(values)

    if ensemble:
        epoch_fn = jax.vmap(epoch_fn, in_axes=(0, 0, data_axis, None))
        opt_state = jax.vmap(optimizer.init)(params)
    else:
        opt_state = optimizer.init(params)
    opt_state = _place_like(opt_state, params)
    run_epoch = jax.jit(epoch_fn)

    losses: list[np.ndarray] = []
    snapshots: list[PyTree] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="fit", unit="epoch", leave=False)
    try:
        for epoch in range(epochs):
            key, sub = jr.split(key)
            indices = jnp.asarray(_batch_indices(sub, n, batch_size))
            params, opt_state, value = run_epoch(params, opt_state, data, indices)
            value_np = np.asarray(value)
            losses.append(value_np)
            snapshots.append(params)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(np.mean(value_np)):.4g}")
            if not np.all(np.isfinite(value_np)):
                raise MetaplasticError(f"The loss became non-finite at epoch {epoch}.")
            if callback is not None and callback(
                epoch, float(np.mean(value_np)), eqx.combine(params, static)
            ):
                logger.info("fit stopped by callback at epoch %d", epoch)
                break
    finally:
        if bar is not None:
            bar.close()
    history = History(
        loss=np.stack(losses),
        params=jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *snapshots),
    )
    return FitResult(
        model=eqx.combine(params, static),
        history=history,
        n_traces=traces[0],
        seconds=time.perf_counter() - start,
    )
