"""Model comparison: fit several candidate models (rule families, term masks) to the same data
and score each by its held-out log-likelihood, AIC, BIC and Laplace evidence, in one table."""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from ._errors import MetaplasticError, validates_input
from ._fit import fit, rule_filter_spec
from ._frames import members_frame
from ._jacobian import AbstractDifferentiation
from ._laplace import laplace
from ._types import Key
from .losses import AbstractGaussNewtonLoss, AbstractLikelihood, AbstractPenalty, per_observation


CRITERIA = ("held_out", "aic", "bic", "evidence")


class Comparison(eqx.Module):
    """The scores of candidate models fitted to the same data (see
    `metaplastic.compare_models`). Every score is an array whose last axis runs over the
    candidates in the order of `names` (with a leading member axis for an ensemble).

    - `log_likelihood`: the maximised log-likelihood on the training data (for squared error
      with the noise variance at its maximum-likelihood value `RSS/n`).
    - `held_out_log_likelihood`: the log-likelihood of the held-out data under the fitted
      model (squared error: with the training noise variance); `None` without held-out data.
    - `aic`: `2k − 2 log L`; `bic`: `k log n − 2 log L`; `k` counts the free parameters plus
      one noise variance per squared-error group, `n` the valid training observations.
    - `log_evidence`: the Laplace approximation of the log marginal likelihood, with the prior
      `N(0, prior_std²)` on each free parameter and the noise variances plugged in as
      `metaplastic.laplace` estimates them (`RSS/(n − p)`):
      `log L + log prior(θ̂) + (p/2) log 2π − ½ log det(H + I/prior_std²)` at the fitted θ̂,
      `H` the Gauss–Newton curvature of the negative log-likelihood (the posterior precision
      of `laplace`). It is exact for a model linear in its parameters with Gaussian noise of
      that variance, up to the distance between θ̂ and the posterior mode (`O(1/prior_std²)`).
    - `n_params`: `k` of each candidate; `n_obs`: `n`.
    - `models`: the fitted candidates, `{name: model}`.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    log_likelihood: Float[Array, "*members models"]
    held_out_log_likelihood: Float[Array, "*members models"] | None
    aic: Float[Array, "*members models"]
    bic: Float[Array, "*members models"]
    log_evidence: Float[Array, "*members models"]
    n_obs: Array
    n_params: tuple[int, ...] = eqx.field(static=True)
    prior_std: float = eqx.field(static=True)
    models: dict[str, PyTree]

    def scores(self, criterion: str) -> Float[Array, "*members models"]:
        """The scores of one criterion, signed so that higher is better (AIC and BIC
        negated)."""
        if criterion not in CRITERIA:
            raise MetaplasticError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
        if criterion == "held_out":
            if self.held_out_log_likelihood is None:
                raise MetaplasticError("compare_models was given no held-out data.")
            return self.held_out_log_likelihood
        if criterion == "evidence":
            return self.log_evidence
        return -(self.aic if criterion == "aic" else self.bic)

    def best(self, criterion: str) -> str | np.ndarray:
        """The name of the candidate each criterion prefers; for an ensemble, an integer
        array of indices into `names`, one per member."""
        pick = np.argmax(np.asarray(self.scores(criterion)), axis=-1)
        return self.names[int(pick)] if pick.ndim == 0 else pick

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate: `model`, `k`, `log_likelihood`, `held_out`, `aic`, `bic`,
        `log_evidence`."""
        if self.aic.ndim != 1:
            raise MetaplasticError("table() is per dataset, not for an ensemble.")
        rows = []
        for i, name in enumerate(self.names):
            held = self.held_out_log_likelihood
            rows.append(
                {
                    "model": name,
                    "k": self.n_params[i],
                    "log_likelihood": float(self.log_likelihood[i]),
                    "held_out": None if held is None else float(held[i]),
                    "aic": float(self.aic[i]),
                    "bic": float(self.bic[i]),
                    "log_evidence": float(self.log_evidence[i]),
                }
            )
        return rows

    def to_dataframe(self) -> Any:
        """`table()` as a pandas DataFrame (needs pandas); for an ensemble, every member's
        rows with a leading `member` column."""
        members = self.aic.shape[0] if self.aic.ndim != 1 else None
        columns = ["model", "k", "log_likelihood", "held_out", "aic", "bic", "log_evidence"]
        one = lambda i: (self if i is None else self._member(i)).table()
        return members_frame(members, one, columns)

    def _member(self, i: int) -> "Comparison":
        """Ensemble member `i`'s scores (what `table` reads)."""
        held = self.held_out_log_likelihood
        return dataclasses.replace(
            self,
            log_likelihood=self.log_likelihood[i],
            held_out_log_likelihood=None if held is None else held[i],
            aic=self.aic[i],
            bic=self.bic[i],
            log_evidence=self.log_evidence[i],
        )

    def __str__(self) -> str:
        if self.aic.ndim != 1:
            return f"Comparison of {len(self.names)} models over {self.aic.shape[0]} members"
        width = max(len("model"), *(len(n) for n in self.names))
        cols = ("k", "log L", "held-out", "AIC", "BIC", "log evidence")
        lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>12}" for c in cols)]
        for r in self.table():
            held = "-" if r["held_out"] is None else f"{r['held_out']:.2f}"
            values = (r["log_likelihood"], r["aic"], r["bic"], r["log_evidence"])
            lines.append(
                f"{r['model']:<{width}}  {r['k']:>12}  {values[0]:>12.2f}  {held:>12}  "
                + "  ".join(f"{v:>12.2f}" for v in values[1:])
            )
        return "\n".join(lines)


def _group_sums(
    loss: AbstractGaussNewtonLoss, model: PyTree, data: PyTree
) -> list[tuple[AbstractLikelihood, Array, Array]]:
    """Per group of observations: its likelihood, `Σ ℓ` over the valid entries and their
    number."""
    out = []
    for obs in loss.observe(model, data):
        value = per_observation(obs)[0]
        out.append((obs.likelihood, jnp.sum(value), jnp.sum(obs.mask)))
    return out


def _log_likelihoods(loss, model, train, test, sigma):
    """The training log-likelihood (noise variances at their maximum), the same with the
    noise scales `sigma` of the Laplace posterior (one per squared-error group, for the
    evidence), the number of training observations, the number of squared-error groups and
    the held-out log-likelihood (`nan` without `test`)."""
    groups = _group_sums(loss, model, train)
    held_groups = None if test is None else _group_sums(loss, model, test)
    ll = jnp.zeros(())
    ll_sigma = jnp.zeros(())
    held = jnp.zeros(()) if test is not None else jnp.full((), jnp.nan)
    n_total = jnp.zeros(())
    sigmas = iter(jnp.atleast_1d(sigma) if sigma is not None else ())
    for i, (likelihood, total, count) in enumerate(groups):
        count = jnp.asarray(count, ll.dtype)
        n_total = n_total + count
        var = sigma_var = None
        if likelihood.estimates_noise:
            var = total / jnp.maximum(count, 1)
            sigma_var = next(sigmas) ** 2
        ll = ll + likelihood.log_likelihood(total, count, var)
        ll_sigma = ll_sigma + likelihood.log_likelihood(total, count, sigma_var)
        if held_groups is not None:
            _, t_total, t_count = held_groups[i]
            held = held + likelihood.log_likelihood(t_total, t_count, var)
    n_noise = sum(1 for likelihood, _, _ in groups if likelihood.estimates_noise)
    return ll, ll_sigma, n_total, n_noise, held


def _score(loss, model, data, test, post, prior_std, ensemble, axis):
    """The training and held-out log-likelihoods, the number of observations and the Laplace
    log evidence of one fitted candidate (vmapped over an ensemble)."""
    free = np.asarray(post.free)
    p = int(free.sum())
    params, static = eqx.partition(model, rule_filter_spec(model))
    n_noise = []

    def one(prm, d, t, prec, sigma):
        m = eqx.combine(prm, static)
        ll, ll_sigma, n, noise, held = _log_likelihoods(loss, m, d, t, sigma)
        n_noise[:] = [noise]
        theta = ravel_pytree(prm)[0][free]
        h = prec[np.ix_(free, free)] + jnp.eye(p) / prior_std**2
        log_prior = -0.5 * jnp.sum((theta / prior_std) ** 2) - p * math.log(
            prior_std * math.sqrt(2 * math.pi)
        )
        logdet = jnp.linalg.slogdet(h)[1]
        evidence = ll_sigma + log_prior + 0.5 * p * math.log(2 * math.pi) - 0.5 * logdet
        return ll, n, held, evidence

    if ensemble:
        t_axis = None if test is None else axis
        sigma_axis = None if post.noise_scale is None else 0
        fn = eqx.filter_vmap(one, in_axes=(0, axis, t_axis, 0, sigma_axis))
    else:
        fn = one
    ll, n, held, evidence = eqx.filter_jit(fn)(params, data, test, post.precision, post.noise_scale)
    return ll, n, held, evidence, n_noise[0]


@validates_input
def compare_models(
    candidates: Mapping[str, PyTree],
    data: PyTree,
    loss: AbstractGaussNewtonLoss,
    *,
    test: PyTree | None = None,
    refit: bool = True,
    solver: Any = None,
    steps: int | None = None,
    penalty: AbstractPenalty | Sequence[AbstractPenalty] = (),
    differentiation: AbstractDifferentiation | None = None,
    prior_std: float = 1.0,
    chunks: int | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
    key: Key | None = None,
    progress: bool = True,
) -> Comparison:
    """Fit each candidate model to the same data and compare them: held-out log-likelihood,
    AIC, BIC and the Laplace evidence, in one `Comparison`.

    A candidate is any model with trainable parameters (the default filter spec: the rule
    parameters, frozen Taylor terms excluded), e.g. the same network with rules of different
    term masks. The loss must have Gauss–Newton structure (`ActivityMSE`, `ChoiceBCE`, ...),
    whose per-observation terms are negative log-likelihoods (squared error: Gaussian noise
    of unknown variance; Bernoulli: choices).

    **Arguments:**

    - `candidates`: `{name: model}`, started where each fit should start.
    - `data`: the training data, shared by all candidates.
    - `loss`: an `AbstractGaussNewtonLoss`.
    - `test`: held-out data for the held-out log-likelihood (optional).
    - `refit`: fit each candidate first (default); `False` scores the models as given.
    - `solver`, `steps`, `penalty`, `differentiation`, `key`, `progress`: of the fits, as
      for `metaplastic.fit` (the penalty also enters the Laplace posterior, see
      `metaplastic.laplace`, but not the likelihoods).
    - `prior_std`: the standard deviation of the Gaussian prior of every free parameter in
      the evidence.
    - `chunks`: the number of groups the trajectories are cut into for the Jacobian of the
      posterior (default: the solver's `chunks`, else chosen as by `metaplastic.LevenbergMarquardt`).
    - `ensemble`, `data_ensemble_axis`: as for `fit`, for many datasets at once (`test`
      then has its member axis at the same position).

    **Returns:**

    A `Comparison`.
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise MetaplasticError("candidates must be a non-empty dict {name: model}.")
    if not isinstance(loss, AbstractGaussNewtonLoss):
        raise MetaplasticError(
            "compare_models needs a loss with Gauss-Newton structure (an AbstractGaussNewtonLoss "
            f"such as metaplastic.losses.ActivityMSE()), got {type(loss).__name__}."
        )
    if isinstance(prior_std, bool) or not isinstance(prior_std, (int, float)) or prior_std <= 0:
        raise MetaplasticError(f"prior_std must be a positive number, got {prior_std!r}.")
    prior_std = float(prior_std)
    names = tuple(str(n) for n in candidates)
    fitted, columns, n_params, n_obs = {}, [], [], None
    for name, model in candidates.items():
        if refit:
            model = fit(
                model,
                data,
                loss,
                solver=solver,
                steps=steps,
                penalty=penalty,
                differentiation=differentiation,
                ensemble=ensemble,
                data_ensemble_axis=data_ensemble_axis,
                key=key,
                progress=progress,
            ).model
        fitted[name] = model
        post = laplace(
            model,
            data,
            loss,
            chunks=chunks if chunks is not None else getattr(solver, "chunks", None),
            penalty=penalty,
            differentiation=differentiation,
            ensemble=ensemble,
            data_ensemble_axis=data_ensemble_axis,
        )
        ll, n, held, evidence, n_noise = _score(
            loss, model, data, test, post, prior_std, ensemble, data_ensemble_axis
        )
        k = sum(post.free) + n_noise
        n_params.append(k)
        n_obs = n
        columns.append((ll, held, evidence, k, n))
    stack = lambda i: jnp.stack([c[i] for c in columns], axis=-1)
    ll, held, evidence = stack(0), stack(1), stack(2)
    k = jnp.asarray(n_params, ll.dtype)
    n = jnp.asarray(n_obs, ll.dtype)[..., None]
    aic = 2 * k - 2 * ll
    bic = k * jnp.log(n) - 2 * ll
    return Comparison(
        names,
        ll,
        None if test is None else held,
        aic,
        bic,
        evidence,
        n_obs,
        tuple(n_params),
        prior_std,
        fitted,
    )
