"""How sure is the fitted rule? The Laplace approximation of the posterior of the trainable
parameters around a fit, the identifiability of the rule's terms, and the profile likelihood
of one term.

The Gauss–Newton matrix a Levenberg–Marquardt step already forms is the curvature of the
negative log-likelihood: `JᵀJ / σ²` for activity with Gaussian noise of variance `σ²`, the
Fisher information `Jᵀ diag(p(1 − p)) J` for choices. Its inverse is the covariance of the
parameters to first order.
"""

import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree

from ._errors import MetaplasticError, validates_input
from ._fit import (
    check_ensemble,
    fit,
    partition_trainable,
    rule_filter_spec,
    split_per_member,
    with_member_arrays,
)
from ._frames import members_frame
from ._jacobian import AbstractDifferentiation, as_differentiation
from ._solver import LevenbergMarquardt, Objective
from ._solver._base import check_chunks
from .losses import (
    AbstractGaussNewtonLoss,
    AbstractLoss,
    AbstractPenalty,
    as_penalties,
    total_penalty,
)
from .rules import AbstractRule, TaylorRule, format_monomial


def _norm_ppf(level: float) -> float:
    """The two-sided normal quantile of `level`, e.g. 1.96 for 0.95."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise MetaplasticError(f"level must be a number between 0 and 1, got {level!r}.")
    return float(jax.scipy.stats.norm.ppf(0.5 + 0.5 * level))


def _is_taylor(node: Any) -> bool:
    return isinstance(node, TaylorRule)


def _labels(model: PyTree, params: PyTree, ensemble: bool) -> tuple[list[str], np.ndarray]:
    """The name of every flat trainable parameter (`ravel_pytree` order) and whether it is
    free (False: a term frozen by a `TaylorRule.trainable` mask), `(n,)`, or per member,
    `(members, n)`, for an ensemble whose masks carry the member axis."""
    rules = {
        path: node
        for path, node in jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_taylor)[0]
        if _is_taylor(node)
    }
    prefix_rules = len(rules) > 1
    members = None
    if ensemble:
        members = jax.tree.leaves(params)[0].shape[0]
    names: list[str] = []
    free: list[np.ndarray] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        shape = leaf.shape[1:] if ensemble else leaf.shape
        rule = rules.get(path[:-1])
        if rule is not None and path[-1] == jax.tree_util.GetAttrKey("coefficients"):
            prefix = jax.tree_util.keystr(path[:-1]) + ":" if prefix_rules else ""
            names += [prefix + format_monomial(e, rule.factors) for e in np.ndindex(*shape)]
            mask = np.ones(shape, bool)
            if rule.trainable is not None:
                mask = np.asarray(rule.trainable)
            if mask.ndim == len(shape):  # one mask for every member
                mask = np.broadcast_to(mask, (members,) + shape) if ensemble else mask
            free.append(mask.reshape((members, -1) if ensemble else -1))
        else:
            key = jax.tree_util.keystr(path)
            size = math.prod(shape)
            names += [key] if size == 1 else [f"{key}{list(i)}" for i in np.ndindex(*shape)]
            free.append(np.ones((members, size) if ensemble else size, bool))
    if not free:
        return names, np.zeros((members, 0) if ensemble else 0, bool)
    return names, np.concatenate(free, axis=-1)


class Posterior(eqx.Module):
    """The Laplace approximation `N(mean, covariance)` of the posterior of the trainable
    parameters of a fitted model (see `metaplastic.laplace`).

    - `mean`: the fitted trainable parameters, a PyTree like them (with a leading member
      axis for an ensemble).
    - `covariance`, `precision`: `(n, n)` (or `(members, n, n)`) over the flat parameters in
      `jax.flatten_util.ravel_pytree` order; frozen terms have zero rows and columns.
    - `names`: the name of each flat parameter: the monomial (`"x*r"`) for the terms of a
      Taylor rule, else the path in the model.
    - `free`: `False` for frozen terms (fixed, zero variance).
    - `noise_scale`: the noise standard deviation `σ` estimated from the residuals of each
      squared-error group (a scalar, per member, or `(..., groups)` for several groups);
      `None` when the loss has none.
    - `rank`: the number of free directions whose precision is above the cutoff; the
      others are undetermined by the data and left out of the covariance (pseudo-inverse).
    - `undetermined`: `(n,)` (or `(members, n)`), `True` for a free parameter that moves
      along an undetermined direction (its projection on them is above rounding); `None`
      when unknown (every parameter counts as determined).

    A rank-deficient posterior says so: `std()`, `interval()`, `table()`, `format()` and
    `to_dataframe()` give an undetermined parameter an infinite standard deviation and an
    unbounded interval (never one that excludes 0), and `format()` states the rank. The
    `covariance` itself is the pseudo-inverse, the covariance *conditional on the
    determined subspace* (the undetermined directions held at their fitted values);
    `std(conditional=True)` and `interval(level, conditional=True)` read it.
    """

    mean: PyTree
    covariance: Float[Array, "*members n n"]
    precision: Float[Array, "*members n n"]
    noise_scale: Float[Array, "..."] | None
    rank: Array
    names: tuple[str, ...] = eqx.field(static=True)
    free: tuple[bool, ...] = eqx.field(static=True)
    undetermined: Bool[Array, "*members n"] | None = None

    @property
    def is_ensemble(self) -> bool:
        return self.covariance.ndim == 3

    @property
    def is_rank_deficient(self) -> bool:
        """Whether some free parameter moves along a direction the data do not determine
        (for an ensemble: in any member)."""
        return bool(np.any(self._flat_undetermined()))

    def _flat_undetermined(self) -> np.ndarray:
        if self.undetermined is None:
            return np.zeros(self.covariance.shape[:-1], bool)
        return np.asarray(self.undetermined, bool)

    def determined(self) -> PyTree:
        """Whether each parameter is determined by the data (`False` for one that moves
        along an undetermined direction; frozen terms count as determined), a PyTree of
        booleans like `mean`."""
        return self._unravel(jnp.asarray(~self._flat_undetermined()))

    def _unravel(self, flat: Array) -> PyTree:
        if not self.is_ensemble:
            return ravel_pytree(self.mean)[1](flat)
        template = jax.tree.map(lambda a: a[0], self.mean)
        return jax.vmap(ravel_pytree(template)[1])(flat)

    def _flat_mean(self) -> Array:
        if not self.is_ensemble:
            return ravel_pytree(self.mean)[0]
        return jax.vmap(lambda m: ravel_pytree(m)[0])(self.mean)

    def _flat_std(self, conditional: bool = False) -> Array:
        var = jnp.diagonal(self.covariance, axis1=-2, axis2=-1)
        std = jnp.sqrt(jnp.maximum(var, 0.0))
        if conditional:
            return std
        return jnp.where(jnp.asarray(self._flat_undetermined()), jnp.inf, std)

    def member(self, i: int) -> "Posterior":
        """The posterior of ensemble member `i`."""
        if not self.is_ensemble:
            raise MetaplasticError("member() needs the posterior of an ensemble.")
        return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, self)

    def std(self, *, conditional: bool = False) -> PyTree:
        """The posterior standard deviation of each parameter, a PyTree like `mean`: `inf`
        for a parameter the data do not determine (see `determined()`), unless
        `conditional=True`, which gives the standard deviation conditional on the
        determined subspace (the undetermined directions held at their fitted values)."""
        return self._unravel(self._flat_std(conditional))

    def interval(self, level: float = 0.95, *, conditional: bool = False) -> tuple[PyTree, PyTree]:
        """`(low, high)`: the central `level` interval of each parameter, `mean ∓ z·std`
        with `z` the normal quantile (1.96 for 0.95); PyTrees like `mean`. A parameter the
        data do not determine gets `(-inf, inf)`, unless `conditional=True` (see `std`)."""
        z = _norm_ppf(level)
        mean, std = self._flat_mean(), self._flat_std(conditional)
        return self._unravel(mean - z * std), self._unravel(mean + z * std)

    def natural_intervals(self, level: float = 0.95) -> dict[str, tuple[Array, Array, Array]]:
        """`{name: (estimate, low, high)}` for the parameters that rules with memory fit in an
        unbounded parametrisation, reported in their natural one: the decay `λ` of a
        `TraceRule` (fitted as its logit) and the time constant `τ` of a `BCMRule` (fitted as
        `log(τ − 1)`). The transforms are increasing, so the endpoints of the `level`
        interval of the fitted parameter map to those of the natural one (the interval is
        not symmetric about the estimate). Names are the rule's path and the parameter,
        e.g. `".plastic.rule.λ"`; arrays have a leading member axis for an ensemble. Empty
        when no such rule trains."""
        low, high = self.interval(level)
        is_rule = lambda node: isinstance(node, AbstractRule)
        found = jax.tree_util.tree_flatten_with_path(self.mean, is_leaf=is_rule)[0]
        trios = zip(
            found,
            jax.tree.leaves(low, is_leaf=is_rule),
            jax.tree.leaves(high, is_leaf=is_rule),
        )
        out = {}
        for (path, rule), lo, hi in trios:
            if not is_rule(rule):
                continue
            prefix = jax.tree_util.keystr(path)
            for name, estimate in rule.natural_parameters().items():
                if estimate is None:  # not trained: no interval
                    continue
                out[f"{prefix}.{name}"] = (
                    estimate,
                    lo.natural_parameters()[name],
                    hi.natural_parameters()[name],
                )
        return out

    def correlation(self) -> Float[Array, "*members n n"]:
        """The correlation matrix of the flat parameters (0 for fixed parameters);
        conditional on the determined subspace where the posterior is rank-deficient."""
        std = self._flat_std(conditional=True)
        outer = std[..., :, None] * std[..., None, :]
        return jnp.where(outer > 0, self.covariance / jnp.where(outer > 0, outer, 1.0), 0.0)

    def table(self, level: float = 0.95) -> list[dict[str, Any]]:
        """One row per parameter: `term`, `estimate`, `std`, `low`, `high` (the `level`
        interval), `excludes_zero` (whether the interval excludes 0), `fixed` (a frozen
        term) and `determined` (`False` for a term that moves along a direction the data do
        not determine: its `std` is `inf`, its interval `(-inf, inf)`, and it never
        excludes 0)."""
        if self.is_ensemble:
            raise MetaplasticError("table() is per model: use posterior.member(i).table().")
        z = _norm_ppf(level)
        mean, std = np.asarray(self._flat_mean()), np.asarray(self._flat_std())
        undetermined = self._flat_undetermined()
        rows = []
        for name, m, s, free, und in zip(self.names, mean, std, self.free, undetermined):
            low, high = float(m - z * s), float(m + z * s)
            rows.append(
                {
                    "term": name,
                    "estimate": float(m),
                    "std": float(s),
                    "low": low,
                    "high": high,
                    "excludes_zero": bool(not und and (low > 0 or high < 0)),
                    "fixed": not free,
                    "determined": not bool(und),
                }
            )
        return rows

    def rank_note(self) -> str:
        """One sentence on what the data leave undetermined (`""` for a posterior of full
        rank): the rank among the free parameters and how many terms move along the
        undetermined directions. For an ensemble, per member."""
        if self.is_ensemble:
            notes = [self.member(i).rank_note() for i in range(self.covariance.shape[0])]
            return "; ".join(f"member {i}: {n}" for i, n in enumerate(notes) if n)
        undetermined = self._flat_undetermined()
        if not undetermined.any():
            return ""
        n_free = int(np.sum(self.free))
        rank = int(self.rank)
        k = int(undetermined.sum())
        return (
            f"rank-deficient: rank {rank} of {n_free} free parameters; {n_free - rank} "
            f"direction(s) are not determined by the data (see identifiability()), and the "
            f"{k} term(s) that move along them have unbounded intervals (std inf, marked "
            "'undetermined'); std(conditional=True) gives the spread with those directions "
            "held at their fitted values."
        )

    def to_dataframe(self, level: float = 0.95) -> Any:
        """`table(level)` as a pandas DataFrame (needs pandas); for an ensemble, every
        member's rows with a leading `member` column. A rank-deficient posterior's frame
        says so in `frame.attrs["note"]` (see `rank_note()`) and in its `determined`
        column."""
        members = self.covariance.shape[0] if self.is_ensemble else None
        columns = [
            "term",
            "estimate",
            "std",
            "low",
            "high",
            "excludes_zero",
            "fixed",
            "determined",
        ]
        one = lambda i: (self if i is None else self.member(i)).table(level)
        out = members_frame(members, one, columns)
        note = self.rank_note()
        if note:
            out.attrs["note"] = note
        return out

    def format(self, level: float = 0.95, *, tol: float = 0.0) -> str:
        """The table as text, one line per parameter whose estimate or finite std exceeds
        `tol`; `*` marks an interval that excludes 0, and a term the data do not determine
        reads `undetermined` in place of its std and interval, under a first line that
        states the rank (see `rank_note()`)."""

        def shown(r: dict[str, Any]) -> bool:
            std = r["std"] if math.isfinite(r["std"]) else 0.0
            return max(abs(r["estimate"]), std) > tol

        rows = [r for r in self.table(level) if shown(r)]
        width = max([len("term")] + [len(r["term"]) for r in rows])
        pct = f"{100 * level:g}%"
        lines = [f"{'term':<{width}}  {'estimate':>11}  {'std':>10}  {pct + ' interval':>25}"]
        for r in rows:
            if r["fixed"]:
                tail = f"{'fixed':>10}"
            elif not r["determined"]:
                tail = f"{'undetermined':>12}"
            else:
                interval = f"[{r['low']:.4g}, {r['high']:.4g}]"
                tail = f"{r['std']:>10.3g}  {interval:>25}{' *' if r['excludes_zero'] else ''}"
            lines.append(f"{r['term']:<{width}}  {r['estimate']:>11.4g}  {tail}")
        note = textwrap.wrap(self.rank_note(), 92)
        return "\n".join(note + lines)

    def __str__(self) -> str:
        if self.is_ensemble:
            note = self.rank_note()
            return (
                f"Posterior of {self.covariance.shape[0]} members over {len(self.names)} parameters"
                + (f" ({note})" if note else "")
            )
        return self.format()

    def identifiability(self, *, cutoff: float | None = None) -> "Identifiability":
        """The eigen-spectrum of the precision over the free parameters (see
        `Identifiability`); `cutoff` as in `metaplastic.laplace`."""
        if self.is_ensemble:
            raise MetaplasticError(
                "identifiability() is per model: use posterior.member(i).identifiability()."
            )
        free = np.asarray(self.free)
        prec = np.asarray(self.precision)[np.ix_(free, free)]
        values, vectors = np.linalg.eigh(prec)
        names = tuple(n for n, f in zip(self.names, self.free) if f)
        top = float(values[-1]) if values.size else 0.0
        if cutoff is None:
            cutoff = _default_cutoff(len(names), prec.dtype)
        return Identifiability(values, vectors, names, top * cutoff)


class Identifiability(eqx.Module):
    """The eigen-spectrum of the precision (the curvature of the negative log-posterior) in
    the space of the free parameters: a direction `v` (unit length) with eigenvalue `λ` is
    determined to `±1/√λ` (one standard deviation of `v·θ`).

    - `eigenvalues`: ascending; `eigenvectors`: the matching columns, over `names`.
    - `threshold`: eigenvalues at or below it count as undetermined.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    names: tuple[str, ...] = eqx.field(static=True)
    threshold: float = eqx.field(static=True)

    @property
    def condition_number(self) -> float:
        """The largest over the smallest eigenvalue (`inf` for a singular precision)."""
        lo, hi = float(self.eigenvalues[0]), float(self.eigenvalues[-1])
        return math.inf if lo <= self.threshold or lo <= 0 else hi / lo

    def directions(self, n: int = 3, *, terms: int = 3, tol: float = 0.05) -> list[str]:
        """The `n` worst-determined directions as combinations of the parameters, e.g.
        `"x*y - 0.98·x*y^2 is determined to ±3.1"`: each scaled so that its largest loading is
        1, with at most `terms` loadings of relative size above `tol`."""
        out = []
        for k in range(min(n, len(self.eigenvalues))):
            v = np.asarray(self.eigenvectors[:, k], dtype=np.float64)
            big = int(np.argmax(np.abs(v)))
            u = v / v[big]
            order = [i for i in np.argsort(-np.abs(u))[:terms] if abs(u[i]) > tol]
            text = ""
            for i in order:
                c = float(u[i])
                sign = "-" if c < 0 else "+"
                coef = "" if abs(abs(c) - 1) < 5e-3 else f"{abs(c):.2g}·"
                text += (f" {sign} " if text else ("-" if c < 0 else "")) + coef + self.names[i]
            lam = float(self.eigenvalues[k])
            if lam <= self.threshold:
                out.append(f"{text} is not determined by the data (precision {lam:.3g})")
            else:
                spread = 1 / (abs(v[big]) * math.sqrt(lam))
                out.append(f"{text} is determined to ±{spread:.3g}")
        return out

    def __str__(self) -> str:
        lines = [
            f"precision eigenvalues: {self.eigenvalues[0]:.3g} .. {self.eigenvalues[-1]:.3g}",
            f"condition number: {self.condition_number:.3g}",
            "poorly determined directions:",
        ]
        return "\n".join(lines + ["  " + d for d in self.directions()])


def _default_cutoff(n: int, dtype: Any) -> float:
    return max(n, 1) * float(jnp.finfo(dtype).eps) * 10


def _check_gn_loss(loss: Any) -> AbstractGaussNewtonLoss:
    if not isinstance(loss, AbstractGaussNewtonLoss):
        raise MetaplasticError(
            "laplace needs a loss with Gauss-Newton structure (an AbstractGaussNewtonLoss such "
            f"as metaplastic.losses.ActivityMSE()), got {type(loss).__name__}."
        )
    return loss


@validates_input
def laplace(
    model: PyTree,
    data: PyTree,
    loss: AbstractGaussNewtonLoss,
    *,
    filter_spec: PyTree | None = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    chunks: int | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    per_member: Callable[[PyTree], PyTree] | None = None,
    cutoff: float | None = None,
) -> Posterior:
    """The Laplace approximation of the posterior of the trainable parameters of a fitted
    `model`: a Gaussian at the fitted parameters whose precision is the Gauss–Newton
    curvature of the negative log-likelihood (summed over observations, not averaged).

    - Squared-error groups (activity): Gaussian noise of variance `σ²` estimated from the
      residuals, `σ² = RSS / (n_obs − p)` with `p` the number of free parameters (shared
      among several groups in proportion to their observations); precision `JᵀJ / σ²`.
    - Bernoulli groups (choices): the Fisher information `Jᵀ diag(p(1 − p)) J`.
    - Penalties are a log-prior with the weight they have in the fit objective: the fit
      minimises `Σ_k w_k mean ℓ_k + P`, the log-likelihood is `Σ_k s_k · mean ℓ_k` with
      `s_k = n_k/(2σ_k²)` (squared error) or `n_k` (Bernoulli), and the penalty enters as
      `s · P` with `s = Σ_k s_k / Σ_k w_k` (`n/(2σ²) · P` for one group of `n`
      observations), so that the posterior mode is the fitted optimum. The exact Hessian of
      the penalty is added (the smoothed L1 has a large curvature near zero).

    Frozen Taylor terms (`TaylorRule.trainable` masks) are fixed: zero variance, left out of
    the inverse and of the count of free parameters; in an ensemble whose masks differ
    between members (`per_member`), each member's own frozen terms. The rest is inverted by eigen-decomposition: directions whose precision is
    at or below `cutoff · λ_max` are undetermined and left out (a pseudo-inverse; `rank`
    counts the others, `Posterior.identifiability()` names them).

    **Arguments:**

    - `model`, `data`, `loss`, `filter_spec`, `penalty`, `differentiation`, `ensemble`,
      `data_ensemble_axis`, `per_member`: as for `metaplastic.fit` (pass the fitted model).
    - `chunks`: the number of groups the trajectories are cut into for the Jacobian (`None`:
      chosen as by `metaplastic.LevenbergMarquardt`).
    - `cutoff`: relative eigenvalue cutoff (default `10 · p · eps` of the dtype).

    **Returns:**

    A `Posterior`.
    """
    loss = _check_gn_loss(loss)
    penalties = as_penalties(penalty)
    differentiation = as_differentiation(differentiation)
    check_chunks(chunks)
    filter_spec, params, static = partition_trainable(model, filter_spec)
    leaves = jax.tree.leaves(params)
    members = None
    if ensemble:
        members = check_ensemble(leaves, data, data_ensemble_axis)
    own, static = split_per_member(model, params, static, per_member, members)
    names, member_free = _labels(model, params, ensemble)
    # The parameters free in any member; a member's own frozen terms among them are fixed
    # inside its posterior.
    free = member_free.any(axis=0) if ensemble else member_free
    n_free_any = int(free.sum())
    objective = Objective(loss, penalties, static, differentiation)
    dtype = jnp.result_type(*leaves)
    rel = _default_cutoff(n_free_any, dtype) if cutoff is None else float(cutoff)
    free_idx = np.flatnonzero(free)

    def one(p, o, own_free, d):
        objective_m = with_member_arrays(objective, o)
        n_free = jnp.sum(own_free)
        theta, unravel = ravel_pytree(p)
        groups = objective_m.gauss_newton_groups(p, d, objective_m.jacobian_chunks(p, d, chunks))
        n_total = sum(jnp.asarray(c, theta.dtype) for _, _, _, c, _, _ in groups)
        prec = jnp.zeros((theta.size, theta.size), theta.dtype)
        scale_sum = jnp.zeros((), theta.dtype)
        noise = []
        for _, likelihood, value, count, _, hess in groups:
            count = jnp.asarray(count, theta.dtype)
            var = None
            if likelihood.estimates_noise:
                dof = jnp.maximum(count - n_free * count / jnp.maximum(n_total, 1), 1.0)
                var = value / dof
                noise.append(jnp.sqrt(var))
            c = jnp.asarray(likelihood.fisher_scale(var), theta.dtype)
            prec = prec + c * hess
            scale_sum = scale_sum + c * count
        weight_sum = sum(w for w, *_ in groups)
        if penalties:
            flat_penalty = lambda t: objective_m.penalty(unravel(t))
            prec = prec + scale_sum / weight_sum * jax.hessian(flat_penalty)(theta)
        fixed = ~jnp.asarray(own_free)
        prec = jnp.where(fixed[:, None] | fixed[None, :], 0.0, prec)
        sub = prec[np.ix_(free_idx, free_idx)]
        sub = 0.5 * (sub + sub.T)
        values, vectors = jnp.linalg.eigh(sub)
        keep = values > rel * jnp.maximum(values[-1], 0.0)
        inv = jnp.where(keep, 1 / jnp.where(keep, values, 1.0), 0.0)
        cov_sub = (vectors * inv) @ vectors.T
        cov = jnp.zeros_like(prec).at[np.ix_(free_idx, free_idx)].set(cov_sub)
        cov = jnp.where(fixed[:, None] | fixed[None, :], 0.0, cov)
        # A free parameter moves along the undetermined directions when its projection on
        # them (the diagonal of their projector) is above rounding: its marginal variance is
        # unbounded, whatever the pseudo-inverse says. The member's own frozen terms are
        # among those directions (zero rows) and are excluded.
        load = jnp.sum(jnp.where(keep, 0.0, vectors**2), axis=1)
        rounding = 100 * free_idx.size * float(jnp.finfo(theta.dtype).eps)
        undetermined = jnp.zeros(theta.size, bool).at[free_idx].set(load > rounding)
        undetermined = undetermined & jnp.asarray(own_free, bool)
        if not noise:
            sigma = None
        elif len(noise) == 1:
            sigma = noise[0]
        else:
            sigma = jnp.stack(noise)
        return cov, prec, sigma, jnp.sum(keep), undetermined

    fn = eqx.filter_vmap(one, in_axes=(0, 0, 0, data_ensemble_axis)) if ensemble else one
    cov, prec, sigma, rank, undetermined = eqx.filter_jit(fn)(params, own, member_free, data)
    return Posterior(
        params,
        cov,
        prec,
        sigma,
        rank,
        tuple(names),
        tuple(bool(f) for f in free),
        undetermined,
    )


class Profile(eqx.Module):
    """The profile of the fit objective along one Taylor term: the term fixed at each of
    `values`, the other trainable parameters refitted.

    - `term`: the monomial; `values`: `(k,)`; `objective`: `(k,)` the fit objective (loss
      plus penalties, penalties on every term, the fixed one included) after the refit.
    - `model`: the refitted models, an ensemble with a leading axis of `k`.
    """

    term: str = eqx.field(static=True)
    values: Float[Array, " k"]
    objective: Float[Array, " k"]
    model: PyTree

    @property
    def argmin(self) -> float:
        """The value of the term with the lowest objective."""
        return float(self.values[int(jnp.argmin(self.objective))])


def _conditional_starts(posterior, model, filter_spec, idx, rule, values, where):
    """The trainable parameters of `model` moved, for each of `values` of the term at
    `idx`, to the Gaussian posterior's conditional mean given that value: `(k, ...)`."""
    if posterior.is_ensemble:
        raise MetaplasticError("profile takes the posterior of one model, not of an ensemble.")
    monomial = format_monomial(idx, rule.factors)
    hits = [i for i, n in enumerate(posterior.names) if n == monomial or n.endswith(":" + monomial)]
    if len(hits) != 1:
        raise MetaplasticError(
            f"the posterior names the term {monomial!r} {len(hits)} times; pass the posterior "
            "of this model's laplace()."
        )
    j = hits[0]
    cov = np.asarray(posterior.covariance)
    if not cov[j, j] > 0:
        raise MetaplasticError(
            f"the posterior gives {monomial!r} no variance (frozen or undetermined): the "
            "conditional start is undefined; profile without posterior=."
        )
    mean, unravel = ravel_pytree(eqx.filter(model, filter_spec))
    if mean.size != cov.shape[0]:
        raise MetaplasticError(
            f"the posterior has {cov.shape[0]} parameters, the model {mean.size}: pass the "
            "posterior of this model."
        )
    slope = jnp.asarray(cov[:, j] / cov[j, j], mean.dtype)
    starts = mean + (values - mean[j])[:, None] * slope
    return jax.vmap(unravel)(starts)


@validates_input
def profile(
    model: PyTree,
    data: PyTree,
    loss: AbstractLoss,
    term: str,
    values: Float[Array, " k"] | Sequence[float],
    *,
    where: Callable[[PyTree], TaylorRule] | None = None,
    filter_spec: PyTree | None = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    solver: Any = None,
    steps: int = 20,
    differentiation: AbstractDifferentiation | None = None,
    posterior: Posterior | None = None,
) -> Profile:
    """The profile likelihood of one Taylor term: for each of `values`, the term is fixed
    (frozen with a `trainable` mask) and every other trainable parameter refitted from
    `model` (one vmapped `metaplastic.fit` over the values, Levenberg–Marquardt by default),
    and the fit objective recorded. A flat profile is a term the data do not determine.

    **Arguments:**

    - `model`: the fitted model to start each refit from.
    - `data`, `loss`, `filter_spec`, `penalty`, `differentiation`: as for `fit`.
    - `term`: the monomial, e.g. `"x*y"` (`"1"` for the constant).
    - `values`: the values to fix it at.
    - `where`: `where(model)` is the `TaylorRule` (default: the only one in the model).
    - `solver`, `steps`: of the refits (default `LevenbergMarquardt()`, 20 steps).
    - `posterior`: the Laplace posterior of `model` (`metaplastic.laplace`). With it, each
      refit starts from the posterior's conditional mean of the other parameters given the
      term's value (`θ̂ + Σ[:, j] / Σ[j, j] · (value − θ̂_j)`) instead of from `model`: for
      a term strongly correlated with others, fixing it far from its estimate while the
      others stay put can make the simulation diverge before the first refit step.

    **Returns:**

    A `Profile`.
    """
    if where is None:
        rules = [n for n in jax.tree.leaves(model, is_leaf=_is_taylor) if _is_taylor(n)]
        if len(rules) != 1:
            raise MetaplasticError(
                f"The model holds {len(rules)} Taylor rules; pass where= to choose one."
            )

        def where(m):
            # The one Taylor rule of `m` (the model, or a tree of its shape such as a spec).
            return next(n for n in jax.tree.leaves(m, is_leaf=_is_taylor) if _is_taylor(n))

    rule = where(model)
    if not isinstance(rule, TaylorRule):
        raise MetaplasticError(f"profile needs a TaylorRule, got {type(rule).__name__}.")
    if not isinstance(term, str):
        raise MetaplasticError(f"term must be a monomial such as 'x*y', got {term!r}.")
    idx = (0,) * len(rule.factors) if term.strip() == "1" else rule.monomial(term)
    values = jnp.asarray(values, rule.coefficients.dtype)
    if values.ndim != 1 or values.size == 0:
        raise MetaplasticError(f"values must be a non-empty 1-d list, got shape {values.shape}.")
    k = values.size
    penalties = as_penalties(penalty)
    loss_obj = _check_gn_loss(loss) if solver is None else loss
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    mask = np.ones(rule.coefficients.shape, bool) if rule.trainable is None else rule.trainable
    mask = np.array(mask, bool)
    mask[idx] = False
    frozen = eqx.tree_at(where, model, rule.with_trainable(mask))
    # The spec of the frozen model: the rule's new mask is a leaf that does not train.
    frozen_spec = eqx.tree_at(
        lambda s: where(s).trainable, filter_spec, False, is_leaf=lambda x: x is None
    )
    params, static = eqx.partition(frozen, frozen_spec)
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), params)
    if posterior is not None:
        params = _conditional_starts(posterior, model, filter_spec, idx, rule, values, where)
        params = eqx.filter(params, frozen_spec)
    start = eqx.combine(params, static)
    coefficients = where(start).coefficients.at[(slice(None),) + idx].set(values)
    start = eqx.tree_at(lambda m: where(m).coefficients, start, coefficients)
    result = fit(
        start,
        data,
        loss_obj,
        solver=LevenbergMarquardt() if solver is None else solver,
        steps=steps,
        filter_spec=frozen_spec,
        penalty=penalties,
        differentiation=differentiation,
        ensemble=True,
        data_ensemble_axis=None,
        progress=False,
    )
    # Score with the original mask, so that a penalty counts the fixed term too.
    fitted = eqx.tree_at(
        lambda m: where(m).trainable, result.model, rule.trainable, is_leaf=lambda x: x is None
    )
    fitted_params, fitted_static = eqx.partition(fitted, filter_spec)

    def objective(p):
        m = eqx.combine(p, fitted_static)
        return loss_obj(m, data) + total_penalty(penalties, m)

    values_out = eqx.filter_jit(jax.vmap(objective))(fitted_params)
    return Profile(term, values, values_out, result.model)
