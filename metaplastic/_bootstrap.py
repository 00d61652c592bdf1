"""The bootstrap of a fit: refit the model to many replicate datasets — drawn from the fitted
model (parametric) or resampled trajectories of the data (case resampling) — in one vmapped
`metaplastic.fit`, and read intervals off the spread of the refits.

Where the Laplace approximation is poorly calibrated — a misspecified likelihood, a biased
estimator, a curvature that changes over the interval — the parametric bootstrap still mimics
the whole pipeline (generation, fitting, its bias) and its *basic* interval
`[2θ̂ − q_high, 2θ̂ − q_low]` corrects a bias that is roughly the same at the estimate and at
the truth.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PyTree

from ._errors import MetaplasticError, validates_input
from ._fit import fit, partition_trainable
from ._jacobian import AbstractDifferentiation
from ._types import Key
from .losses import AbstractLoss, AbstractPenalty


METHODS = ("basic", "percentile")


class Bootstrap(eqx.Module):
    """The refits of a bootstrap (see `metaplastic.bootstrap`).

    - `estimate`: the trainable parameters of the model the bootstrap started from (the fit
      to the data), a PyTree (with a leading member axis for an ensemble).
    - `samples`: the refitted trainable parameters, like `estimate` with a replicate axis
      of size `n` in front (after the member axis for an ensemble).
    - `kind`: `"parametric"` or `"cases"`.
    - `ensemble`: whether `estimate` has a leading member axis.
    """

    estimate: PyTree
    samples: PyTree
    kind: str = eqx.field(static=True)
    ensemble: bool = eqx.field(static=True, default=False)

    @property
    def _axis(self) -> int:
        return 1 if self.ensemble else 0

    def std(self) -> PyTree:
        """The standard deviation of each parameter over the refits, a PyTree like
        `estimate`."""
        return jax.tree.map(lambda s: jnp.std(s, axis=self._axis, ddof=1), self.samples)

    def bias(self) -> PyTree:
        """The bootstrap estimate of the bias, `mean(θ*) − θ̂`, like `estimate`."""
        return jax.tree.map(
            lambda s, e: jnp.mean(s, axis=self._axis) - e, self.samples, self.estimate
        )

    def interval(self, level: float = 0.95, method: str = "basic") -> tuple[PyTree, PyTree]:
        """`(low, high)`: the central `level` interval of each parameter, PyTrees like
        `estimate`.

        - `"basic"`: `[2θ̂ − q(1 − α/2), 2θ̂ − q(α/2)]` with `q` the quantiles of the refits
          (corrects the bias of the estimator as far as it is the same at θ̂ as at the truth).
        - `"percentile"`: `[q(α/2), q(1 − α/2)]`.
        """
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise MetaplasticError(f"level must be a number between 0 and 1, got {level!r}.")
        if method not in METHODS:
            raise MetaplasticError(f"method must be one of {METHODS}, got {method!r}.")
        a = 0.5 * (1 - level)
        lo = jax.tree.map(lambda s: jnp.quantile(s, a, axis=self._axis), self.samples)
        hi = jax.tree.map(lambda s: jnp.quantile(s, 1 - a, axis=self._axis), self.samples)
        if method == "percentile":
            return lo, hi
        low = jax.tree.map(lambda e, q: 2 * e - q, self.estimate, hi)
        high = jax.tree.map(lambda e, q: 2 * e - q, self.estimate, lo)
        return low, high


def _member(tree: PyTree, i: int) -> PyTree:
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)


@validates_input
def bootstrap(
    model: PyTree,
    data: PyTree,
    loss: AbstractLoss,
    *,
    n: int,
    key: Key,
    simulate: Callable[[PyTree, PyTree, Key, int], PyTree] | None = None,
    solver: Any = None,
    steps: int | None = None,
    filter_spec: PyTree | None = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    progress: bool = True,
) -> Bootstrap:
    """Bootstrap a fit: `n` replicate datasets, every one refitted from the fitted `model`,
    all replicates (and all members of an ensemble) in one vmapped `metaplastic.fit`.

    - Parametric (`simulate` given): `simulate(model, data, key, n)` draws `n` datasets from
      the fitted model, stacked along a new leading axis, each shaped like `data` (which it
      may read for the design: inputs, initial weights, lengths). This mimics
      the whole pipeline — how the data were generated and how they are fitted — so it
      carries the estimator's bias and a misspecified likelihood with it. `simulate` may run
      on the host (the library's generators do); for an ensemble it is called once per
      member.
    - Case resampling (`simulate=None`): each replicate draws as many trajectories (the
      leading data axis) as the data hold, with replacement. It needs no generative model
      and keeps the trajectories' own noise, but it estimates the spread of the fit around
      θ̂, not a bias of the estimator: it cannot correct a misspecified likelihood.

    The same `key` gives the same replicates and refits.

    **Arguments:**

    - `model`: the fitted model (an ensemble, with a leading member axis, if `ensemble`).
    - `data`, `loss`, `filter_spec`, `penalty`, `differentiation`, `ensemble`,
      `data_ensemble_axis`: as for `metaplastic.fit` (`data_ensemble_axis` 0 or `None`).
    - `n`: replicates per model.
    - `key`: PRNG key of the replicates.
    - `simulate`: `simulate(model, data, key, n) -> data` for a parametric bootstrap (for an
      ensemble: one member's model and data).
    - `solver`, `steps`, `progress`: of the refits, as for `fit`.

    **Returns:**

    A `Bootstrap`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise MetaplasticError(f"n must be an integer >= 2, got {n!r}.")
    if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
        raise MetaplasticError(f"key must be one JAX PRNG key, got {key!r}.")
    if simulate is not None and not callable(simulate):
        raise MetaplasticError("simulate must be a function simulate(model, data, key, n) -> data.")
    if ensemble and data_ensemble_axis not in (0, None):
        raise MetaplasticError("bootstrap takes data_ensemble_axis 0 or None.")
    n = int(n)
    filter_spec, params, static = partition_trainable(model, filter_spec)
    leaves = jax.tree.leaves(params)
    members = leaves[0].shape[0] if ensemble else 1
    keys = jr.split(key, members)

    def member_data(i):
        return data if not ensemble or data_ensemble_axis is None else _member(data, i)

    replicates = []
    for i in range(members):
        d = member_data(i)
        if simulate is not None:
            m = eqx.combine(_member(params, i) if ensemble else params, static)
            r = simulate(m, d, keys[i], n)
        else:
            size = jax.tree.leaves(d)[0].shape[0]
            idx = jr.randint(keys[i], (n, size), 0, size)
            r = jax.tree.map(lambda a, idx=idx: a[idx] if eqx.is_array(a) else a, d)
        replicates.append(r)
    stacked = jax.tree.map(
        lambda *a: jnp.concatenate([jnp.asarray(x) for x in a]) if eqx.is_array(a[0]) else a[0],
        *replicates,
    )
    if ensemble:
        start = jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), params)
    else:
        start = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), params)
    result = fit(
        eqx.combine(start, static),
        stacked,
        loss,
        solver=solver,
        steps=steps,
        filter_spec=filter_spec,
        penalty=penalty,
        differentiation=differentiation,
        ensemble=True,
        data_ensemble_axis=0,
        progress=progress,
    )
    samples = eqx.filter(result.model, filter_spec)
    samples = jax.tree.map(lambda a: a.reshape((members, n) + a.shape[1:]), samples)
    if not ensemble:
        samples = jax.tree.map(lambda a: a[0], samples)
    kind = "cases" if simulate is None else "parametric"
    return Bootstrap(params, samples, kind, ensemble)
