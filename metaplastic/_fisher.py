"""Fisher scoring (Gauss–Newton for the Bernoulli likelihood) for fitting plasticity rules to
binary choices, vmapped over an ensemble and jitted as a whole.

A behavioural fit has few parameters (81 Taylor coefficients, a 61-parameter MLP) and a badly
conditioned likelihood: monomials such as `x*r` and `x^2*r` are almost collinear when the
driven inputs sit near one rate, so Adam moves them in lockstep and stalls in a valley of
nearly equivalent rules. The Gauss–Newton matrix `Jᵀ diag(p(1−p)) J` of the logits, with
Levenberg–Marquardt damping, resolves such directions in a few iterations. The Jacobian of
all logits is computed exactly by forward-mode differentiation through the trial scan.
"""

import logging
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._errors import MetaplasticError
from ._fit import FitResult, History, rule_filter_spec


logger = logging.getLogger("metaplastic")


class _Flat:
    """The trainable arrays as one flat vector θ, and back. Flattening runs on the host with
    numpy and unflattening traces inside the jitted fit (or runs on numpy arrays): the same
    steps as JAX operations outside a jit would each compile once for their shape.

    `lead` is the number of leading (ensemble member) axes of every array."""

    def __init__(self, tree: PyTree, lead: int):
        leaves, self.treedef = jax.tree.flatten(tree)
        arrays = [np.asarray(leaf) for leaf in leaves]
        self.lead = lead
        self.shapes = [a.shape[lead:] for a in arrays]
        self.dtypes = [a.dtype for a in arrays]
        self.dtype = np.result_type(*self.dtypes)
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.size = self.offsets[-1]
        self.flat = np.concatenate(
            [a.reshape(a.shape[:lead] + (-1,)).astype(self.dtype) for a in arrays], axis=-1
        )

    def unravel(self, theta: Array | np.ndarray) -> PyTree:
        """The arrays of `theta` `(..., size)`, each with the leading axes of `theta`."""
        head = theta.shape[:-1]
        parts = [
            theta[..., a:b].reshape(head + shape).astype(dtype)
            for a, b, shape, dtype in zip(
                self.offsets[:-1], self.offsets[1:], self.shapes, self.dtypes
            )
        ]
        return jax.tree.unflatten(self.treedef, parts)


# Damping candidates tried in parallel at each iteration, relative to the current damping.
_CANDIDATES = (0.1, 1.0, 10.0, 100.0)


def fit_bernoulli_gauss_newton(
    model: PyTree,
    data: PyTree,
    *,
    logits: Callable[[PyTree, PyTree], tuple[Array, Array, Array]],
    jacobian: Callable[[Array, Callable[[Array], PyTree], PyTree], tuple[Array, Array]]
    | None = None,
    iterations: int = 20,
    l1: float = 0.0,
    l1_smoothing: float = 1e-3,
    damping: float = 1e-3,
    filter_spec: PyTree | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
) -> FitResult:
    """Fit the trainable parameters of `model` to binary observations by damped Fisher
    scoring on the mean Bernoulli negative log-likelihood (plus an optional L1 penalty).

    Each iteration computes the Jacobian `J` of every logit with respect to the parameters
    θ (forward mode), the gradient `g = Jᵀ(p − c)/n` and the Gauss–Newton matrix
    `H = Jᵀ diag(p(1 − p)) J / n` over the valid observations, then tries the steps
    `−(H + λ_k · max diag H · I)⁻¹ g` for a few damping values `λ_k` at once and keeps the
    best one if it lowers the objective (otherwise the damping grows). Everything, iterations
    included, runs in one jitted function, vmapped over ensemble members.

    **Arguments:**

    - `model`: a PyTree holding the parameters (by default the rule parameters).
    - `data`: the data, passed whole to `logits` (no minibatches).
    - `logits`: `logits(model, data) -> (logits, targets, mask)`, arrays of one shape:
      the model's logits, the 0/1 observations and `True` on the valid entries.
    - `jacobian`: optionally, a faster exact Jacobian: `jacobian(theta, to_model, data)`
      returns the logits and `∂logits/∂θ` (shape `logits.shape + (θ.size,)`), where `θ` is
      the flat vector of trainable parameters and `to_model(θ)` the model. Default:
      `jax.jacfwd` of `logits`.
    - `iterations`: the number of Gauss–Newton iterations.
    - `l1`: weight of a smoothed L1 penalty `l1 · Σ sqrt(θ² + s²)` on every trainable
      parameter (use it for Taylor coefficients); `l1_smoothing` is `s`.
    - `damping`: the initial damping `λ`, relative to the largest diagonal entry of `H`.
    - `filter_spec`: what trains (default `rule_filter_spec(model)`).
    - `ensemble`, `data_ensemble_axis`: as in `metaplastic.fit`: every trainable array has a
      leading member axis; `data` has one at `data_ensemble_axis` (`None`: shared).

    **Returns:**

    A `FitResult`; `history.loss` holds the objective after each iteration
    (`(iterations,)`, or `(iterations, members)`), `history.params` the parameters.
    """
    start = time.perf_counter()
    if not isinstance(iterations, int) or iterations < 1:
        raise MetaplasticError(f"iterations must be a positive integer, got {iterations!r}.")
    if l1 < 0 or l1_smoothing <= 0 or damping <= 0:
        raise MetaplasticError(
            f"need l1 >= 0, l1_smoothing > 0 and damping > 0; got {l1}, {l1_smoothing}, {damping}."
        )
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    params, static = eqx.partition(model, filter_spec)
    if not jax.tree.leaves(params):
        raise MetaplasticError("filter_spec selects no trainable array in the model.")
    flat = _Flat(params, 1 if ensemble else 0)
    unravel = flat.unravel
    traces = [0]

    def to_model(theta):
        return eqx.combine(unravel(theta), static)

    def objective_parts(theta, d):
        return logits(to_model(theta), d)

    def penalty(theta):
        return l1 * jnp.sum(jnp.sqrt(theta**2 + l1_smoothing**2))

    def mean_nll(z, c, m):
        nll = -(c * jax.nn.log_sigmoid(z) + (1 - c) * jax.nn.log_sigmoid(-z))
        return jnp.sum(jnp.where(m, nll, 0.0)) / jnp.maximum(jnp.sum(m), 1)

    def objective(theta, d):
        z, c, m = objective_parts(theta, d)
        return mean_nll(z, c, m) + penalty(theta)

    def iteration(carry, _, d, c, m):
        theta, lam, value = carry
        if jacobian is None:
            z, jvp = jax.linearize(lambda t: objective_parts(t, d)[0], theta)
            jac = jax.vmap(jvp, out_axes=-1)(jnp.eye(theta.size, dtype=theta.dtype))
        else:
            z, jac = jacobian(theta, to_model, d)
        count = jnp.maximum(jnp.sum(m), 1)
        jac = jnp.where(m[..., None], jac, 0.0).reshape(-1, theta.size)
        p = jax.nn.sigmoid(z).reshape(-1)
        resid = jnp.where(m.reshape(-1), p - c.reshape(-1), 0.0)
        weight = p * (1 - p)
        root = l1_smoothing**2 + theta**2
        grad = jac.T @ resid / count + l1 * theta / jnp.sqrt(root)
        hess = (jac * weight[:, None]).T @ jac / count
        hess = hess + jnp.diag(l1 * l1_smoothing**2 / root**1.5)
        scale = jnp.maximum(jnp.max(jnp.diag(hess)), jnp.finfo(hess.dtype).tiny)
        lams = lam * jnp.asarray(_CANDIDATES, theta.dtype)
        eye = jnp.eye(theta.size, dtype=theta.dtype)

        def candidate(lam_k):
            step = -jnp.linalg.solve(hess + lam_k * scale * eye, grad)
            new = theta + step
            val = objective(new, d)
            return new, jnp.where(jnp.isfinite(val), val, jnp.inf)

        news, vals = jax.vmap(candidate)(lams)
        best = jnp.argmin(vals)
        better = vals[best] < value
        theta = jnp.where(better, news[best], theta)
        value = jnp.where(better, vals[best], value)
        # After a success, start the next iteration from the damping that worked, a little
        # lower; after a failure, damp harder than every candidate tried.
        lam = jnp.where(better, lams[best] / 3.0, lams[-1] * 10.0)
        return (theta, lam, value), (value, theta)

    def run(theta0, d):
        traces[0] += 1
        # The targets and the mask do not depend on θ.
        z0, c, m = objective_parts(theta0, d)
        value0 = mean_nll(z0, c, m) + penalty(theta0)
        lam0 = jnp.asarray(damping, theta0.dtype)
        _, (values, thetas) = jax.lax.scan(
            lambda carry, _: iteration(carry, None, d, c, m),
            (theta0, lam0, value0),
            None,
            length=iterations,
        )
        return values, thetas

    theta0 = jnp.asarray(flat.flat)
    fn = jax.vmap(run, in_axes=(0, data_ensemble_axis)) if ensemble else run
    compiled = jax.jit(fn).lower(theta0, data).compile()
    compiled_at = time.perf_counter()
    values, thetas = (np.asarray(a) for a in compiled(theta0, data))
    if ensemble:  # (members, iterations, ...) -> (iterations, members, ...)
        values, thetas = values.T, np.swapaxes(thetas, 0, 1)
    final = jax.tree.map(jnp.asarray, unravel(thetas[-1]))
    history_params = unravel(thetas)
    logger.info(
        "Gauss-Newton fit: compiled in %.2f s, ran %d iterations in %.2f s",
        compiled_at - start,
        iterations,
        time.perf_counter() - compiled_at,
    )
    if not np.all(np.isfinite(values)):
        raise MetaplasticError("The objective became non-finite during the Gauss-Newton fit.")
    return FitResult(
        model=eqx.combine(final, static),
        history=History(loss=values, params=history_params),
        n_traces=traces[0],
        seconds=time.perf_counter() - start,
    )
