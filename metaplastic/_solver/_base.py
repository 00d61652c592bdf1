"""What every solver of `metaplastic.fit` is given, and what it must do."""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._errors import MetaplasticError
from .._jacobian import AbstractDifferentiation
from .._likelihood import AbstractLikelihood
from .._types import Scalar
from ..losses import (
    AbstractGaussNewtonLoss,
    AbstractLoss,
    AbstractPenalty,
    per_observation,
    total_penalty,
)


# On a CPU the Jacobian is taken a group of trajectories at a time, as many trajectories as
# keep one group's Jacobian (observations × parameters) within this many bytes (at least one
# trajectory). Measured on the simulated-fly protocol (81 coefficients, 18 trajectories of 240
# choices, 1 and 5 seeds, float32 and float64, with and without 8 draws of the input noise):
# the step is bound by memory traffic once the sensitivities of a group outgrow the cache, and
# groups of this size gave the fastest steps (up to 2× faster than one group of every
# trajectory) and the smallest memory (7.3 → 1.2 GB with 8 draws and 5 seeds).
CPU_JACOBIAN_BYTES = 2**19


def check_chunks(chunks: object) -> None:
    """A `MetaplasticError` unless `chunks` is `None` (chosen by `Objective.jacobian_chunks`)
    or a positive integer: the one check of `LevenbergMarquardt` and `laplace`."""
    if chunks is not None and (
        isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1
    ):
        raise MetaplasticError(f"chunks must be None or a positive integer, got {chunks!r}.")


class Objective(eqx.Module):
    """The function a solver minimises: `loss(model, batch) + Σ penalties(model)` as a
    function of the trainable part `params` of the model (the rest is `static`), with the
    differentiation strategy that takes its derivatives."""

    loss: AbstractLoss
    penalties: tuple[AbstractPenalty, ...]
    static: PyTree
    differentiation: AbstractDifferentiation

    def model(self, params: PyTree) -> PyTree:
        return eqx.combine(params, self.static)

    def penalty(self, params: PyTree) -> Scalar:
        return total_penalty(self.penalties, self.model(params))

    def value(self, params: PyTree, batch: PyTree) -> Scalar:
        """The objective on `batch`."""
        return self.loss(self.model(params), batch) + self.penalty(params)

    def value_and_grad(self, params: PyTree, batch: PyTree) -> tuple[Scalar, PyTree]:
        """The objective and its gradient with respect to `params`."""
        value, grads = self.differentiation.value_and_grad(self.loss, params, self.static, batch)
        pen, pen_grads = jax.value_and_grad(self.penalty)(params)
        grads = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads, pen_grads)
        return value + pen, grads

    def _flat_penalty(
        self, params: PyTree
    ) -> tuple[Scalar, Float[Array, " n"], Float[Array, "n n"]]:
        """The penalties' value, gradient and Hessian with respect to the flat parameters
        (zeros without penalties)."""
        theta, unravel = ravel_pytree(params)
        n = theta.size
        if not self.penalties:
            zero = jnp.zeros((), theta.dtype)
            return zero, jnp.zeros(n, theta.dtype), jnp.zeros((n, n), theta.dtype)
        flat_penalty = lambda t: self.penalty(unravel(t))
        return flat_penalty(theta), jax.grad(flat_penalty)(theta), jax.hessian(flat_penalty)(theta)

    def observation_shapes(self, params: PyTree, batch: PyTree) -> tuple:
        """The shapes of the loss's `Observations` on `batch`, from a trace alone (nothing is
        computed)."""
        if not isinstance(self.loss, AbstractGaussNewtonLoss):
            raise TypeError("observation_shapes needs a loss with Gauss-Newton structure")
        loss = self.loss
        return jax.eval_shape(lambda p, b: loss.observe(self.model(p), b), params, batch)

    def jacobian_chunks(
        self, params: PyTree, batch: PyTree, chunks: int | None, shapes: tuple | None = None
    ) -> int:
        """`chunks` itself, or for `None` the number of equal groups of trajectories in which
        the Jacobian over `batch` is best taken: on a CPU the fewest groups whose Jacobian
        each holds at most `CPU_JACOBIAN_BYTES` (or one trajectory), elsewhere one group.
        `shapes`: the `observation_shapes` on `batch`, when already known."""
        if chunks is not None:
            return chunks
        if jax.default_backend() != "cpu":
            return 1
        arrays = [a for a in jax.tree.leaves(batch) if eqx.is_array(a)]
        trajectories = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        if shapes is None:
            shapes = self.observation_shapes(params, batch)
        rows = sum(math.prod(g.predictions.shape) for g in shapes)
        theta, _ = ravel_pytree(params)
        per_trajectory = rows * theta.size * theta.dtype.itemsize / trajectories
        for groups in range(1, trajectories + 1):
            size = trajectories // groups
            if trajectories % groups == 0 and size * per_trajectory <= CPU_JACOBIAN_BYTES:
                return groups
        return trajectories

    def _linearised_sums(self, params: PyTree, batch: PyTree, chunks: int, reduce) -> list:
        """`reduce(value, slope, curve, jac)` of every group of the loss's `Observations`,
        over `batch` cut into `chunks` equal groups of trajectories whose Jacobians are taken
        one after another (`jax.lax.map`): per group its static `(weight, likelihood)`, the
        sum of its per-observation losses, its number of valid observations, and what
        `reduce` returned, stacked over the chunks."""
        if not isinstance(self.loss, AbstractGaussNewtonLoss):
            raise TypeError("gauss_newton needs a loss with Gauss-Newton structure")
        theta, _ = ravel_pytree(params)
        n = theta.size
        static = []  # the groups' (static) weights and likelihoods, noted while tracing

        def sums(chunk):
            parts = self.differentiation.linearise(self.loss, params, self.static, chunk)
            static[:] = [(obs.weight, obs.likelihood) for obs, _ in parts]
            out = []
            for obs, jac in parts:
                value, slope, curve = per_observation(obs)
                jac = jnp.where(obs.mask[..., None], jac, 0.0).reshape(-1, n)
                reduced = reduce(value.reshape(-1), slope.reshape(-1), curve.reshape(-1), jac)
                out.append((jnp.sum(value), jnp.sum(obs.mask), reduced))
            return out

        if chunks == 1:
            parts = sums(batch)
            parts = [jax.tree.map(lambda x: x[None], p) for p in parts]
        else:
            split = lambda a: a.reshape((chunks, a.shape[0] // chunks) + a.shape[1:])
            grouped = jax.tree.map(lambda a: split(a) if eqx.is_array(a) else a, batch)
            parts = jax.lax.map(sums, grouped)
        return [
            (w, kind, jnp.sum(v), jnp.sum(count), reduced)
            for (w, kind), (v, count, reduced) in zip(static, parts)
        ]

    def gauss_newton_groups(
        self, params: PyTree, batch: PyTree, chunks: int = 1
    ) -> list[
        tuple[
            float,
            AbstractLikelihood,
            Scalar,
            Int[Array, ""],
            Float[Array, " n"],
            Float[Array, "n n"],
        ]
    ]:
        """The sums, over `batch` cut into `chunks` equal groups of trajectories whose
        Jacobians are taken one after another, that the Gauss–Newton matrix is made of: for
        each group `k` of the loss's `Observations`, `(w_k, likelihood_k, Σ ℓ, n_k,
        J_kᵀ ℓ'_k, J_kᵀ diag(ℓ''_k) J_k)` — its weight, its likelihood (an
        `AbstractLikelihood`), the sum of its per-observation losses (the residual sum of squares for
        squared error), its number of valid observations, and the unnormalised gradient and
        Gauss–Newton matrix with respect to the flat parameters. Penalties are not
        included."""

        def reduce(value, slope, curve, jac):
            return jac.T @ slope, (jac * curve[:, None]).T @ jac

        groups = self._linearised_sums(params, batch, chunks, reduce)
        return [
            (w, kind, v, count, jnp.sum(g, 0), jnp.sum(h, 0))
            for w, kind, v, count, (g, h) in groups
        ]

    def gauss_newton_factor(
        self, params: PyTree, batch: PyTree, chunks: int = 1
    ) -> tuple[
        Scalar,
        Float[Array, "n n"],
        Float[Array, " n"],
        Float[Array, " n"],
        Float[Array, "n n"],
        Bool[Array, ""],
    ]:
        """The objective and its Gauss–Newton model in factored form, without ever forming
        `JᵀJ`: an upper-triangular `R` and a vector `z` with `RᵀR = H` and `Rᵀz = g` for the
        loss's part of the Gauss–Newton matrix and gradient (as `gauss_newton`), the
        penalties' gradient and Hessian apart, and whether the Jacobian was finite.

        Each chunk of trajectories contributes the rows `[√ℓ'' J | ℓ'/√ℓ'']` (the whitened
        Jacobian and working residual: `J` and `√2 (f − t)` up to the factor √2 for squared
        error, `√(p(1 − p)) J` and `(p − t)/√(p(1 − p))` for Bernoulli choices);
        `triangular_factor` reduces them to `n + 1` rows at once, and one QR of the chunks'
        factors, each scaled by `√(w_k / n_k)`, gives `[R z]`. The condition number of `R` is
        that of the Jacobian, not its square.

        **Arguments:**

        - `params`: the trainable part of the model.
        - `batch`: trajectories on the leading axis.
        - `chunks`: the number of equal groups the batch is cut into.

        **Returns:** `(value, R, z, penalty_grad, penalty_hessian, finite)`, `R` of shape
        `(n, n)` and the others of shape `(n,)` and `(n, n)` for `n` flat parameters.
        """
        theta, _ = ravel_pytree(params)
        n = theta.size

        def reduce(value, slope, curve, jac):
            root = jnp.sqrt(curve)
            # ℓ''= 0 on masked entries (and where a probability rounds to 0 or 1)
            working = jnp.where(root > 0, slope / jnp.where(root > 0, root, 1.0), 0.0)
            rows = jnp.concatenate([jac * root[:, None], working[:, None]], axis=1)
            return triangular_factor(rows.astype(theta.dtype))

        groups = self._linearised_sums(params, batch, chunks, reduce)
        value = jnp.zeros((), theta.dtype)
        stacked = []
        for w, _, v, count, factors in groups:
            count = jnp.maximum(count, 1)
            value = value + w * v / count
            stacked.append(jnp.sqrt(w / count).astype(theta.dtype) * factors.reshape(-1, n + 1))
        factor = jnp.linalg.qr(jnp.concatenate(stacked, 0), mode="r")
        r, z = factor[:n, :n], factor[:n, n]
        finite = jnp.all(jnp.isfinite(factor))
        pen, grad_penalty, hess_penalty = self._flat_penalty(params)
        return value + pen, r, z, grad_penalty, hess_penalty, finite

    def gauss_newton(
        self, params: PyTree, batch: PyTree, chunks: int = 1
    ) -> tuple[Scalar, Float[Array, " n"], Float[Array, "n n"], Bool[Array, ""]]:
        """The objective, its gradient `g` and its Gauss–Newton matrix `H` with respect to
        the flat parameters, over `batch` cut into `chunks` equal groups of trajectories
        whose Jacobians are taken one after another (memory does not grow with the batch).
        Also whether the Jacobian was finite.

        For a loss `Σ_k w_k Σ_i ℓ(f_ki)/n_k`: `g = Σ_k w_k J_kᵀ ℓ'_k / n_k` and
        `H = Σ_k w_k J_kᵀ diag(ℓ''_k) J_k / n_k`; the penalties add their exact gradient and
        Hessian."""
        theta, _ = ravel_pytree(params)
        n = theta.size
        groups = self.gauss_newton_groups(params, batch, chunks)
        value = jnp.zeros((), theta.dtype)
        grad = jnp.zeros(n, theta.dtype)
        hess = jnp.zeros((n, n), theta.dtype)
        for w, _, v, count, g, h in groups:
            count = jnp.maximum(count, 1)
            value = value + w * v / count
            grad = grad + w * g / count
            hess = hess + w * h / count
        finite = jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(hess))
        if self.penalties:
            pen, grad_penalty, hess_penalty = self._flat_penalty(params)
            value, grad, hess = value + pen, grad + grad_penalty, hess + hess_penalty
        return value, grad, hess, finite


def triangular_factor(rows: Float[Array, "m k"]) -> Float[Array, "k k"]:
    """An upper-triangular `R` with `RᵀR = AᵀA` for a tall matrix `A` (`rows`), by a
    Householder QR of `A`: its error grows with the condition number `κ(A)`, where that of
    `AᵀA` formed in the same precision grows with `κ(A)²`.

    **Arguments:**

    - `rows`: `A`, `(m, k)`.

    **Returns:** `R`, `(k, k)`.
    """
    m, k = rows.shape
    if m < k:
        rows = jnp.concatenate([rows, jnp.zeros((k - m, k), rows.dtype)], 0)
    # The barrier keeps the column-major layout that LAPACK's QR wants from spreading back
    # into the computation of `rows` (a scanned Jacobian: a 20 -> 50 layer's step was 6x
    # slower without it).
    return jnp.linalg.qr(jax.lax.optimization_barrier(rows), mode="r")


class AbstractSolver(eqx.Module):
    """A solver for `metaplastic.fit`: `init` makes its state, `step` takes one step on one
    batch. Both run inside the fit's one jitted step function (and are vmapped for
    ensembles), so they must be pure JAX.

    `needs_jacobian` says whether the solver needs a loss with Gauss–Newton structure;
    `default_steps` is the number of steps `fit` takes when none is given;
    `divergence_hint` what to try when the fit diverges; `default_steps_per_call` how many
    steps `fit` runs in one call of its compiled program unless told (1 unless a solver's
    steps are so short that the host's turn between calls would dominate)."""

    needs_jacobian: ClassVar[bool]
    default_steps: ClassVar[int]
    divergence_hint: ClassVar[str]
    default_steps_per_call: ClassVar[int] = 1

    @abc.abstractmethod
    def init(self, objective: Objective, params: PyTree) -> PyTree:
        """The solver's initial state for `params`."""
        raise NotImplementedError

    @abc.abstractmethod
    def step(
        self, objective: Objective, params: PyTree, state: PyTree, batch: PyTree
    ) -> tuple[PyTree, PyTree, Scalar]:
        """One step on `batch`: the new parameters, the new state, and the objective the
        step evaluated (on this batch). A non-finite objective means the fit diverged at
        `params`; the driver then keeps `params` as the last finite state."""
        raise NotImplementedError
