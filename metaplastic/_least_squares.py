"""A Levenberg–Marquardt fit for least-squares losses with few parameters.

Taylor rules have tens of coefficients, and the loss surface of a plasticity rule fitted to
activity is badly conditioned (monomials such as `x` and `x*y` are nearly collinear when `y`
barely moves). First-order methods crawl along such valleys; a damped Gauss–Newton step, with
the Jacobian computed exactly by forward-mode differentiation through the scan, solves them in
a few iterations.
"""

import logging
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
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from . import _checkpoint as ckpt
from ._errors import FitDivergedError, MetaplasticError
from ._fit import (
    CHECKPOINT_FILE,
    FitResult,
    History,
    _check_key,
    _key_data,
    _key_from_data,
    _leading_size,
    _path_names,
    check_scalar_options,
    checkpoint_config,
    open_checkpoint,
    preflight,
    rule_filter_spec,
)
from ._progress import Progress
from ._types import Key


logger = logging.getLogger("metaplastic")


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def fit_least_squares(
    model: PyTree,
    data: PyTree,
    *,
    residuals: Callable[[PyTree, PyTree], Float[Array, "..."]],
    iterations: int = 30,
    batch_size: int | None = None,
    chunk_size: int = 1,
    filter_spec: PyTree | None = None,
    damping: float = 1e-3,
    tol: float = 1e-12,
    key: Key | None = None,
    progress: bool = True,
    callback: Callable[[int, float, PyTree], bool | None] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
) -> FitResult:
    """Fit the trainable parameters of `model` by Levenberg–Marquardt on `Σ residuals²`.

    Each iteration computes the Gauss–Newton normal equations `JᵀJ`, `Jᵀr` over a batch of
    trajectories (accumulated `chunk_size` trajectories at a time, so memory does not grow with
    the batch), then tries damped steps `(JᵀJ + λ·I) δ = −Jᵀr`, accepting the first that
    lowers the loss and adapting λ.

    **Arguments:**

    - `model`, `data`, `filter_spec`, `key`, `progress`, `callback`: as in `fit`.
    - `residuals`: `residuals(model, batch) -> array`; entries that are masked out must be 0.
    - `iterations`: number of Gauss–Newton iterations (epochs of the history).
    - `batch_size`: trajectories per iteration, a fresh random subset each time (`None`: all).
    - `chunk_size`: trajectories per forward-mode Jacobian evaluation; must divide the batch.
    - `damping`: the initial λ, relative to the largest diagonal entry of `JᵀJ`. The damping
      is isotropic (`λ·I`), so directions the data barely constrain stay near their start
      instead of wandering along the flat valley.
    - `tol`: stop once the loss falls below this value.
    - `checkpoint_dir`, `checkpoint_every`, `resume`: as in `fit` (default: a checkpoint
      after every iteration); the resumed fit ends exactly where an uninterrupted one does.

    **Returns:**

    A `FitResult`; `history.loss` holds the mean squared residual after each iteration.
    """
    start = time.perf_counter()
    check_scalar_options(
        checkpoint_every=checkpoint_every,
        iterations=iterations,
        chunk_size=chunk_size,
        batch_size=batch_size,
        damping=damping,
        tol=tol,
    )
    if not damping > 0:
        raise MetaplasticError(f"damping must be positive, got {damping!r}.")
    if not callable(residuals):
        raise MetaplasticError(
            f"residuals must be a function residuals(model, batch), got {residuals!r}."
        )
    key = _check_key(key)
    if resume and checkpoint_dir is None:
        raise MetaplasticError("resume=True needs a checkpoint_dir to resume from.")
    if checkpoint_every is None:
        checkpoint_every = 1
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params, static = eqx.partition(model, filter_spec)
    flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    n = _leading_size(data, 0)
    batch = n if batch_size is None else min(batch_size, n)
    if batch % chunk_size:
        raise MetaplasticError(f"chunk_size {chunk_size} must divide the batch size {batch}.")
    out = preflight(
        lambda p, d: residuals(eqx.combine(p, static), d), params, data, np.arange(chunk_size)
    )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise MetaplasticError(f"residuals must return floating-point values, got {out.dtype}.")
    traces = [0]

    def res_fn(theta, d):
        return jnp.ravel(residuals(eqx.combine(unravel(theta), static), d))

    @jax.jit
    def normal_equations(theta, d, idx):
        traces[0] += 1
        chunks = idx.reshape(-1, chunk_size)

        def one(chunk):
            sub = jax.tree.map(lambda a: a[chunk] if eqx.is_array(a) else a, d)
            r = res_fn(theta, sub)
            jac = jax.jacfwd(res_fn)(theta, sub)
            return jac.T @ jac, jac.T @ r, r @ r, jnp.sum(r != 0)

        jtj, jtr, rr, cnt = jax.lax.map(one, chunks)
        return jtj.sum(0), jtr.sum(0), rr.sum(), cnt.sum()

    @jax.jit
    def sum_squares(theta, d, idx):
        sub = jax.tree.map(lambda a: a[idx] if eqx.is_array(a) else a, d)
        r = res_fn(theta, sub)
        return r @ r

    theta = np.asarray(flat, dtype=np.float64)
    lam = np.nan  # set from the first Jacobian
    losses = np.zeros(iterations, np.float64)
    history_params = jax.tree.map(lambda p: np.zeros((iterations,) + p.shape, p.dtype), params)
    history_leaves = jax.tree.leaves(history_params)

    def as_params(t):
        return unravel(jnp.asarray(t, dtype=flat.dtype))

    def result(t, done):
        history = History(
            loss=losses[:done].copy(),
            params=jax.tree.map(lambda buf: buf[:done].copy(), history_params),
        )
        model_t = eqx.combine(as_params(t), static)
        return FitResult(model_t, history, traces[0], time.perf_counter() - start)

    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    config: dict[str, Any] = {}
    if path is not None:
        config = checkpoint_config(
            model,
            data,
            key,
            _path_names(params),
            method="levenberg-marquardt",
            n_trajectories=n,
            batch_size=batch,
            chunk_size=chunk_size,
            damping=float(damping),
            tol=float(tol),
        )

    def state_tree(t, lam_, k, done):
        model_arrays = eqx.filter(eqx.combine(as_params(t), static), eqx.is_array)
        hist = jax.tree.map(lambda buf: buf[:done], history_params)
        extra = np.asarray([lam_], np.float64)
        return (model_arrays, losses[:done], hist, _key_data(k), np.asarray(t, np.float64), extra)

    def save(t, lam_, k, done, status, extra=None):
        header = {
            "epoch": done,
            "epochs": iterations,
            "status": status,
            "config": config,
            "loss_shape": [],
            "loss_dtype": "float64",
        }
        header.update(extra or {})
        ckpt.write_checkpoint(path, state_tree(t, lam_, k, done), header)

    done, converged = 0, False
    opened = open_checkpoint(path, resume, config, iterations)
    if opened is not None:
        header, payload = opened
        done = int(header["epoch"])
        like = state_tree(theta, lam, key, done)
        _, l_saved, h_saved, k_saved, theta, lam_saved = ckpt.load_state(
            path, header, payload, like
        )
        lam = float(lam_saved[0])
        key = _key_from_data(k_saved, key)
        losses[:done] = l_saved
        for buf, saved in zip(history_leaves, jax.tree.leaves(h_saved)):
            buf[:done] = saved
        converged = header.get("status") == "converged"
        logger.info("fit_least_squares: resuming from %s at iteration %d", path, done)

    bar = Progress(
        iterations, desc="fit (Levenberg-Marquardt)", unit="it", enabled=progress, initial=done
    )
    try:
        while done < iterations and not converged:
            it = done
            new_key, sub = jr.split(key)
            idx = jnp.arange(n) if batch == n else jr.choice(sub, n, (batch,), replace=False)
            theta_j = jnp.asarray(theta, dtype=flat.dtype)
            jtj, jtr, rr, cnt = (
                np.asarray(v, dtype=np.float64) for v in normal_equations(theta_j, data, idx)
            )
            if not (np.all(np.isfinite(jtj)) and np.isfinite(rr)):
                quantity = "residuals" if not np.isfinite(rr) else "Jacobian"
                if path is not None:
                    diverged = {"epoch": it, "quantity": quantity, "member": None}
                    save(theta, lam, key, it, "diverged", {"diverged": diverged})
                raise FitDivergedError(
                    f"The Levenberg-Marquardt fit diverged in iteration {it}: the {quantity} at "
                    "the current parameters became non-finite. The last finite parameters are "
                    "in err.last_finite_model and err.result"
                    + ("" if path is None else f", and saved in {path}")
                    + ".",
                    epoch=it,
                    quantity=quantity,
                    member=None,
                    result=result(theta, it),
                    checkpoint=None if path is None else str(path),
                )
            diag = np.diag(jtj).copy()
            scale = max(diag.max(), np.finfo(np.float64).tiny)
            if np.isnan(lam):
                lam = damping * scale
            accepted = False
            for _ in range(30):
                a = jtj + lam * np.eye(len(theta))
                step = -np.linalg.solve(a, jtr)
                predicted = -(2 * jtr @ step + step @ jtj @ step)
                candidate = theta + step
                new_rr = float(sum_squares(jnp.asarray(candidate, dtype=flat.dtype), data, idx))
                actual = rr - new_rr
                if np.isfinite(new_rr) and actual > 0:
                    rho = actual / max(predicted, np.finfo(np.float64).tiny)
                    theta = candidate
                    lam = lam * (1 / 3 if rho > 0.75 else 1.0 if rho > 0.25 else 2.0)
                    rr = new_rr
                    accepted = True
                    break
                lam *= 4.0
            loss = rr / max(cnt, 1)
            losses[it] = loss
            for buf, leaf in zip(history_leaves, jax.tree.leaves(as_params(theta))):
                buf[it] = np.asarray(leaf)
            key, done = new_key, it + 1
            converged = not accepted or loss < tol
            bar.update(1, loss=float(loss), damping=f"{lam / scale:.1e}")
            logger.debug("LM iteration %d: loss %.3e, lambda %.2e", it, loss, lam)
            if path is not None and (
                converged or done == iterations or done % checkpoint_every == 0
            ):
                status = (
                    "converged" if converged else "finished" if done == iterations else "running"
                )
                save(theta, lam, key, done, status)
            if callback is not None and callback(
                it, float(loss), eqx.combine(as_params(theta), static)
            ):
                if path is not None and not converged and done < iterations:
                    save(theta, lam, key, done, "stopped")
                break
    except KeyboardInterrupt:
        if path is not None:
            save(theta, lam, key, done, "interrupted")
        raise
    finally:
        bar.close()
    return result(theta, done)
