"""Levenberg–Marquardt: damped Gauss–Newton steps for losses with Gauss–Newton structure.

A plasticity rule has few parameters (tens of Taylor coefficients, a small MLP) and a badly
conditioned loss: monomials such as `x*y` and `x*y^2`, or `x*r` and `x^2*r`, are nearly
collinear when an activity barely moves, so first-order methods crawl along valleys of nearly
equivalent rules. The Gauss–Newton matrix `H = Jᵀ diag(ℓ'') J` of the loss's predictions —
`JᵀJ` for squared residuals, the Fisher information `Jᵀ diag(p(1 − p)) J` for choices —
resolves such directions in a few steps. The damping is isotropic (`λ · max diag H · I`), so
directions the data barely constrain stay near their starting value instead of wandering.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from .._errors import MetaplasticError
from .._likelihood import Bernoulli
from .._types import Scalar
from ._base import AbstractSolver, Objective, check_chunks


# Damping factors tried in parallel at every step, relative to the current damping.
CANDIDATES = (0.1, 1.0, 10.0, 100.0, 1e4)
# After a step that lowered the objective the damping starts the next step this much lower;
# after none did, this much higher than the current one.
SOFTEN, STIFFEN = 3.0, 1e3
# How the damped Gauss–Newton system is solved: see `LevenbergMarquardt`.
LINEAR_SOLVERS = ("qr", "normal")


class LevenbergMarquardt(AbstractSolver):
    """Damped Gauss–Newton (Levenberg–Marquardt; Fisher scoring for choices).

    Each step takes the gradient `g` and the Gauss–Newton matrix `H` of the objective over the
    batch (the Jacobian from the fit's differentiation strategy, `chunks` groups of
    trajectories at a time), solves `(H + λ_k · max diag H · I) δ = −g` for the damping
    values `λ_k = λ · CANDIDATES` at once, and keeps the candidate that lowers the objective
    most, or none (then `λ` grows by `STIFFEN`). A step whose Jacobian is non-finite keeps the
    parameters and raises the damping.

    With `linear_solver="qr"` `H` is never formed: each chunk's whitened Jacobian and working
    residual are reduced by a Householder QR factorisation to a triangular `R` with `RᵀR = H`
    (`Objective.gauss_newton_factor`), and each damped step is a least-squares solve through
    the QR factorisation of `[R; √(λ_k max diag H) · I]`, so its accuracy depends on the
    condition number `κ` of the Jacobian, not on `κ²`. `"normal"` solves the normal equations
    `H + λ_k · max diag H · I` (the same steps in exact arithmetic). The default, `None`,
    takes `"qr"` below float64 and `"normal"` in float64: on the 100 → 1000 Oja fit a QR step
    costs about twice the CPU time of a normal-equation step (five Householder QRs of
    50,000 × 28 rows; `python -m benchmarks.lm_linear_solver`), which float64 does not need
    (both recover Oja's rule to 1e-11) and float32 does (κ² ε₃₂ ≈ 1e9: the normal equations
    leave coefficients 0.33 off, the QR steps 0.002). Objectives of choices alone (Bernoulli
    groups only) keep the normal equations in float32 too: on the simulated-fly protocol
    (81 terms, 18 trajectories, float32) both solvers reach the same fit (final objective equal
    to 1e-5, R² of weights 0.826 both with 1 seed) and a QR step takes 1.4–1.7× as long.

    The damping never falls below `min_damping` (by default `ε²`, `ε` the machine epsilon of
    the parameters' dtype): directions whose singular value is below `ε · σ_max` are below the
    rounding of the Jacobian itself, and move little instead of following rounding noise.

    In float32 the simulated activity itself is only known to its rounding (about 2e-8 of an
    activity near 0.5), which limits what any solver can resolve: see the README's
    "Precision" section and `python -m benchmarks.float32_limits`.

    **Arguments:**

    - `damping`: the initial `λ`, relative to the largest diagonal entry of `H`.
    - `chunks`: the number of groups the batch is cut into for the Jacobian (must divide the
      batch size); more groups, less memory. `None` (the default) chooses: on a CPU, groups
      of as many trajectories as keep one group's Jacobian within 512 KiB (the step is bound
      by memory traffic beyond; see `Objective.jacobian_chunks`), elsewhere one group.
    - `linear_solver`: `"qr"`, `"normal"`, or `None` (the default: `"qr"` below float64 when
      the loss has a squared-error group, else `"normal"`).
    - `min_damping`: the smallest `λ`, relative to the largest diagonal entry of `H`; `None`
      (the default) for `ε²` of the parameters' dtype.
    """

    damping: float = eqx.field(static=True, default=1e-3)
    chunks: int | None = eqx.field(static=True, default=None)
    linear_solver: str | None = eqx.field(static=True, default=None)
    min_damping: float | None = eqx.field(static=True, default=None)
    needs_jacobian: ClassVar[bool] = True
    default_steps: ClassVar[int] = 20
    divergence_hint: ClassVar[str] = (
        "The objective is non-finite at the current parameters, so no step can be judged: "
        "check the data for NaN or Inf, or start from smaller parameters."
    )

    def __check_init__(self):
        if isinstance(self.damping, bool) or not (
            isinstance(self.damping, (int, float)) and self.damping > 0
        ):
            raise MetaplasticError(f"damping must be a positive number, got {self.damping!r}.")
        check_chunks(self.chunks)
        if self.linear_solver is not None and self.linear_solver not in LINEAR_SOLVERS:
            raise MetaplasticError(
                f"linear_solver must be None or one of {LINEAR_SOLVERS}, "
                f"got {self.linear_solver!r}."
            )
        if self.min_damping is not None and (
            isinstance(self.min_damping, bool)
            or not isinstance(self.min_damping, (int, float))
            or not self.min_damping >= 0
        ):
            raise MetaplasticError(
                f"min_damping must be None or a non-negative number, got {self.min_damping!r}."
            )

    def init(self, objective: Objective, params: PyTree) -> PyTree:
        theta, _ = ravel_pytree(params)
        return jnp.asarray(self.damping, theta.dtype)

    def step(
        self, objective: Objective, params: PyTree, state: PyTree, batch: PyTree
    ) -> tuple[PyTree, PyTree, Scalar]:
        theta, unravel = ravel_pytree(params)
        dtype = theta.dtype
        floor = jnp.finfo(dtype).eps ** 2 if self.min_damping is None else self.min_damping
        lam = state
        lams = jnp.maximum(lam * jnp.asarray(CANDIDATES, dtype), jnp.asarray(floor, dtype))
        linear_solver = self.linear_solver
        single = jnp.finfo(dtype).eps > 1e-10
        # The loss's groups of observations, from its shapes alone (no compute), when the
        # defaults need them.
        shapes = None
        if self.chunks is None or (linear_solver is None and single):
            shapes = objective.observation_shapes(params, batch)
        chunks = objective.jacobian_chunks(params, batch, self.chunks, shapes)
        if linear_solver is None:  # measured: see the class docstring
            linear_solver = "normal"
            if single and not all(isinstance(g.likelihood, Bernoulli) for g in shapes):
                linear_solver = "qr"
        if linear_solver == "qr":
            value, factor, z, grad_pen, hess_pen, finite = objective.gauss_newton_factor(
                params, batch, chunks
            )
            diag = jnp.sum(factor**2, axis=0) + jnp.diag(hess_pen)
            scale = jnp.maximum(jnp.max(diag), jnp.finfo(dtype).tiny)
            solve = damped_qr_solve(factor, z, grad_pen, hess_pen)
        else:
            value, grad, hess, finite = objective.gauss_newton(params, batch, chunks)
            scale = jnp.maximum(jnp.max(jnp.diag(hess)), jnp.finfo(dtype).tiny)
            eye = jnp.eye(theta.size, dtype=dtype)
            solve = lambda mu: jnp.linalg.solve(hess + mu * eye, -grad)

        def candidate(lam_k):
            new = theta + solve(lam_k * scale)
            val = objective.value(unravel(new), batch)
            ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(new))
            return new, jnp.where(ok, val, jnp.inf)

        news, vals = jax.vmap(candidate)(lams)
        best = jnp.argmin(vals)
        improved = finite & jnp.isfinite(value) & (vals[best] < value)
        theta = jnp.where(improved, news[best], theta)
        lam = jnp.where(improved, lams[best] / SOFTEN, lam * STIFFEN)
        return unravel(theta), lam, jnp.where(improved, vals[best], value)


def damped_qr_solve(
    factor: Float[Array, "n n"],
    z: Float[Array, " n"],
    grad_penalty: Float[Array, " n"],
    hess_penalty: Float[Array, "n n"],
):
    """The damped Gauss–Newton step as a function of the damping `μ`: the `δ` that solves
    `(RᵀR + P + μ I) δ = −(Rᵀz + p)`, through a QR factorisation of `[R z; L 0; √μ I 0]`
    (`LᵀL = P`, the penalties' Hessian `P` clipped to be positive semi-definite, `p` their
    gradient) — the least-squares problem `min ‖Rδ + z‖² + ‖Lδ‖² + μ‖δ‖²` plus the
    penalties' linear term, solved without squaring the condition number of `R`.

    **Arguments:**

    - `factor`: `R`, `(n, n)`, with `RᵀR` the loss's Gauss–Newton matrix.
    - `z`: `(n,)`, with `Rᵀz` the loss's gradient.
    - `grad_penalty`, `hess_penalty`: the penalties' gradient `(n,)` and Hessian `(n, n)`.

    **Returns:** a function of the scalar `μ > 0` returning `δ`, `(n,)`.
    """
    n = z.shape[0]
    values, vectors = jnp.linalg.eigh(0.5 * (hess_penalty + hess_penalty.T))
    root = jnp.sqrt(jnp.maximum(values, 0.0))[:, None] * vectors.T
    top = jnp.concatenate([factor, z[:, None]], axis=1)
    middle = jnp.concatenate([root, jnp.zeros((n, 1), z.dtype)], axis=1)
    eye = jnp.eye(n, dtype=z.dtype)

    def solve(mu: Scalar) -> Float[Array, " n"]:
        bottom = jnp.concatenate([jnp.sqrt(mu) * eye, jnp.zeros((n, 1), z.dtype)], axis=1)
        out = jnp.linalg.qr(jnp.concatenate([top, middle, bottom], axis=0), mode="r")
        r_mu, c = out[:n, :n], out[:n, n]
        shifted = c + jax.scipy.linalg.solve_triangular(r_mu.T, grad_penalty, lower=True)
        return -jax.scipy.linalg.solve_triangular(r_mu, shifted, lower=False)

    return solve
