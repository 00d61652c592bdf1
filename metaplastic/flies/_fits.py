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

import dataclasses
import inspect
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
from jaxtyping import Array, Bool, Float

from ._behaviour import (
    BEHAVIOUR_FACTORS,
    _host_generator,
    choice_jacobian,
    choice_logits,
    mlp_student,
    replay,
    stack_members,
    taylor_student,
)
from ._errors import MetaplasticError, require
from ._fisher import fit_bernoulli_gauss_newton
from .data import ChoiceDataset, DrosophilaData, PackedChoiceDataset
from .nn import MushroomBody, OdourEncoding
from .nn._mushroom_body import DEFAULT_INPUT_VARIANCE, REWARD_SIGNALS
from .rules import AbstractRule, TaylorRule
from .rules._expression import format_monomial


logger = logging.getLogger("metaplastic")

# The free terms of the small families, over (x, w, r) to first order: the covariance rule
# Δw = θ₀ + θ_r r + θ_x x + θ_xr x·r, and the same with a weight-dependent (forgetting) term.
FAMILY_TERMS = {
    "covariance": ("1", "r", "x", "x*r"),
    "forgetting": ("1", "r", "x", "x*r", "w"),
}
FAMILIES = ("covariance", "forgetting", "taylor", "mlp")
_SMALL_FACTORS = ("x", "w", "r")


@dataclasses.dataclass(frozen=True)
class FlyFits:
    """Per-fly fits of one rule family (`fit_flies`).

    - `family`, `reward_signal`: what was fitted.
    - `names`: the flies, in batch order; `accept_only`: whether the fly's file holds no
      rejection, `(flies,)`.
    - `fractions`: the training fractions of the held-out sweep, `(F,)`.
    - `in_sample`: percent deviance explained on all trials by the rule fitted on all trials,
      `(flies,)`.
    - `held_out`: percent deviance explained on the trials after the first `fractions[i]` of
      each fly's trials, by the rule fitted on those first trials, `(F, flies)`.
    - `block1`: fitted and scored on block 1 only, `(flies,)`.
    - `block1_held_out`: fitted on the first `fractions[i]` of block 1 and scored on the rest
      of block 1, `(F, flies)`.
    - `coefficients`: for Taylor families, `{term: (flies,)}` of the rule fitted on all
      trials (only the free terms); `None` for the MLP.
    - `block1_coefficients`: the same for the rules fitted on block 1.
    - `rules`: the rules fitted on all trials, arrays with a leading fly axis.
    - `objective`: the final objective of every fit on all trials, `(flies,)`.
    - `seconds`: wall time of the fit and the scoring (compilation included).
    """

    family: str
    reward_signal: str
    names: tuple[str, ...]
    accept_only: np.ndarray
    fractions: tuple[float, ...]
    in_sample: np.ndarray
    held_out: np.ndarray
    block1: np.ndarray
    block1_held_out: np.ndarray
    coefficients: dict[str, np.ndarray] | None
    block1_coefficients: dict[str, np.ndarray] | None
    rules: AbstractRule
    objective: np.ndarray
    seconds: float

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: Sequence[bool] | np.ndarray) -> "FlyFits":
        """Keep the flies where `keep` is true (a boolean per fly), e.g.
        `fits.select(~fits.accept_only)`."""
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(self),):
            raise MetaplasticError(f"keep must be {len(self)} booleans, got {keep.shape}.")
        if not keep.any():
            raise MetaplasticError("select() would keep no fly.")
        idx = np.nonzero(keep)[0]
        coef = lambda c: None if c is None else {k: v[idx] for k, v in c.items()}
        return dataclasses.replace(
            self,
            names=tuple(self.names[i] for i in idx),
            accept_only=self.accept_only[idx],
            in_sample=self.in_sample[idx],
            held_out=self.held_out[:, idx],
            block1=self.block1[idx],
            block1_held_out=self.block1_held_out[:, idx],
            coefficients=coef(self.coefficients),
            block1_coefficients=coef(self.block1_coefficients),
            rules=jax.tree.map(lambda a: a[idx] if eqx.is_inexact_array(a) else a, self.rules),
            objective=self.objective[idx],
        )

    def without_accept_only(self) -> "FlyFits":
        """The flies whose file holds rejections."""
        return self.select(~self.accept_only)

    def medians(self) -> dict[str, float]:
        """Median over flies of every score (`held_out_0.5`, ... per fraction)."""
        out = {
            "in_sample": float(np.median(self.in_sample)),
            "block1": float(np.median(self.block1)),
        }
        for f, v, b in zip(self.fractions, self.held_out, self.block1_held_out):
            out[f"held_out_{f:g}"] = float(np.median(v))
            out[f"block1_held_out_{f:g}"] = float(np.median(b))
        return out

    def rows(self) -> list[dict]:
        """One row per fly: its scores and (Taylor families) its coefficients fitted on all
        trials (`coef_<term>`) and on block 1 (`block1_coef_<term>`)."""
        rows = []
        for i, name in enumerate(self.names):
            row = {
                "fly": name,
                "accept_only": bool(self.accept_only[i]),
                "in_sample": float(self.in_sample[i]),
                "block1": float(self.block1[i]),
            }
            for f, v, b in zip(self.fractions, self.held_out, self.block1_held_out):
                row[f"held_out_{f:g}"] = float(v[i])
                row[f"block1_held_out_{f:g}"] = float(b[i])
            for k, v in (self.coefficients or {}).items():
                row[f"coef_{k}"] = float(v[i])
            for k, v in (self.block1_coefficients or {}).items():
                row[f"block1_coef_{k}"] = float(v[i])
            rows.append(row)
        return rows


def family_rule(family: str, *, key: jax.Array, scale: float = 1e-3) -> AbstractRule:
    """A student rule of a named family, started near zero.

    - `"covariance"`: a `TaylorRule` over `(x, w, r)` to first order whose only trainable
      terms are `1, r, x, x*r`; `"forgetting"`: the same plus `w`;
    - `"taylor"`: every one of the 81 terms over `(x, y, w, r)` to second order;
    - `"mlp"`: `mlp_student`.
    """
    if family in FAMILY_TERMS:
        zero = TaylorRule.zeros(_SMALL_FACTORS, order=1)
        mask = zero.mask(list(FAMILY_TERMS[family]))
        c = scale * np.asarray(jr.normal(key, zero.coefficients.shape)) * mask
        return TaylorRule(c, _SMALL_FACTORS, trainable=mask)
    if family == "taylor":
        return taylor_student(key=key, scale=scale)
    if family == "mlp":
        return mlp_student(key=key)
    raise MetaplasticError(f"family must be one of {FAMILIES}, got {family!r}.")


def _students(family: str, members: int, key: jax.Array, scale: float = 1e-3) -> AbstractRule:
    """`members` initial rules of a family, arrays with a leading member axis."""
    if family == "mlp":
        # The initialisation of `mlp_student` (Equinox's uniform(±1/√fan_in) for every layer,
        # the output layer's weights scaled down and its bias zero), drawn on the host for
        # every member at once: initialising members one by one, or a vmapped initialiser,
        # spends seconds on PRNG dispatch and compilation.
        template = eqx.filter_eval_shape(mlp_student, key=key)  # structure only
        rng = _host_generator(key)
        layers = template.mlp.layers
        scale = inspect.signature(mlp_student).parameters["scale"].default
        arrays = []
        for i, layer in enumerate(layers):
            lim = 1.0 / np.sqrt(layer.in_features)
            w = rng.uniform(-lim, lim, (members,) + layer.weight.shape)
            b = rng.uniform(-lim, lim, (members,) + layer.bias.shape)
            if i == len(layers) - 1:
                w, b = scale * w, np.zeros_like(b)
            arrays += [jnp.asarray(w, layer.weight.dtype), jnp.asarray(b, layer.bias.dtype)]
        where = lambda r: [a for lyr in r.mlp.layers for a in (lyr.weight, lyr.bias)]
        return eqx.tree_at(where, template, arrays)
    # The 81-term Taylor student, coefficients drawn on the host (no PRNG compilation).
    rule = TaylorRule.zeros(BEHAVIOUR_FACTORS, order=2)
    c = scale * _host_generator(key).standard_normal((members,) + rule.coefficients.shape)
    return eqx.tree_at(lambda r: r.coefficients, rule, jnp.asarray(c, rule.coefficients.dtype))


def _configurations(
    data: DrosophilaData, fractions: tuple[float, ...]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The trial masks `(configs, flies, trials)` each configuration fits on and is
    scored on."""
    tm = np.asarray(data.dataset.trial_mask)
    first = np.asarray(data.block) == 0
    n_trials = tm.sum(axis=1)
    n_first = first.sum(axis=1)
    t = np.arange(tm.shape[1])[None, :]
    names, fit_on, score_on = ["all"], [tm], [tm]
    for f in fractions:
        cut = np.floor(f * n_trials).astype(int)[:, None]
        names.append(f"held_out_{f:g}")
        fit_on.append(tm & (t < cut))
        score_on.append(tm & (t >= cut))
    names.append("block1")
    fit_on.append(first)
    score_on.append(first)
    start = np.argmax(first, axis=1)[:, None]
    for f in fractions:
        cut = start + np.floor(f * n_first).astype(int)[:, None]
        names.append(f"block1_held_out_{f:g}")
        fit_on.append(first & (t < cut))
        score_on.append(first & (t >= cut))
    return names, np.stack(fit_on), np.stack(score_on)


def presentation_masks(
    packed: PackedChoiceDataset, trials: Bool[np.ndarray, "*batch trials"]
) -> Bool[np.ndarray, "*batch n"]:
    """The packed presentations that lie in the given trials: `True` where the presentation
    is valid and its trial is selected.

    **Arguments:**

    - `packed`: a `PackedChoiceDataset`, `(*batch, n, ...)`.
    - `trials`: which trials to keep, `(*batch, trials)`.

    **Returns:**

    A boolean array `(*batch, n)`.
    """
    index = np.asarray(packed.trial_index)
    trials = np.asarray(trials)
    picked = np.take_along_axis(trials, index, axis=-1)
    return np.asarray(packed.presentation_mask) & picked


@eqx.filter_jit
def _log_likelihoods(network, rule_params, rule_static, data, masks):
    """Per member, the log-likelihood of the choices on `masks` (summed over resamples)."""

    def one(p, d, m):
        net = network.with_rule(eqx.combine(p, rule_static))
        z = replay(net, d).logits
        c = d.choices
        ll = c * jax.nn.log_sigmoid(z) + (1 - c) * jax.nn.log_sigmoid(-z)
        return jnp.sum(jnp.where(m, ll, 0.0))

    return jax.vmap(one)(rule_params, data, masks)


class _Gated(eqx.Module):
    """One member's data and the gate (1 = free, 0 = absent) of every coefficient of the
    shared `(x, w, r)` rule: this is how the small families share one compiled fit."""

    data: PackedChoiceDataset
    gate: Float[Array, "*members n_params"]


def _gated_rule(rule: TaylorRule, gate: Array) -> TaylorRule:
    c = rule.coefficients * gate.reshape(rule.coefficients.shape)
    return eqx.tree_at(lambda r: r.coefficients, rule, c)


def _gated_logits(model: MushroomBody, d: _Gated):
    return choice_logits(model.with_rule(_gated_rule(model.rule, d.gate)), d.data)


def _gated_jacobian(theta, to_model, d: _Gated):
    # logits(θ ⊙ g) has the Jacobian J(θ ⊙ g) · diag(g): absent terms never move.
    logits, jac = choice_jacobian(theta * d.gate, to_model, d.data)
    return logits, jac * d.gate


def _prepare(data, network, encoding, resamples, fractions, key):
    """Encoded, packed member data `(configs · flies, resamples, ...)` and the masks."""
    flies = len(data)
    # Each fly repeated `resamples` times (fly-major), each copy with its own noise draw,
    # drawn on the host (see `generate_behaviour`: compiling the PRNG costs more than the
    # draws).
    ds = jax.tree.map(lambda a: np.repeat(np.asarray(a), resamples, axis=0), data.dataset)
    noise = _host_generator(key).standard_normal(ds.odours.shape + (encoding.n_in,))
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
    names, fit_on, score_on = _configurations(data, fractions)
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
    # Host-side array plumbing throughout: every eager JAX operation on new shapes costs a
    # compilation.
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
    fractions: Sequence[float] = (0.5, 0.6, 0.7, 0.8),
    n_in: int = 2,
    hidden: int = 10,
    input_variance: float = DEFAULT_INPUT_VARIANCE,
    iterations: int = 12,
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
    - `resamples`: re-draws of the noisy odour encoding per fly, fitted together.
    - `fractions`: training fractions of the held-out sweeps (each in `(0, 1)`; may be
      empty).
    - `n_in`, `hidden`, `input_variance`: the network and the encoding.
    - `iterations`: Gauss–Newton iterations.
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
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise MetaplasticError(f"iterations must be a positive integer, got {iterations!r}.")
    fractions = tuple(float(f) for f in fractions)
    if not all(0.0 < f < 1.0 for f in fractions) or len(set(fractions)) != len(fractions):
        raise MetaplasticError(
            f"fractions must be distinct and lie strictly between 0 and 1, got {fractions}."
        )
    if not l1 >= 0:
        raise MetaplasticError(f"l1 must be non-negative, got {l1}.")
    k_enc, k_net, k_noise, k_rule = jr.split(key, 4)
    encoding = OdourEncoding(n_in, variance=input_variance, key=k_enc)
    zero = TaylorRule.zeros(BEHAVIOUR_FACTORS, order=0)
    network = MushroomBody(zero, n_in=n_in, hidden=hidden, reward_signal=reward_signal, key=k_net)
    names, member_data, fit_mask, score_mask = _prepare(
        data, network, encoding, resamples, fractions, k_noise
    )
    n_configs, flies = len(names), len(data)
    members = n_configs * flies
    train = eqx.tree_at(lambda d: d.presentation_mask, member_data, fit_mask)
    train = jax.tree.map(np.asarray, train)
    groups = [f for f in families if f in FAMILY_TERMS]
    groups = ([tuple(groups)] if groups else []) + [(f,) for f in families if f not in groups]
    out = {}
    for group, k in zip(groups, jr.split(k_rule, len(groups))):
        start = time.perf_counter()
        common = dict(iterations=iterations, ensemble=True, data_ensemble_axis=0)
        if group[0] in FAMILY_TERMS:
            template = TaylorRule.zeros(_SMALL_FACTORS, order=1)
            gates = np.stack([template.mask(list(FAMILY_TERMS[f])) for f in group])
            gates = np.repeat(gates.reshape(len(group), 1, -1), members, axis=1)
            gates = gates.reshape(len(group) * members, -1).astype(template.coefficients.dtype)
            c = 1e-3 * _host_generator(k).standard_normal(gates.shape) * gates
            c = c.reshape((-1,) + template.coefficients.shape)
            students = eqx.tree_at(
                lambda r: r.coefficients, template, jnp.asarray(c, template.coefficients.dtype)
            )
            gated = _Gated(
                jax.tree.map(lambda a, n=len(group): jnp.asarray(np.concatenate([a] * n)), train),
                jnp.asarray(gates),
            )
            result = fit_bernoulli_gauss_newton(
                network.with_rule(students),
                gated,
                logits=_gated_logits,
                jacobian=_gated_jacobian,
                l1=0.0,
                **common,
            )
            fitted = result.model.rule
            c = np.asarray(fitted.coefficients) * gates.reshape(fitted.coefficients.shape)
            rule = eqx.tree_at(lambda r: r.coefficients, fitted, c)
        else:
            result = fit_bernoulli_gauss_newton(
                network.with_rule(_students(group[0], members, k)),
                train,
                logits=choice_logits,
                jacobian=choice_jacobian,
                l1=l1 if group[0] == "taylor" else 0.0,
                **common,
            )
            rule = result.model.rule
        rule = jax.tree.map(lambda a: np.asarray(a) if eqx.is_inexact_array(a) else a, rule)
        data_all = jax.tree.map(lambda a, n=len(group): np.concatenate([a] * n), member_data)
        deviance = _score(network, rule, data_all, np.concatenate([score_mask] * len(group)))
        objective = np.asarray(result.history.loss)[-1]
        seconds = (time.perf_counter() - start) / len(group)
        for g, family in enumerate(group):
            out[family] = _collect(
                family,
                data,
                names,
                fractions,
                reward_signal,
                rule,
                deviance,
                objective,
                g,
                n_configs,
                flies,
                seconds,
            )
        logger.info(
            "fit_families(%s): %d members in %.1f s",
            group,
            members * len(group),
            seconds * len(group),
        )
    return {f: out[f] for f in families}


def _collect(
    family,
    data,
    names,
    fractions,
    reward_signal,
    rule,
    deviance,
    objective,
    g,
    n_configs,
    flies,
    seconds,
):
    members = n_configs * flies
    part = slice(g * members, (g + 1) * members)
    by_config = lambda i: jax.tree.map(
        lambda a: (
            a[part].reshape((n_configs, flies) + a.shape[1:])[i] if eqx.is_inexact_array(a) else a
        ),
        rule,
    )
    dev = deviance[part].reshape(n_configs, flies)
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
        coefficients=_coefficients(family, rules_all),
        block1_coefficients=_coefficients(family, by_config(i_block1)),
        rules=to_jax(rules_all),
        objective=objective[part].reshape(n_configs, flies)[0],
        seconds=seconds,
    )


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def fit_flies(
    data: DrosophilaData,
    family: Literal["covariance", "forgetting", "taylor", "mlp"] = "forgetting",
    **options,
) -> FlyFits:
    """`fit_families(data, (family,), **options)[family]`: one family fitted to every fly."""
    return fit_families(data, (family,), **options)[family]


def _coefficients(family: str, rules: AbstractRule) -> dict[str, np.ndarray] | None:
    if not isinstance(rules, TaylorRule):
        return None
    c = np.asarray(rules.coefficients)
    if family in FAMILY_TERMS:
        out = {}
        for term in FAMILY_TERMS[family]:
            e = rules._monomial(term) if term != "1" else (0,) * len(rules.factors)
            out[term] = c[(slice(None),) + e]
        return out
    return {
        format_monomial(e, rules.factors): c[(slice(None),) + e] for e in np.ndindex(*c.shape[1:])
    }


def base_rate_scores(
    data: DrosophilaData, fractions: Sequence[float] = (0.5, 0.6, 0.7, 0.8)
) -> dict[str, np.ndarray]:
    """The percent deviance explained by a constant acceptance probability per fly (the
    fraction of presentations it accepted on the fitted trials), against `p = 0.5`, on the
    same train/test splits as `fit_families`.

    No plasticity is involved: this is how much of a rule's score a fly's base rate alone
    earns, since the no-plasticity null of `fit_families` starts at `p(accept) ≈ 0.5` and
    stays there. (The null's logits are `≈ 0` but not exactly, since its initial weights are
    small random numbers; here the reference is exactly `0.5`.)

    **Arguments:**

    - `data`: the flies.
    - `fractions`: the training fractions of the held-out splits.

    **Returns:**

    `{"in_sample": (flies,), "held_out": (F, flies), "block1": (flies,),
    "block1_held_out": (F, flies)}`, like the fields of `FlyFits`.
    """
    fractions = tuple(float(f) for f in fractions)
    names, fit_on, score_on = _configurations(data, fractions)
    pm = np.asarray(data.dataset.presentation_mask)
    ch = np.asarray(data.dataset.choices)
    n_f = len(fractions)
    dev = np.zeros((len(names), len(data)))
    for c in range(len(names)):
        for i in range(len(data)):
            fit = pm[i] & fit_on[c, i][:, None]
            score = pm[i] & score_on[c, i][:, None]
            # A smoothed rate (add one acceptance and one rejection), so that a held-out
            # rejection after an accept-only stretch has a finite cost.
            p = (ch[i][fit].sum() + 1.0) / (fit.sum() + 2.0)
            k, n = ch[i][score].sum(), score.sum()
            ll = k * np.log(p) + (n - k) * np.log1p(-p)
            ll0 = n * np.log(0.5)
            dev[c, i] = 100.0 * (ll - ll0) / -ll0
    i_block1 = names.index("block1")
    return {
        "in_sample": dev[0],
        "held_out": dev[1 : 1 + n_f].reshape(n_f, len(data)),
        "block1": dev[i_block1],
        "block1_held_out": dev[i_block1 + 1 :].reshape(n_f, len(data)),
    }


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """A paired comparison of two sets of per-fly scores (`compare_scores`).

    - `n`: flies compared; `n_improved`: flies where `b > a`; `n_worse`: where `b < a`.
    - `median_difference`: median of `b − a`.
    - `statistic`, `p_value`: the two-sided Wilcoxon signed-rank test of `b − a`
      (`scipy.stats.wilcoxon`; zero differences are dropped, and the p-value is NaN when
      no difference is non-zero).
    """

    n: int
    n_improved: int
    n_worse: int
    median_difference: float
    statistic: float
    p_value: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def compare_scores(
    a: Float[np.ndarray, " flies"] | Float[Array, " flies"],
    b: Float[np.ndarray, " flies"] | Float[Array, " flies"],
) -> PairedComparison:
    """Compare paired per-fly scores of two models: how many flies `b` improves on `a` and
    the Wilcoxon signed-rank p-value of the differences.

    Needs scipy (`pip install metaplastic[data]`).

    **Arguments:**

    - `a`, `b`: one score per fly, the same flies in the same order, `(flies,)`.

    **Returns:**

    A `PairedComparison`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise MetaplasticError(
            f"compare_scores needs two equal-length 1-D score arrays, got {a.shape} and {b.shape}."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MetaplasticError("compare_scores got a non-finite score.")
    stats = require("scipy.stats", "data", "The Wilcoxon signed-rank test")
    d = b - a
    if np.any(d != 0):
        test = stats.wilcoxon(b, a)
        statistic, p_value = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_value = float("nan"), float("nan")
    return PairedComparison(
        n=int(d.size),
        n_improved=int((d > 0).sum()),
        n_worse=int((d < 0).sum()),
        median_difference=float(np.median(d)),
        statistic=statistic,
        p_value=p_value,
    )


@typing.no_type_check  # validates its own input: see metaplastic/_errors.py
def compare_families(
    a: FlyFits,
    b: FlyFits,
    score: Literal["in_sample", "held_out", "block1", "block1_held_out"] = "in_sample",
    *,
    fraction: float | None = None,
) -> PairedComparison:
    """Paired comparison of two families fitted to the same flies (`b` against `a`).

    **Arguments:**

    - `a`, `b`: `FlyFits` of the same flies.
    - `score`: which score to compare.
    - `fraction`: for the held-out scores, the training fraction (default the first).

    **Returns:**

    A `PairedComparison` (`n_improved`: flies where `b` scores higher).
    """
    if a.names != b.names:
        raise MetaplasticError("The two fits hold different flies; compare the same flies.")
    if score in ("in_sample", "block1"):
        return compare_scores(getattr(a, score), getattr(b, score))
    if score not in ("held_out", "block1_held_out"):
        raise MetaplasticError(f"Unknown score {score!r}.")
    if not a.fractions or not b.fractions:
        raise MetaplasticError(
            f"No held-out split was fitted (fractions=()); cannot compare {score!r}."
        )
    f = a.fractions[0] if fraction is None else float(fraction)
    if f not in a.fractions or f not in b.fractions:
        raise MetaplasticError(f"fraction {f} was not fitted (have {a.fractions}).")
    return compare_scores(
        getattr(a, score)[a.fractions.index(f)], getattr(b, score)[b.fractions.index(f)]
    )
