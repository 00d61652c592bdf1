"""Sparse rule discovery: which terms of a Taylor library do the data need?

- `threshold_fit`: a sequential thresholded fit — fit every candidate term, take the Laplace
  interval of each, drop the terms whose interval contains 0, refit the rest, until the set of
  terms no longer changes — giving a short, readable rule with intervals.
- `stability_selection`: the thresholded fit repeated on random subsets of the trajectories
  (every subset one member of one vmapped fit); how often each term is selected, and the terms
  selected in at least a given fraction of the subsets.

Every member of a vmapped ensemble has its own set of terms: its own `TaylorRule.trainable`
mask, which `metaplastic.fit` and `metaplastic.laplace` vmap with the member
(`per_member=`). A dropped term is set to 0 and frozen there, so it is exactly 0 in the rule
the simulation sees, has no gradient and no curvature, and its row and column of the
posterior covariance are zero.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._errors import MetaplasticError, validates_input
from ._fit import check_ensemble, check_key, fit, rule_filter_spec
from ._frames import members_frame
from ._jacobian import AbstractDifferentiation, as_differentiation
from ._laplace import Posterior, laplace
from ._types import Key
from .losses import AbstractGaussNewtonLoss, AbstractPenalty, as_penalties
from .rules import TaylorRule, format_expression, format_monomial


DROP = ("all", "weakest")


# ---------------------------------------------------------------------- the per-member terms
def _is_taylor(node: Any) -> bool:
    return isinstance(node, TaylorRule)


def _taylor_rule(tree: PyTree) -> TaylorRule:
    """The one `TaylorRule` of a model (or of a tree of its structure: its trainable part)."""
    rules = [n for n in jax.tree.leaves(tree, is_leaf=_is_taylor) if _is_taylor(n)]
    if len(rules) != 1:
        raise MetaplasticError(
            f"sparse rule discovery needs a model with exactly one TaylorRule; this one holds "
            f"{len(rules)}."
        )
    return rules[0]


def _gated(tree: PyTree, gate: Array) -> PyTree:
    """`tree` with the coefficients of its Taylor rule multiplied by `gate` (flat): a 0/1
    gate zeroes the dropped terms."""
    c = _taylor_rule(tree).coefficients
    new = c * jnp.reshape(gate, c.shape).astype(c.dtype)
    return eqx.tree_at(lambda t: _taylor_rule(t).coefficients, tree, new)


# ---------------------------------------------------------------------- results
def _significant(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


class Selection(eqx.Module):
    """The result of `metaplastic.threshold_fit`: the rule made of the selected terms, fitted,
    with its Laplace posterior. Arrays have a leading member axis for an ensemble.

    - `model`: the fitted model; the coefficients of dropped terms are exactly 0.
    - `posterior`: the Laplace posterior of the last fit (`metaplastic.Posterior`); dropped
      terms have zero mean and zero variance (for an ensemble, `posterior.free` is the
      candidate library; `member(i).posterior.free` that member's selection).
    - `selected`: `True` on the selected terms, shaped like the rule's coefficients.
    - `estimate`, `low`, `high`: every term's fitted coefficient and its `level` interval
      (all 0 for dropped terms).
    - `library`: the candidate terms (the rule's `trainable` mask, or every term).
    - `rounds`: the number of fits until the set stopped changing; `converged`: whether it
      did within the `rounds` allowed (if not, the last fit's terms are reported).
    - `free`: per flat parameter of `posterior`, whether it is free after the selection.
    """

    model: PyTree
    posterior: Posterior
    selected: Bool[Array, "..."]
    estimate: Float[Array, "..."]
    low: Float[Array, "..."]
    high: Float[Array, "..."]
    rounds: Int[Array, "*members"]
    converged: Bool[Array, "*members"]
    free: Bool[Array, "*members n_params"]
    library: Bool[Array, "..."]
    factors: tuple[str, ...] = eqx.field(static=True)
    level: float = eqx.field(static=True)

    @property
    def is_ensemble(self) -> bool:
        return self.converged.ndim == 1

    def member(self, i: int) -> "Selection":
        """The selection of ensemble member `i`."""
        if not self.is_ensemble:
            raise MetaplasticError("member() needs the selection of an ensemble.")
        take = lambda a: a[i] if eqx.is_array(a) else a
        params, static = eqx.partition(self.model, rule_filter_spec(self.model))
        post = dataclasses.replace(
            self.posterior.member(i), free=tuple(bool(f) for f in np.asarray(self.free[i]))
        )
        return Selection(
            eqx.combine(jax.tree.map(take, params), static),
            post,
            self.selected[i],
            self.estimate[i],
            self.low[i],
            self.high[i],
            self.rounds[i],
            self.converged[i],
            self.free[i],
            self.library,
            self.factors,
            self.level,
        )

    def _one(self, member: int | None) -> "Selection":
        if self.is_ensemble:
            if member is None:
                raise MetaplasticError("this selection is an ensemble: pass member=i.")
            return self.member(member)
        return self

    def terms(self, member: int | None = None) -> tuple[str, ...]:
        """The selected monomials, in the canonical order of `TaylorRule.to_expression`
        (`member`: which member of an ensemble)."""
        one = self._one(member)
        sel = np.asarray(one.selected)
        exps = sorted((e for e in np.ndindex(*sel.shape) if sel[e]), reverse=True)
        return tuple(format_monomial(e, self.factors) for e in exps)

    def term_sets(self) -> list[tuple[str, ...]]:
        """The selected monomials of every member (a one-item list for a single model)."""
        if not self.is_ensemble:
            return [self.terms()]
        return [self.terms(i) for i in range(self.converged.shape[0])]

    def expression(self, member: int | None = None, *, digits: int = 3) -> str:
        """The selected rule as an expression with `digits` significant digits, e.g.
        `"x*r - 0.0496*w"`."""
        one = self._one(member)
        sel, est = np.asarray(one.selected), np.asarray(one.estimate, np.float64)
        terms = {e: _significant(est[e], digits) for e in np.ndindex(*sel.shape) if sel[e]}
        return format_expression(terms, self.factors)

    def table(self, member: int | None = None) -> list[dict[str, Any]]:
        """One row per selected term: `term`, `estimate`, `low`, `high`."""
        one = self._one(member)
        rows = []
        for e in sorted(
            (e for e in np.ndindex(*one.selected.shape) if one.selected[e]), reverse=True
        ):
            rows.append(
                {
                    "term": format_monomial(e, self.factors),
                    "estimate": float(one.estimate[e]),
                    "low": float(one.low[e]),
                    "high": float(one.high[e]),
                }
            )
        return rows

    def to_dataframe(self) -> Any:
        """`table()` as a pandas DataFrame (needs pandas); for an ensemble, every member's
        rows with a leading `member` column."""
        members = self.converged.shape[0] if self.is_ensemble else None
        return members_frame(members, self.table, ["term", "estimate", "low", "high"])

    def format(self, member: int | None = None, *, digits: int = 3) -> str:
        """The rule and each selected term's estimate with its interval, as text."""
        one = self._one(member)
        pct = f"{100 * self.level:g}%"
        lines = [f"Δw ∝ {one.expression(digits=digits)}"]
        for r in one.table():
            lines.append(
                f"  {r['term']:<10} {r['estimate']:>+11.{digits}g}  "
                f"{pct} [{r['low']:.{digits}g}, {r['high']:.{digits}g}]"
            )
        if not bool(one.converged):
            lines.append(f"  (the term set still changed after {int(one.rounds)} fits)")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.is_ensemble:
            return f"Selection of {self.converged.shape[0]} members"
        return self.format()


class Stability(eqx.Module):
    """The result of `metaplastic.stability_selection` (arrays with a leading member axis for
    an ensemble).

    - `frequency`: the fraction of the subsets in which each term was selected, shaped like
      the rule's coefficients.
    - `threshold`: the frequency at or above which a term counts as stable.
    - `selections`: the thresholded fits of every subset, one `Selection` ensemble whose
      members are `(member, subset)` pairs in that order.
    - `library`, `factors`: the candidate terms and the rule's factors.
    """

    frequency: Float[Array, "..."]
    selections: Selection
    library: Bool[Array, "..."]
    threshold: float = eqx.field(static=True)
    resamples: int = eqx.field(static=True)
    factors: tuple[str, ...] = eqx.field(static=True)

    @property
    def is_ensemble(self) -> bool:
        return self.frequency.ndim == len(self.factors) + 1

    @property
    def stable(self) -> Bool[Array, "..."]:
        """`True` on the terms selected in at least `threshold` of the subsets."""
        return (self.frequency >= self.threshold) & jnp.asarray(self.library)

    def _frequency(self, member: int | None) -> np.ndarray:
        f = np.asarray(self.frequency)
        if self.is_ensemble:
            if member is None:
                raise MetaplasticError("this stability selection is an ensemble: pass member=i.")
            return f[member]
        return f

    def terms(self, member: int | None = None) -> tuple[str, ...]:
        """The stable monomials, in canonical order (`member`: which member)."""
        f, lib = self._frequency(member), np.asarray(self.library)
        exps = sorted(
            (e for e in np.ndindex(*f.shape) if lib[e] and f[e] >= self.threshold),
            reverse=True,
        )
        return tuple(format_monomial(e, self.factors) for e in exps)

    def term_sets(self) -> list[tuple[str, ...]]:
        """The stable monomials of every member (a one-item list for a single model)."""
        if not self.is_ensemble:
            return [self.terms()]
        return [self.terms(i) for i in range(self.frequency.shape[0])]

    def table(self, member: int | None = None) -> list[dict[str, Any]]:
        """One row per candidate term, most often selected first: `term`, `frequency`,
        `stable`."""
        f, lib = self._frequency(member), np.asarray(self.library)
        rows = [
            {
                "term": format_monomial(e, self.factors),
                "frequency": float(f[e]),
                "stable": bool(f[e] >= self.threshold),
            }
            for e in np.ndindex(*f.shape)
            if lib[e]
        ]
        return sorted(rows, key=lambda r: -r["frequency"])

    def to_dataframe(self) -> Any:
        """`table()` as a pandas DataFrame (needs pandas); for an ensemble, every member's
        rows with a leading `member` column."""
        members = self.frequency.shape[0] if self.is_ensemble else None
        return members_frame(members, self.table, ["term", "frequency", "stable"])

    def format(self, member: int | None = None) -> str:
        """The selection frequency of every candidate term, as text; `*` marks stable ones."""
        rows = self.table(member)
        lines = [f"term        frequency (of {self.resamples} subsets)"]
        for r in rows:
            lines.append(f"  {r['term']:<10} {r['frequency']:>6.2f}{' *' if r['stable'] else ''}")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.is_ensemble:
            return f"Stability selection of {self.frequency.shape[0]} members"
        return self.format()


# ---------------------------------------------------------------------- checks
def _check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise MetaplasticError(f"level must be a number between 0 and 1, got {level!r}.")
    return float(level)


def _check_count(name: str, value: Any, least: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise MetaplasticError(f"{name} must be an integer >= {least}, got {value!r}.")
    if value < least:
        raise MetaplasticError(f"{name} must be an integer >= {least}, got {value!r}.")
    return int(value)


def _members_first(
    model: PyTree, data: PyTree, ensemble: bool, axis: int | None
) -> tuple[TaylorRule, PyTree, PyTree, PyTree, PyTree, int]:
    """The model's Taylor rule, its filter spec, its trainable part with a leading member axis
    (added for one model), the rest, the data with the member axis first (added, moved, or
    broadcast when every member sees the same data), and the number of members."""
    rule = _taylor_rule(model)
    spec = rule_filter_spec(model)
    params, static = eqx.partition(model, spec)
    if not ensemble:
        params = jax.tree.map(lambda a: a[None], params)
        return rule, spec, params, static, jax.tree.map(_add_axis, data), 1
    members = check_ensemble(jax.tree.leaves(params), data, axis)
    if axis is None:
        data = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (members,) + a.shape) if eqx.is_array(a) else a, data
        )
    else:
        data = jax.tree.map(lambda a: jnp.moveaxis(a, axis, 0) if eqx.is_array(a) else a, data)
    return rule, spec, params, static, data, members


def _add_axis(a: Any) -> Any:
    return a[None] if eqx.is_array(a) else a


def _trajectories(data: PyTree) -> int:
    """The size of the trajectory axis (axis 1, after the member axis)."""
    sizes = {a.shape[1] for a in jax.tree.leaves(data) if eqx.is_array(a) and a.ndim >= 2}
    if len(sizes) != 1:
        raise MetaplasticError(
            f"every data array needs a trajectory axis of one size; found sizes {sorted(sizes)}."
        )
    return sizes.pop()


def _where_members(keep: np.ndarray, new: PyTree, old: PyTree) -> PyTree:
    """`new` for the members where `keep` is True, `old` elsewhere (leading member axis)."""

    def one(a, b):
        if not eqx.is_array(a):
            return a
        k = jnp.reshape(jnp.asarray(keep), (-1,) + (1,) * (a.ndim - 1))
        return jnp.where(k, a, b)

    return jax.tree.map(one, new, old)


# ---------------------------------------------------------------------- threshold_fit
@validates_input
def threshold_fit(
    model: PyTree,
    data: PyTree,
    loss: AbstractGaussNewtonLoss,
    *,
    level: float = 0.95,
    drop: Literal["all", "weakest"] = "all",
    rounds: int = 10,
    steps: int | None = None,
    solver: Any = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    batch_size: int | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    key: Key | None = None,
    progress: bool = False,
) -> Selection:
    """Sequential thresholded fit: fit the candidate terms, drop those whose Laplace interval
    contains 0, refit the others from where they were, and repeat until the set of terms no
    longer changes.

    The candidates are the trainable terms of the model's one `TaylorRule` (its `trainable`
    mask, or every term); frozen terms keep their value. Every member of an ensemble has its
    own term set, in one vmapped `metaplastic.fit` per round; a member whose set has stopped
    changing keeps the result of the fit that confirmed it, so that it ends exactly where it
    would have ended fitted alone.

    **Arguments:**

    - `model`: the starting model (e.g. a student with a small random Taylor rule); with
      `ensemble`, its trainable arrays have a leading member axis.
    - `data`, `loss`, `solver`, `steps`, `penalty`, `differentiation`, `batch_size`,
      `ensemble`, `data_ensemble_axis`, `progress`: as for `metaplastic.fit` (`steps` per
      round). The loss needs Gauss–Newton structure (for the Laplace intervals).
    - `level`: the level of the intervals (0.95: a term stays if its 95 % interval excludes
      0). With many candidates, a level such as `1 − 0.05 / n_terms` keeps the chance of
      any spurious term small.
    - `drop`: `"all"` drops every term whose interval contains 0 after each fit; `"weakest"`
      only the one with the smallest `|estimate| / std` (backward elimination, one term per
      fit: slower, kinder to nearly collinear terms).
    - `rounds`: the most fits.
    - `key`: PRNG key of the minibatches (default `jax.random.key(0)`).

    **Returns:**

    A `Selection`: the fitted model, its posterior, the selected terms (`terms()`), the rule
    as an expression (`expression()`) and its intervals (`format()`).
    """
    if not isinstance(loss, AbstractGaussNewtonLoss):
        raise MetaplasticError(
            "threshold_fit needs a loss with Gauss-Newton structure (for the Laplace "
            f"intervals), such as metaplastic.losses.ActivityMSE(); got {type(loss).__name__}."
        )
    level = _check_level(level)
    if drop not in DROP:
        raise MetaplasticError(f"drop must be one of {DROP}, got {drop!r}.")
    rounds = _check_count("rounds", rounds)
    key = check_key(key)
    differentiation = as_differentiation(differentiation)
    penalties = as_penalties(penalty)
    rule, spec, params, static, data, members = _members_first(
        model, data, ensemble, data_ensemble_axis
    )
    shape = tuple(rule.coefficients.shape[-len(rule.factors) :])
    if ensemble and rule.coefficients.shape != (members,) + shape:
        raise MetaplasticError(
            f"ensemble=True needs the rule's coefficients shaped (members,) + {shape}, got "
            f"{rule.coefficients.shape}."
        )
    library = np.ones(shape, bool) if rule.trainable is None else np.asarray(rule.trainable, bool)
    if library.shape != shape:
        raise MetaplasticError(
            "threshold_fit needs one trainable mask for every member, shaped like one member's "
            f"coefficients {shape}; got {library.shape}."
        )
    _trajectories(data)  # every data array has the trajectory axis
    flat_library = library.reshape(-1)
    dtype = rule.coefficients.dtype
    chunks = getattr(solver, "chunks", None)
    own_terms = lambda m: _taylor_rule(m).trainable

    selected = np.broadcast_to(flat_library, (members, flat_library.size)).copy()
    done = np.zeros(members, bool)
    used = np.zeros(members, np.int32)
    kept = None  # (params, posterior, flat gates, estimate, low, high) of the last fits
    for r in range(rounds):
        active = ~done
        # Dropped terms start at 0 and are frozen there; terms outside the library keep
        # their values, frozen; the selected terms train.
        gate = jnp.asarray(selected | ~flat_library, dtype)
        start = jax.vmap(_gated)(params, gate)
        masks = jnp.asarray(selected.reshape((members,) + shape))
        start_model = eqx.tree_at(
            own_terms, eqx.combine(start, static), masks, is_leaf=lambda x: x is None
        )
        result = fit(
            start_model,
            data,
            loss,
            solver=solver,
            steps=steps,
            penalty=penalties,
            differentiation=differentiation,
            batch_size=batch_size,
            ensemble=True,
            data_ensemble_axis=0,
            per_member=own_terms,
            key=jr.fold_in(key, r),
            progress=progress,
        )
        fitted = eqx.partition(result.model, rule_filter_spec(result.model))[0]
        post = laplace(
            result.model,
            data,
            loss,
            penalty=penalties,
            differentiation=differentiation,
            chunks=chunks,
            ensemble=True,
            data_ensemble_axis=0,
            per_member=own_terms,
        )
        ones = jax.tree.map(jnp.ones_like, fitted)
        flat_gate = jax.vmap(lambda p, g: ravel_pytree(_gated(p, g))[0])(ones, gate)
        # The candidates are free in every round (each member's dropped terms are fixed
        # inside its posterior), so that the rounds' posteriors have one structure.
        post = dataclasses.replace(post, free=tuple(bool(f) for f in flat_library))
        # Conditional on the directions the data determine (the pseudo-inverse's spread), as
        # the selection was designed and measured: with the unbounded intervals of a
        # rank-deficient posterior every term of a collinear library would contain 0, and
        # the first round would drop them all.
        low, high = post.interval(level, conditional=True)
        estimate = np.asarray(_taylor_rule(fitted).coefficients).reshape(members, -1)
        low = np.asarray(_taylor_rule(low).coefficients).reshape(members, -1)
        high = np.asarray(_taylor_rule(high).coefficients).reshape(members, -1)
        std = np.asarray(_taylor_rule(post.std(conditional=True)).coefficients)
        std = std.reshape(members, -1)
        contains = selected & (low <= 0) & (high >= 0)
        if drop == "all":
            new = selected & ~contains
        else:
            z = np.where(contains, np.abs(estimate) / np.where(std > 0, std, 1.0), np.inf)
            z = np.where(contains & (std == 0), 0.0, z)
            weakest = np.argmin(z, axis=1)
            new = selected.copy()
            rows = np.flatnonzero(contains.any(axis=1))
            new[rows, weakest[rows]] = False
        now = (fitted, post, flat_gate, estimate, low, high, jnp.asarray(selected))
        kept = now if kept is None else _where_members(active, now, kept)
        used = np.where(active, r + 1, used)
        changed = (new != selected).any(axis=1)
        done = done | (active & ~changed)
        if done.all():
            break
        if r < rounds - 1:
            selected = np.where((active & changed)[:, None], new, selected)
    fitted, post, flat_gate, estimate, low, high, sel = kept
    free = np.asarray(post.free)[None, :] & (np.asarray(flat_gate) != 0)
    sel = np.asarray(sel)
    out_model = eqx.combine(fitted, static)
    out = Selection(
        out_model,
        post,
        jnp.asarray(sel.reshape((members,) + shape)),
        jnp.asarray(estimate.reshape((members,) + shape)),
        jnp.asarray(np.where(sel, low, 0.0).reshape((members,) + shape)),
        jnp.asarray(np.where(sel, high, 0.0).reshape((members,) + shape)),
        jnp.asarray(used),
        jnp.asarray(done),
        jnp.asarray(free),
        jnp.asarray(library),
        rule.factors,
        level,
    )
    return out if ensemble else out.member(0)


# ---------------------------------------------------------------------- stability selection
@validates_input
def stability_selection(
    model: PyTree,
    data: PyTree,
    loss: AbstractGaussNewtonLoss,
    *,
    resamples: int = 20,
    fraction: float = 0.5,
    threshold: float = 0.7,
    level: float = 0.95,
    drop: Literal["all", "weakest"] = "all",
    rounds: int = 10,
    steps: int | None = None,
    solver: Any = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    key: Key | None = None,
    progress: bool = False,
) -> Stability:
    """Stability selection: `metaplastic.threshold_fit` on `resamples` random subsets of the
    trajectories (each `fraction` of them, drawn without replacement), all subsets (and all
    members of an ensemble) in one vmapped fit per round; a term is stable when it is selected
    in at least `threshold` of the subsets.

    **Arguments:**

    - `model`, `data`, `loss`, `level`, `drop`, `rounds`, `steps`, `solver`, `penalty`,
      `differentiation`, `ensemble`, `data_ensemble_axis`, `progress`: as for
      `metaplastic.threshold_fit`; every subset starts from `model` (its member's).
    - `resamples`: the number of subsets per model.
    - `fraction`: the share of the trajectories in each subset (at least one trajectory).
    - `threshold`: the selection frequency at or above which a term is stable.
    - `key`: PRNG key of the subsets (default `jax.random.key(0)`); the same key gives the
      same subsets and fits.

    **Returns:**

    A `Stability`: `frequency` of every term, `terms()` the stable ones, `selections` the
    thresholded fit of every subset.
    """
    resamples = _check_count("resamples", resamples, 2)
    for name, value in (("fraction", fraction), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise MetaplasticError(f"{name} must be a number in (0, 1], got {value!r}.")
    key = check_key(key)
    if not isinstance(loss, AbstractGaussNewtonLoss):
        raise MetaplasticError(
            "stability_selection needs a loss with Gauss-Newton structure (for the Laplace "
            f"intervals), such as metaplastic.losses.ActivityMSE(); got {type(loss).__name__}."
        )
    rule, _, params, static, data, members = _members_first(
        model, data, ensemble, data_ensemble_axis
    )
    n = _trajectories(data)
    m = max(1, int(round(fraction * n)))
    k_subsets, k_fit = jr.split(key)

    def subsets(k):
        keys = jr.split(k, resamples)
        return jax.vmap(lambda kk: jr.permutation(kk, n)[:m])(keys)

    idx = jax.vmap(subsets)(jr.split(k_subsets, members))  # (members, resamples, m)
    rows = jnp.arange(members)[:, None, None]

    def pick(a):
        if not eqx.is_array(a):
            return a
        sub = a[rows, idx]  # (members, resamples, m, ...)
        return sub.reshape((members * resamples, m) + a.shape[2:])

    stacked = jax.tree.map(pick, data)
    start = jax.tree.map(lambda a: jnp.repeat(a, resamples, axis=0), params)
    selections = threshold_fit(
        eqx.combine(start, static),
        stacked,
        loss,
        level=level,
        drop=drop,
        rounds=rounds,
        steps=steps,
        solver=solver,
        penalty=penalty,
        differentiation=differentiation,
        ensemble=True,
        data_ensemble_axis=0,
        key=k_fit,
        progress=progress,
    )
    shape = selections.selected.shape[1:]
    frequency = jnp.mean(
        selections.selected.reshape((members, resamples) + shape).astype(jnp.result_type(float)),
        axis=1,
    )
    if not ensemble:
        frequency = frequency[0]
    return Stability(
        frequency, selections, selections.library, float(threshold), resamples, rule.factors
    )
