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
from jaxtyping import PyTree

from .._errors import MetaplasticError
from .._types import Scalar
from ._base import AbstractSolver, Objective


# Damping factors tried in parallel at every step, relative to the current damping.
CANDIDATES = (0.1, 1.0, 10.0, 100.0, 1e4)
# After a step that lowered the objective the damping starts the next step this much lower;
# after none did, this much higher than the current one.
SOFTEN, STIFFEN = 3.0, 1e3


class LevenbergMarquardt(AbstractSolver):
    """Damped Gauss–Newton (Levenberg–Marquardt; Fisher scoring for choices).

    Each step forms the gradient `g` and the Gauss–Newton matrix `H` of the objective over the
    batch (the Jacobian from the fit's differentiation strategy, `chunks` groups of
    trajectories at a time), solves `(H + λ_k · max diag H · I) δ = −g` for the damping
    values `λ_k = λ · CANDIDATES` at once, and keeps the candidate that lowers the objective
    most, or none (then `λ` grows by `STIFFEN`). A step whose Jacobian is non-finite keeps the
    parameters and raises the damping. Run badly conditioned problems in float64
    (`jax.config.update("jax_enable_x64", True)`): float32 normal equations cannot resolve
    nearly collinear monomials.

    **Arguments:**

    - `damping`: the initial `λ`, relative to the largest diagonal entry of `H`.
    - `chunks`: the number of groups the batch is cut into for the Jacobian (must divide the
      batch size); more groups, less memory.
    """

    damping: float = eqx.field(static=True, default=1e-3)
    chunks: int = eqx.field(static=True, default=1)
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
        if isinstance(self.chunks, bool) or not isinstance(self.chunks, int) or self.chunks < 1:
            raise MetaplasticError(f"chunks must be a positive integer, got {self.chunks!r}.")

    def init(self, objective: Objective, params: PyTree) -> PyTree:
        theta, _ = ravel_pytree(params)
        return jnp.asarray(self.damping, theta.dtype)

    def step(
        self, objective: Objective, params: PyTree, state: PyTree, batch: PyTree
    ) -> tuple[PyTree, PyTree, Scalar]:
        lam = state
        theta, unravel = ravel_pytree(params)
        value, grad, hess, finite = objective.gauss_newton(params, batch, self.chunks)
        scale = jnp.maximum(jnp.max(jnp.diag(hess)), jnp.finfo(hess.dtype).tiny)
        lams = lam * jnp.asarray(CANDIDATES, theta.dtype)
        eye = jnp.eye(theta.size, dtype=theta.dtype)

        def candidate(lam_k):
            new = theta - jnp.linalg.solve(hess + lam_k * scale * eye, grad)
            val = objective.value(unravel(new), batch)
            ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(new))
            return new, jnp.where(ok, val, jnp.inf)

        news, vals = jax.vmap(candidate)(lams)
        best = jnp.argmin(vals)
        improved = finite & jnp.isfinite(value) & (vals[best] < value)
        theta = jnp.where(improved, news[best], theta)
        lam = jnp.where(improved, lams[best] / SOFTEN, lam * STIFFEN)
        return unravel(theta), lam, jnp.where(improved, vals[best], value)
