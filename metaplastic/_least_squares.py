"""A Levenberg–Marquardt fit for least-squares losses with few parameters.

Taylor rules have tens of coefficients, and the loss surface of a plasticity rule fitted to
activity is badly conditioned (monomials such as `x` and `x*y` are nearly collinear when `y`
barely moves). First-order methods crawl along such valleys; a damped Gauss–Newton step, with
the Jacobian computed exactly by forward-mode differentiation through the scan, solves them in
a few iterations.
"""

import logging
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._errors import MetaplasticError
from ._fit import FitResult, History, _leading_size, rule_filter_spec
from ._types import Key


logger = logging.getLogger("metaplastic")

# Damping factors tried in parallel at every iteration, relative to the current damping.
_TRIALS = jnp.array([0.1, 1.0, 10.0, 100.0, 1e4])


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
) -> FitResult:
    """Fit the trainable parameters of `model` by Levenberg–Marquardt on `Σ residuals²`.

    Each iteration computes the Gauss–Newton normal equations `JᵀJ`, `Jᵀr` over a batch of
    trajectories (accumulated `chunk_size` trajectories at a time, so memory does not grow with
    the batch), solves the damped systems `(JᵀJ + λ·I) δ = −Jᵀr` for several λ at once, and
    keeps the step that lowers the loss most (or none). The damping is isotropic, so
    directions that the data barely constrain stay near their starting value instead of
    wandering along a flat valley. The whole iteration is one jitted function, traced once.

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
    - `l2`: a ridge penalty `l2 · Σθ²` added to the mean squared residual, which keeps
      coefficients that the data cannot pin down (e.g. under measurement noise) near zero.
    - `tol`: stop once the mean squared residual falls below this value.

    **Returns:**

    A `FitResult`; `history.loss` holds the mean squared residual (over every entry the
    residual function returns, masked ones included as zeros) after each iteration.
    """
    start = time.perf_counter()
    if key is None:
        key = jr.key(0)
    if not isinstance(iterations, int) or iterations < 1:
        raise MetaplasticError(f"iterations must be a positive integer, got {iterations!r}.")
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params, static = eqx.partition(model, filter_spec)
    data_axis = data_ensemble_axis if ensemble else None
    if ensemble:
        template = jax.tree.map(lambda a: a[0], params)
        _, unravel = ravel_pytree(template)
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
    else:
        flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    n = _leading_size(data, 1 if data_axis == 0 else 0)
    batch = n if batch_size is None else min(batch_size, n)
    if batch % chunk_size:
        raise MetaplasticError(f"chunk_size {chunk_size} must divide the batch size {batch}.")
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
        jtj = jtj + ridge * jnp.eye(theta.size, dtype=jtj.dtype)
        jtr = jtr + ridge * theta
        rr = rr + ridge * theta @ theta
        scale = jnp.maximum(jnp.max(jnp.diag(jtj)), jnp.finfo(jtj.dtype).tiny)
        lam = jnp.where(lam > 0, lam, damping * scale)
        lams = lam * _TRIALS.astype(jtj.dtype)
        eye = jnp.eye(theta.size, dtype=jtj.dtype)
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
        return theta, lam, loss, improved, finite

    if ensemble:
        iteration = jax.vmap(iteration, in_axes=(0, 0, data_axis, None))
        lam = jnp.zeros(flat.shape[0], flat.dtype)
    else:
        lam = jnp.zeros((), flat.dtype)
    step = jax.jit(iteration)

    theta = flat
    losses, snapshots = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, desc="fit (Levenberg-Marquardt)", unit="it", leave=False)
    try:
        for it in range(iterations):
            key, sub = jr.split(key)
            idx = jnp.arange(n) if batch == n else jr.choice(sub, n, (batch,), replace=False)
            theta, lam, loss, improved, finite = step(theta, lam, data, idx)
            if not np.all(np.asarray(finite)):
                logger.warning(
                    "iteration %d: non-finite Jacobian or residuals for %d fit(s); their "
                    "parameters were kept and the damping raised",
                    it,
                    int(np.sum(~np.asarray(finite))),
                )
            loss_np = np.asarray(loss)
            losses.append(loss_np)
            snapshots.append(theta)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(np.max(loss_np)):.3g}")
            logger.debug("LM iteration %d: loss %s", it, loss_np)
            model_now = None
            if callback is not None:
                p = (jax.vmap(unravel) if ensemble else unravel)(theta)
                model_now = eqx.combine(p, static)
            if model_now is not None and callback(it, float(np.mean(loss_np)), model_now):
                break
            if np.all(loss_np < tol):
                break
    finally:
        if bar is not None:
            bar.close()
    unravel_all = jax.vmap(unravel) if ensemble else unravel
    history = History(
        loss=np.stack(losses),
        params=jax.tree.map(
            lambda *xs: np.stack([np.asarray(x) for x in xs]), *[unravel_all(s) for s in snapshots]
        ),
    )
    model = eqx.combine(unravel_all(theta), static)
    return FitResult(model, history, traces[0], time.perf_counter() - start)
