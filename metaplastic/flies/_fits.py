"""Per-fly plasticity rules from real behaviour: every fly fitted in one vmapped fit, scored
in sample and on held-out trials against the no-plasticity null, and families of rules
compared across flies.

One *member* of the vmapped ensemble is one (configuration, fly) pair. A configuration says
which trials a fit may see and which trials it is scored on:

- `all`: fit on every trial, score on every trial (in sample);
- `fraction f`: fit on the first `f` of the fly's trials, score on the rest (held out);
- `block1`: fit on the first block only, score on the first block (in sample);
- `block1 fraction f`: fit on the first `f` of block 1, score on the rest of block 1.

Every fit replays *all* of a fly's trials (the weights evolve through the held-out trials
under the fitted rule, from the weights it produced on the training trials); only the
presentations a configuration fits on enter its likelihood, and only those it is scored on
enter its score. Each fly's data are several re-draws of the noisy odour encoding, fitted
together, so a rule cannot exploit one particular noise draw.

The covariance and forgetting families are one rule over `(x, w, r)` to first order whose
coefficients are multiplied by a per-member 0/1 gate, so both are fitted in one compiled
fit. The null model of every score is the same network with every rule parameter zero (no
plasticity; its p(accept) stays near 0.5). `base_rate_scores` gives, on the same splits, what a
constant acceptance rate per fly earns against p = 0.5: on accept-only stretches (blocks 2–3 of
the published conversion, and five flies throughout) that alone is close to 100 %, and the
likelihood of a rule has no finite optimum there.
"""

import logging
import time
import typing
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from .._errors import MetaplasticError
from .._fit import fit
from .._jacobian import AbstractDifferentiation
from .._random import host_rng
from .._solver import LevenbergMarquardt
from ..behaviour import (
    DEFAULT_INPUT_VARIANCE,
    FACTORS,
    REWARD_SIGNALS,
    TAYLOR_STUDENT_SCALE,
    ChoiceBCE,
    ChoiceDataset,
    ChoiceSensitivities,
    MushroomBody,
    NoisyChoices,
    OdourEncoding,
    PackedChoiceDataset,
    choice_log_likelihood,
    mlp_students,
    stack_members,
    taylor_students,
)
from ..losses import L1, AbstractGaussNewtonLoss
from ..rules import AbstractRule, TaylorRule
from ._families import FAMILIES, FAMILY_TERMS, SMALL_FACTORS, family_coefficients
from ._records import DrosophilaData
from ._results import FlyFits
from ._splits import presentation_masks, trial_splits


logger = logging.getLogger("metaplastic")


def _students(family: str, members: int, key: jax.Array) -> AbstractRule:
    """`members` initial rules of the `"taylor"` or `"mlp"` family, arrays with a leading
    member axis, drawn on the host."""
    if family == "mlp":
        return mlp_students(members, key=key)
    return taylor_students(members, key=key)


@eqx.filter_jit
def _log_likelihoods(network, rule_params, rule_static, data, masks):
    """Per member, the log-likelihood of the choices on `masks` (marginal over the draws, or
    summed over them when each draw is a trajectory)."""

    def one(p, d, m):
        net = network.with_rule(eqx.combine(p, rule_static))
        # Packed replay does not read the presentation mask, so it only selects what is summed.
        return jnp.sum(choice_log_likelihood(net, _with_mask(d, m)))

    return jax.vmap(one)(rule_params, data, masks)


def _with_mask(data, mask):
    """Member data (packed, or the packed draws of `NoisyChoices`) with another
    presentation mask of the same shape as its packed arrays' mask."""
    if isinstance(data, NoisyChoices):
        return NoisyChoices(eqx.tree_at(lambda p: p.presentation_mask, data.packed, mask))
    return eqx.tree_at(lambda d: d.presentation_mask, data, mask)


class _Gated(eqx.Module):
    """One member's data and the gate (1 = free, 0 = absent) of every coefficient of the
    shared `(x, w, r)` rule: this is how the small families share one compiled fit. The gate
    is repeated for each of the member's trajectories, so that every array has the
    trajectory axis; all copies are equal."""

    data: PackedChoiceDataset | NoisyChoices
    gate: Float[Array, "*members trajectories n_params"]

    @property
    def member_gate(self) -> Float[Array, " n_params"]:
        return self.gate[0]


def _gated_rule(rule: TaylorRule, gate: Array) -> TaylorRule:
    c = rule.coefficients * gate.reshape(rule.coefficients.shape)
    return eqx.tree_at(lambda r: r.coefficients, rule, c)


class _GatedChoices(AbstractGaussNewtonLoss):
    """`ChoiceBCE` of the network whose rule coefficients are multiplied by the member's
    gate."""

    def observe(self, model: MushroomBody, batch: _Gated, *, checkpoint: bool | int = False):
        gated = model.with_rule(_gated_rule(model.rule, batch.member_gate))
        return ChoiceBCE().observe(gated, batch.data, checkpoint=checkpoint)


class _GatedSensitivities(AbstractDifferentiation):
    """The sensitivity Jacobian of the gated rule: logits(θ ⊙ g) has the Jacobian
    J(θ ⊙ g) · diag(g), so absent terms never move."""

    def supports(self, loss, model, batch, *, jacobian):
        return jacobian and isinstance(loss, _GatedChoices)

    def value_and_grad(self, loss, params, static, batch):
        raise MetaplasticError("the gated family fit takes Jacobians only")

    def linearise(self, loss, params, static, batch):
        gate = batch.member_gate
        gated = eqx.tree_at(lambda m: m.rule, params, _gated_rule(params.rule, gate))
        ((obs, jac),) = ChoiceSensitivities().linearise(ChoiceBCE(), gated, static, batch.data)
        return ((obs, jac * gate),)


def _prepare(data, network, encoding, resamples, fractions, key):
    """Encoded, packed member data `(configs · flies, resamples, ...)` and the masks of the
    same shape as its presentation mask."""
    flies = len(data)
    # Each fly repeated `resamples` times (fly-major), each copy with its own noise draw,
    # drawn on the host (see `metaplastic._random`).
    ds = jax.tree.map(lambda a: np.repeat(np.asarray(a), resamples, axis=0), data.dataset)
    noise = host_rng(key).standard_normal(ds.odours.shape + (encoding.n_in,))
    x = np.asarray(encoding.means)[ds.odours] + np.sqrt(encoding.variance) * noise
    x = np.where(ds.presentation_mask[..., None], x, 0.0)
    ds = ChoiceDataset(
        ds.odours,
        ds.choices,
        ds.presentation_mask,
        ds.trial_mask,
        ds.rewards,
        ds.expected_rewards,
        x.astype(np.asarray(encoding.means).dtype),
    )
    packed = stack_members(PackedChoiceDataset.from_choices(ds), flies)  # (flies, res, ...)
    names, fit_on, score_on = trial_splits(data, fractions)
    n_configs = len(names)
    # Trial masks (configs, flies, trials) → presentation masks (configs, flies, res, n).
    expand = lambda m: np.repeat(m[:, :, None, :], resamples, axis=2)
    tiled = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n_configs,) + a.shape), packed)
    flat = lambda a: np.reshape(a, (n_configs * flies,) + a.shape[2:])
    fit_mask = flat(presentation_masks(tiled, expand(fit_on)))
    score_mask = flat(presentation_masks(tiled, expand(score_on)))
    members = jax.tree.map(lambda a: flat(a), tiled)
    return names, members, fit_mask, score_mask


def _score(network, fitted, member_data, score_mask):
    """Percent deviance of every member against the same rule with all parameters zero (no
    plasticity: a zero Taylor rule, or an MLP whose tanh output is 0), in one call."""
    # Host-side array plumbing throughout (see `metaplastic._random`).
    params, static = eqx.partition(fitted, eqx.is_inexact_array)
    both = jax.tree.map(lambda a: jnp.asarray(np.concatenate([a, np.zeros_like(a)])), params)
    twice = lambda a: jnp.asarray(np.concatenate([np.asarray(a), np.asarray(a)]))
    ll = _log_likelihoods(
        network, both, static, jax.tree.map(twice, member_data), twice(score_mask)
    )
    ll = np.asarray(ll, dtype=np.float64)
    n = ll.shape[0] // 2
    return 100.0 * (ll[:n] - ll[n:]) / -ll[n:]


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def fit_families(
    data: DrosophilaData,
    families: Sequence[str] = FAMILIES,
    *,
    reward_signal: Literal["prediction_error", "reward"] = "prediction_error",
    resamples: int = 4,
    marginal: bool = True,
    fractions: Sequence[float] = (0.5, 0.6, 0.7, 0.8),
    n_in: int = 2,
    hidden: int = 10,
    input_variance: float = DEFAULT_INPUT_VARIANCE,
    steps: int = 12,
    l1: float = 1e-3,
    key: jax.Array,
) -> dict[str, FlyFits]:
    """Fit rule families to every fly: per family, all flies and all train/test splits in
    one vmapped Gauss–Newton fit (`"covariance"` and `"forgetting"` together in one), every
    fit scored against the no-plasticity null.

    The flies share one encoding, one network and one set of encoding re-draws, so the
    families are compared on the same inputs.

    **Arguments:**

    - `data`: the flies (`load_drosophila`).
    - `families`: from `"covariance"` (free terms `1, r, x, x*r`), `"forgetting"` (the same
      plus `w`), `"taylor"` (all 81 terms over `x, y, w, r`, with L1) and `"mlp"`.
    - `reward_signal`: `"prediction_error"` (`r = R − E[R]`) or `"reward"` (`r = R`).
    - `resamples`: draws of the unobserved encoding noise per fly.
    - `marginal`: fit (and score) the likelihood averaged over the draws, `p(choice)` being
      the mean over draws (`metaplastic.behaviour.NoisyChoices`); `False` fits every draw as
      a trajectory of its own (the average of the draws' log-likelihoods).
    - `fractions`: training fractions of the held-out sweeps (each in `(0, 1)`; may be
      empty).
    - `n_in`, `hidden`, `input_variance`: the network and the encoding.
    - `steps`: Levenberg–Marquardt (Fisher scoring) steps of each fit.
    - `l1`: the L1 penalty of the `"taylor"` family (the others have none).
    - `key`: the encoding, the initial weights, the noise draws and the initial rules.

    **Returns:**

    `{family: FlyFits}`, in the order of `families`.
    """
    if not isinstance(data, DrosophilaData):
        raise MetaplasticError(f"data must be a DrosophilaData, got {type(data).__name__}.")
    families = (families,) if isinstance(families, str) else tuple(families)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families or len(set(families)) != len(families):
        raise MetaplasticError(f"families must be distinct names from {FAMILIES}, got {families}.")
    if reward_signal not in REWARD_SIGNALS:
        raise MetaplasticError(
            f"reward_signal must be one of {REWARD_SIGNALS}, got {reward_signal!r}."
        )
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise MetaplasticError(f"resamples must be a positive integer, got {resamples!r}.")
    if not isinstance(marginal, bool):
        raise MetaplasticError(f"marginal must be True or False, got {marginal!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise MetaplasticError(f"steps must be a positive integer, got {steps!r}.")
    fractions = tuple(float(f) for f in fractions)
    if not all(0.0 < f < 1.0 for f in fractions) or len(set(fractions)) != len(fractions):
        raise MetaplasticError(
            f"fractions must be distinct and lie strictly between 0 and 1, got {fractions}."
        )
    if not l1 >= 0:
        raise MetaplasticError(f"l1 must be non-negative, got {l1}.")
    k_enc, k_net, k_noise, k_rule = jr.split(key, 4)
    encoding = OdourEncoding(n_in, variance=input_variance, key=k_enc)
    zero = TaylorRule.zeros(FACTORS, order=0)
    network = MushroomBody(zero, n_in=n_in, hidden=hidden, reward_signal=reward_signal, key=k_net)
    names, member_data, fit_mask, score_mask = _prepare(
        data, network, encoding, resamples, fractions, k_noise
    )
    n_configs, flies = len(names), len(data)
    members = n_configs * flies
    trajectories = resamples
    if marginal:
        # Each member is one trajectory whose draws are averaged in its likelihood.
        one = lambda a: np.expand_dims(np.asarray(a), 1)
        member_data = NoisyChoices(jax.tree.map(one, member_data))
        fit_mask, score_mask, trajectories = one(fit_mask), one(score_mask), 1
    train = jax.tree.map(np.asarray, _with_mask(member_data, fit_mask))
    groups = [f for f in families if f in FAMILY_TERMS]
    groups = ([tuple(groups)] if groups else []) + [(f,) for f in families if f not in groups]
    out = {}
    for group, k in zip(groups, jr.split(k_rule, len(groups))):
        start = time.perf_counter()
        common = dict(solver=LevenbergMarquardt(), steps=steps, ensemble=True, progress=False)
        if group[0] in FAMILY_TERMS:
            template = TaylorRule.zeros(SMALL_FACTORS, order=1)
            gates = np.stack([template.mask(list(FAMILY_TERMS[f])) for f in group])
            gates = np.repeat(gates.reshape(len(group), 1, -1), members, axis=1)
            gates = gates.reshape(len(group) * members, -1).astype(template.coefficients.dtype)
            c = TAYLOR_STUDENT_SCALE * host_rng(k).standard_normal(gates.shape) * gates
            c = c.reshape((-1,) + template.coefficients.shape)
            students = eqx.tree_at(
                lambda r: r.coefficients, template, jnp.asarray(c, template.coefficients.dtype)
            )
            gated = _Gated(
                jax.tree.map(lambda a, n=len(group): jnp.asarray(np.concatenate([a] * n)), train),
                jnp.asarray(np.repeat(gates[:, None, :], trajectories, axis=1)),
            )
            result = fit(
                network.with_rule(students),
                gated,
                _GatedChoices(),
                differentiation=_GatedSensitivities(),
                **common,
            )
            fitted = result.model.rule
            c = np.asarray(fitted.coefficients) * gates.reshape(fitted.coefficients.shape)
            rule = eqx.tree_at(lambda r: r.coefficients, fitted, c)
        else:
            result = fit(
                network.with_rule(_students(group[0], members, k)),
                jax.tree.map(jnp.asarray, train),
                ChoiceBCE(),
                penalty=L1(l1) if group[0] == "taylor" and l1 > 0 else (),
                **common,
            )
            rule = result.model.rule
        rule = jax.tree.map(lambda a: np.asarray(a) if eqx.is_inexact_array(a) else a, rule)
        data_all = jax.tree.map(lambda a, n=len(group): np.concatenate([a] * n), member_data)
        deviance = _score(network, rule, data_all, np.concatenate([score_mask] * len(group)))
        objective = np.asarray(result.history.loss)[-1]
        seconds = (time.perf_counter() - start) / len(group)
        setting = dict(data=data, names=names, fractions=fractions, reward_signal=reward_signal)
        for g, family in enumerate(group):
            part = slice(g * members, (g + 1) * members)
            own = jax.tree.map(lambda a, p=part: a[p] if eqx.is_inexact_array(a) else a, rule)
            out[family] = _collect(family, own, deviance[part], objective[part], seconds, **setting)
        logger.info(
            "fit_families(%s): %d members in %.1f s",
            group,
            members * len(group),
            seconds * len(group),
        )
    return {f: out[f] for f in families}


def _collect(family, rule, deviance, objective, seconds, *, data, names, fractions, reward_signal):
    """The `FlyFits` of one family from its members' fitted rules, deviances and
    objectives (configuration-major, `(configs · flies, ...)`)."""
    n_configs, flies = len(names), len(data)
    by_config = lambda i: jax.tree.map(
        lambda a: a.reshape((n_configs, flies) + a.shape[1:])[i] if eqx.is_inexact_array(a) else a,
        rule,
    )
    dev = deviance.reshape(n_configs, flies)
    n_f = len(fractions)
    i_block1 = names.index("block1")
    to_jax = lambda r: jax.tree.map(lambda a: jnp.asarray(a) if eqx.is_array(a) else a, r)
    rules_all = by_config(0)
    return FlyFits(
        family=family,
        reward_signal=reward_signal,
        names=data.names,
        accept_only=np.asarray([f.accept_only for f in data.flies]),
        fractions=fractions,
        in_sample=dev[0],
        held_out=dev[1 : 1 + n_f].reshape(n_f, flies),
        block1=dev[i_block1],
        block1_held_out=dev[i_block1 + 1 :].reshape(n_f, flies),
        coefficients=family_coefficients(family, rules_all),
        block1_coefficients=family_coefficients(family, by_config(i_block1)),
        rules=to_jax(rules_all),
        objective=objective.reshape(n_configs, flies)[0],
        seconds=seconds,
    )
