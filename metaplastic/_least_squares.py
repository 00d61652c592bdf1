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
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._errors import FitDivergedError, MetaplasticError
from ._fit import (
    FitResult,
    _check_key,
    _FitRecord,
    _leading_size,
    _path_names,
    check_scalar_options,
    checkpoint_config,
    preflight,
    rule_filter_spec,
)
from ._progress import Progress
from ._types import Key


logger = logging.getLogger("metaplastic")

# Damping factors tried in parallel at every iteration, relative to the current damping.
_TRIALS = (0.1, 1.0, 10.0, 100.0, 1e4)


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
    l2: float = 0.0,
    tol: float = 0.0,
    key: Key | None = None,
    progress: bool = True,
    callback: Callable[[int, float, PyTree], bool | None] | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
) -> FitResult:
    """Fit the trainable parameters of `model` by Levenberg–Marquardt on `Σ residuals²`.

    Each iteration computes the Gauss–Newton normal equations `JᵀJ`, `Jᵀr` over a batch of
    trajectories (accumulated `chunk_size` trajectories at a time, so memory does not grow with
    the batch), solves the damped systems `(JᵀJ + λ·I) δ = −Jᵀr` for several λ at once, and
    keeps the step that lowers the loss most (or none). The damping is isotropic, so
    directions that the data barely constrain stay near their starting value instead of
    wandering along a flat valley. The whole iteration is one jitted function, traced once,
    so seeds or grid cells can be fitted together as a vmapped ensemble.

    Run it under `jax.enable_x64(True)` when the problem is badly conditioned: float32
    normal equations cannot resolve nearly collinear monomials.

    **Arguments:**

    - `model`, `data`, `filter_spec`, `key`, `progress`, `callback`, `ensemble`,
      `data_ensemble_axis`: as in `fit`.
    - `residuals`: `residuals(model, batch) -> array`; entries that are masked out must be 0.
    - `iterations`: number of Gauss–Newton iterations (epochs of the history).
    - `batch_size`: trajectories per iteration, a fresh random subset each time (`None`: all).
    - `chunk_size`: trajectories per forward-mode Jacobian evaluation; must divide the batch.
    - `damping`: the initial λ, relative to the largest diagonal entry of `JᵀJ`.
    - `l2`: a ridge penalty `l2 · Σθ²` added to the mean squared residual.
    - `tol`: stop once the mean squared residual of every fit falls below this value.
    - `checkpoint_dir`, `checkpoint_every`, `resume`: as in `fit` (default: a checkpoint
      after every iteration); the resumed fit ends exactly where an uninterrupted one does.

    An iteration whose Jacobian overflows (non-finite) leaves that fit's parameters unchanged
    and raises its damping; the parameters themselves are never replaced by non-finite ones.

    **Returns:**

    A `FitResult`; `history.loss` holds the mean squared residual (over every entry the
    residual function returns, masked ones included as zeros) after each iteration, with a
    trailing member axis for an ensemble.
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
    if not (isinstance(l2, (int, float)) and l2 >= 0):
        raise MetaplasticError(f"l2 must be a non-negative number, got {l2!r}.")
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
    data_axis = data_ensemble_axis if ensemble else None
    if ensemble:
        template = jax.tree.map(lambda a: a[0], params)
        _, unravel = ravel_pytree(template)
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
        members = (flat.shape[0],)
    else:
        flat, unravel = ravel_pytree(params)
        members = ()
    if flat.size == 0:
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    n = _leading_size(data, 1 if data_axis == 0 else 0)
    batch = n if batch_size is None else min(batch_size, n)
    if batch % chunk_size:
        raise MetaplasticError(f"chunk_size {chunk_size} must divide the batch size {batch}.")
    out = preflight(
        lambda p, d: residuals(eqx.combine(p, static), d),
        params,
        data,
        np.arange(chunk_size),
        in_axes=(0, data_axis) if ensemble else None,
    )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise MetaplasticError(f"residuals must return floating-point values, got {out.dtype}.")
    traces = [0]

    def res_fn(theta, d):
        return jnp.ravel(residuals(eqx.combine(unravel(theta), static), d))

    def take(d, idx):
        return jax.tree.map(lambda a: a[idx] if eqx.is_array(a) else a, d)

    def iteration(theta, lam, d, idx):
        traces[0] += 1

        def one(chunk):
            sub = take(d, chunk)
            r = res_fn(theta, sub)
            jac = jax.jacfwd(res_fn)(theta, sub)
            return jac.T @ jac, jac.T @ r, r @ r, r.size

        jtj, jtr, rr, cnt = jax.lax.map(one, idx.reshape(-1, chunk_size))
        jtj, jtr, rr, cnt = jtj.sum(0), jtr.sum(0), rr.sum(), cnt.sum()
        # The ridge term, scaled so that it weighs against the *mean* squared residual.
        ridge = l2 * jnp.maximum(cnt, 1)
        eye = jnp.eye(theta.size, dtype=jtj.dtype)
        jtj = jtj + ridge * eye
        jtr = jtr + ridge * theta
        rr = rr + ridge * theta @ theta
        scale = jnp.maximum(jnp.max(jnp.diag(jtj)), jnp.finfo(jtj.dtype).tiny)
        lam = jnp.where(lam > 0, lam, damping * scale)
        lams = lam * jnp.asarray(_TRIALS, jtj.dtype)
        steps = jax.vmap(lambda lm: -jnp.linalg.solve(jtj + lm * eye, jtr))(lams)
        cand = theta + steps
        sub = take(d, idx)
        new_rr = jax.vmap(lambda th: jnp.sum(res_fn(th, sub) ** 2) + ridge * th @ th)(cand)
        new_rr = jnp.where(
            jnp.isfinite(new_rr) & jnp.all(jnp.isfinite(cand), axis=1), new_rr, jnp.inf
        )
        best = jnp.argmin(new_rr)
        # A Jacobian that overflowed gives no usable step: stay put and raise the damping.
        finite = jnp.all(jnp.isfinite(jtj)) & jnp.all(jnp.isfinite(jtr)) & jnp.isfinite(rr)
        improved = finite & (new_rr[best] < rr)
        theta = jnp.where(improved, cand[best], theta)
        # Move the damping towards the step that worked; raise it sharply if none did.
        lam = jnp.where(improved, lams[best] / 3.0, lam * 1e3)
        loss = jnp.where(improved, new_rr[best], rr) / jnp.maximum(cnt, 1)
        return theta, lam, loss, finite, jnp.isfinite(rr)

    if ensemble:
        iteration = jax.vmap(iteration, in_axes=(0, 0, data_axis, None))
    step = jax.jit(iteration)
    unravel_all = jax.vmap(unravel) if ensemble else unravel

    theta = np.asarray(flat)
    lam = np.zeros(members, theta.dtype)  # zero: set from the first Jacobian

    def as_model(t):
        return eqx.combine(unravel_all(jnp.asarray(t)), static)

    config: dict[str, Any] = {}
    if checkpoint_dir is not None:
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
            l2=float(l2),
            tol=float(tol),
            ensemble=bool(ensemble),
        )
    record = _FitRecord(params, iterations, members, theta.dtype, checkpoint_dir, config, {})
    path = record.path

    def result(t, done):
        return FitResult(as_model(t), record.history(done), traces[0], time.perf_counter() - start)

    def save(t, lam_, k, done, status, more=None):
        record.save(as_model(t), k, done, (np.asarray(t), np.asarray(lam_)), status, more)

    done, converged = 0, False
    resumed = record.resume(resume, as_model(theta), key, (theta, lam))
    if resumed is not None:
        done, header, _, key, (theta, lam) = resumed
        theta, lam = np.asarray(theta), np.asarray(lam)
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
            new_theta, new_lam, loss, finite, rr_finite = step(
                jnp.asarray(theta), jnp.asarray(lam), data, idx
            )
            if not np.all(np.asarray(rr_finite)):
                # The residuals themselves are non-finite at the current parameters: no step
                # can be judged, so stop and hand back these (finite) parameters.
                member = None if not ensemble else int(np.argmin(np.asarray(rr_finite)))
                if path is not None:
                    diverged = {"epoch": it, "quantity": "residuals", "member": member}
                    save(theta, lam, key, it, "diverged", {"diverged": diverged})
                raise FitDivergedError(
                    f"The Levenberg-Marquardt fit diverged in iteration {it}"
                    + ("" if member is None else f" (ensemble member {member})")
                    + ": the residuals at the current parameters are non-finite. The last "
                    "finite parameters are in err.last_finite_model and err.result"
                    + ("" if path is None else f", and saved in {path}")
                    + ".",
                    epoch=it,
                    quantity="residuals",
                    member=member,
                    result=result(theta, it),
                    checkpoint=None if path is None else str(path),
                )
            theta, lam, loss = np.asarray(new_theta), np.asarray(new_lam), np.asarray(loss)
            if not np.all(np.asarray(finite)):
                logger.warning(
                    "iteration %d: non-finite Jacobian or residuals for %d fit(s); their "
                    "parameters were kept and the damping raised",
                    it,
                    int(np.sum(~np.asarray(finite))),
                )
            record.add(it, loss, unravel_all(jnp.asarray(theta)))
            key, done = new_key, it + 1
            converged = bool(np.all(loss < tol))
            bar.update(1, loss=float(np.max(loss)))
            logger.debug("LM iteration %d: loss %s", it, loss)
            if path is not None and (
                converged or done == iterations or done % checkpoint_every == 0
            ):
                status = (
                    "converged" if converged else "finished" if done == iterations else "running"
                )
                save(theta, lam, key, done, status)
            if callback is not None and callback(it, float(np.mean(loss)), as_model(theta)):
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
