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
enter its score. Each fly's data are several draws of the unobserved noisy odour encoding
(each with its own odour split and initial weights), fitted together: by their marginal
likelihood, or each as a trajectory of its own.

Each member starts from its own initial weights: the network's `initial_weights` carry the
member axis and `fit` vmaps them with the member (`per_member=`). The small families
(covariance, forgetting, forgetting_y) are one rule over `(x, y, w, r)` to first order, each
member with its family's terms trainable (its own `TaylorRule.trainable` mask, the other
terms frozen at 0), so all are fitted in one compiled fit.
The null model of every score is the same network with every rule parameter zero (no
plasticity; its p(accept) stays near 0.5). `base_rate_scores` gives, on the same splits, what a
constant acceptance rate per fly earns against p = 0.5: on accept-only stretches (blocks 2–3 of
the published conversion, and five flies throughout) that alone is close to 100 %, and the
likelihood of a rule has no finite optimum there.
"""

import logging
import time
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array

from .._errors import MetaplasticError, validates_input
from .._fit import fit
from .._random import host_rng
from .._solver import AbstractSolver, LevenbergMarquardt
from .._validate import weight_bound as check_weight_bound
from ..behaviour import (
    DEFAULT_INPUT_VARIANCE,
    FACTORS,
    REWARD_SIGNALS,
    TAYLOR_STUDENT_SCALE,
    ChoiceBCE,
    ChoiceDataset,
    MushroomBody,
    NoisyChoices,
    OdourEncoding,
    PackedChoiceDataset,
    marginal_logits,
    mlp_students,
    replay,
    stack_members,
    taylor_students,
)
from ..losses import L1
from ..rules import AbstractRule, TaylorRule
from ._families import (
    FAMILIES,
    FAMILY_TERMS,
    MEMORY_FAMILIES,
    SMALL_FACTORS,
    TAYLOR_FAMILIES,
    family_coefficients,
    family_rule,
)
from ._records import DrosophilaData
from ._results import FlyFits
from ._splits import presentation_masks, trial_splits


logger = logging.getLogger("metaplastic")


NOISE = ("presentation", "trajectory")


def _students(family: str, members: int, key: jax.Array, scale: float) -> AbstractRule:
    """`members` initial rules of the `"taylor"` or `"mlp"` family, arrays with a leading
    member axis, drawn on the host."""
    if family == "mlp":
        return mlp_students(members, key=key)
    if family in MEMORY_FAMILIES:
        return eqx.filter_vmap(lambda k: family_rule(family, key=k, scale=scale))(
            jr.split(key, members)
        )
    return taylor_students(members, key=key, scale=scale)


def _choices_with_l1(model: MushroomBody, batch: tuple) -> Array:
    """`ChoiceBCE` plus the member's exact L1 penalty on its Taylor coefficients, for
    first-order solvers: `batch` is the member's choices and its L1 weight (one per
    trajectory, all equal, so that minibatches select along it; the weight may differ
    between members)."""
    data, l1 = batch
    value = ChoiceBCE()(model, data)
    if isinstance(model.rule, TaylorRule):
        # Frozen terms (exactly 0) get no gradient from the penalty either.
        value = value + l1[0] * jnp.sum(jnp.abs(model.rule.effective_coefficients))
    return value


def _encode(data, draws, n_in, input_variance, noise, init_std, hidden, key):
    """Every fly's recording encoded `draws` times, `(flies, draws, ...)` packed, and the
    initial weights `(flies, draws, hidden, n_in)`: each (fly, draw) has its own odour split
    (which input units each odour drives), its own noise (fresh at every presentation, or one
    vector for the whole trajectory with `noise="trajectory"`) and its own initial weights.
    Drawn on the host (see `metaplastic._random`)."""
    flies = len(data)
    rng = host_rng(key)
    ds = jax.tree.map(lambda a: np.repeat(np.asarray(a), draws, axis=0), data.dataset)
    odours = np.asarray(ds.odours)
    mean = float(np.max(np.asarray(OdourEncoding(n_in).means)))
    order = np.argsort(rng.random((flies * draws, n_in)), axis=1)
    means = np.zeros((flies * draws, 2, n_in))
    rows = np.arange(flies * draws)[:, None]
    means[rows, 0, order[:, : n_in // 2]] = mean
    means[rows, 1, order[:, n_in // 2 :]] = mean
    if noise == "trajectory":
        xi = rng.standard_normal((flies * draws, 1, 1, n_in))
    else:
        xi = rng.standard_normal(odours.shape + (n_in,))
    x = means[rows[:, :, None], odours] + np.sqrt(input_variance) * xi
    x = np.where(np.asarray(ds.presentation_mask)[..., None], x, 0.0)
    dtype = np.asarray(OdourEncoding(n_in).means).dtype
    ds = ChoiceDataset(
        ds.odours,
        ds.choices,
        ds.presentation_mask,
        ds.trial_mask,
        ds.rewards,
        ds.expected_rewards,
        x.astype(dtype),
    )
    packed = stack_members(PackedChoiceDataset.from_choices(ds), flies)
    w0 = init_std * rng.standard_normal((flies, draws, hidden, n_in))
    return packed, w0.astype(dtype)


def _tile(tree, n_configs, flies):
    """`(flies, ...)` arrays repeated for every configuration, `(configs · flies, ...)`."""
    return jax.tree.map(
        lambda a: np.reshape(
            np.broadcast_to(np.asarray(a), (n_configs,) + np.shape(a)),
            (n_configs * flies,) + np.shape(a)[1:],
        ),
        tree,
    )


def _masks(packed, trials, n_configs, flies, draws):
    """Trial masks `(configs, flies, trials)` → presentation masks `(configs · flies,
    draws, n)`."""
    tiled = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n_configs,) + a.shape), packed)
    expand = np.repeat(trials[:, :, None, :], draws, axis=2)
    m = presentation_masks(tiled, expand)
    return np.reshape(m, (n_configs * flies,) + m.shape[2:])


def _summed(logits, choices, mask):
    """`Σ log p(choice)` of Bernoulli choices over the presentations in `mask`."""
    ll = choices * jax.nn.log_sigmoid(logits) + (1 - choices) * jax.nn.log_sigmoid(-logits)
    return jnp.sum(jnp.where(mask, ll, 0.0))


@eqx.filter_jit
def _draw_log_likelihoods(network, rule_params, rule_static, data, w0, masks, marginal):
    """Per member, the log-likelihood of the choices on `masks`: per draw `(members,
    draws)`, or of the probability averaged over the draws `(members, 1)` when `marginal`."""

    def one(p, d, w, m):
        net = network.with_rule(eqx.combine(p, rule_static))
        logits = replay(net, d, w).logits
        if marginal:
            return _summed(marginal_logits(logits, axis=0), d.choices[0], m[0])[None]
        return jax.vmap(_summed)(logits, d.choices, m)

    return jax.vmap(one)(rule_params, data, w0, masks)


@eqx.filter_jit
def _largest_weights(network, rule_params, rule_static, data, w0):
    """Per member, the largest |weight| the rule reaches in any draw's replay."""

    def one(p, d, w):
        net = network.with_rule(eqx.combine(p, rule_static))
        return jnp.max(jnp.abs(replay(net, d, w).weights))

    return jax.vmap(one)(rule_params, data, w0)


def _score(network, fitted, data, w0, score_mask, marginal):
    """Percent deviance of every member against the same rule with all parameters zero (no
    plasticity: a zero Taylor rule, or an MLP whose tanh output is 0), on the same draws,
    in one call: of the marginal likelihood, or the mean over draws of each draw's."""
    # Host-side array plumbing throughout (see `metaplastic._random`).
    params, static = eqx.partition(fitted, eqx.is_inexact_array)
    both = jax.tree.map(lambda a: jnp.asarray(np.concatenate([a, np.zeros_like(a)])), params)
    twice = lambda a: jnp.asarray(np.concatenate([np.asarray(a), np.asarray(a)]))
    ll = _draw_log_likelihoods(
        network,
        both,
        static,
        jax.tree.map(twice, data),
        twice(w0),
        twice(score_mask),
        marginal,
    )
    ll = np.asarray(ll, dtype=np.float64)
    n = ll.shape[0] // 2
    deviance = np.mean(100.0 * (ll[:n] - ll[n:]) / -ll[n:], axis=1)
    first = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), params)
    largest = _largest_weights(
        network, first, static, jax.tree.map(jnp.asarray, data), jnp.asarray(w0)
    )
    return deviance, np.asarray(largest, dtype=np.float64)


def _check_int(name, value, minimum=1, allow_none=False):
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MetaplasticError(f"{name} must be a positive integer, got {value!r}.")


@validates_input
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
    noise: Literal["presentation", "trajectory"] = "presentation",
    init_std: float = 0.01,
    init_scale: float = TAYLOR_STUDENT_SCALE,
    weight_bound: float | None = None,
    solver: AbstractSolver | None = None,
    steps: int = 12,
    batch_size: int | None = None,
    l1: float | Sequence[float] | np.ndarray = 1e-3,
    evaluation_samples: int | None = None,
    key: jax.Array,
    progress: bool = True,
) -> dict[str, FlyFits]:
    """Fit rule families to every fly: per family, all flies and all train/test splits in
    one vmapped fit (the small families together in one), every fit scored against the
    no-plasticity null.

    Each fly is encoded `resamples` times: every (fly, draw) pair has its own odour split
    (which input units each odour drives), its own draw of the input noise and its own
    initial weights in scoring; a fit starts every draw of a fly from the fly's first
    draw's initial weights. The families see the same draws, so they are compared on the
    same inputs.

    **Arguments:**

    - `data`: the flies (`load_drosophila`).
    - `families`: from `"covariance"` (free terms `1, r, x, x*r`), `"forgetting"` (the same
      plus `w`), `"forgetting_y"` (the same plus `y`: the published "forgetting" family under
      its reversed indexing, see `FAMILY_TERMS`), `"taylor"` (all 81 terms over
      `x, y, w, r`) and `"mlp"`; and on request the family with memory `"trace"` (an
      eligibility trace of `θ₀ + θ_x x` released by the reward signal, its decay λ fitted;
      `MEMORY_FAMILIES`).
    - `reward_signal`: `"prediction_error"` (`r = R − E[R]`) or `"reward"` (`r = R`).
    - `resamples`: draws of the unobserved encoding noise per fly.
    - `marginal`: fit (and score) the likelihood averaged over the draws, `p(choice)` being
      the mean over draws (`metaplastic.behaviour.NoisyChoices`); `False` fits every draw as
      a trajectory of its own (the average of the draws' log-likelihoods) and scores the
      mean over draws of each draw's percent deviance.
    - `fractions`: training fractions of the held-out sweeps (each in `(0, 1)`; may be
      empty).
    - `n_in`, `hidden`, `input_variance`: the network and the variance of the encoding
      noise.
    - `noise`: `"presentation"` (a fresh noise vector at every presentation) or
      `"trajectory"` (one noise vector per draw, shared by all its presentations: the
      published implementation's frozen samples).
    - `init_std`: the standard deviation of the initial weights.
    - `init_scale`: the standard deviation of the initial Taylor coefficients.
    - `weight_bound`: clip the weights to `±weight_bound` after every update (`None`: never;
      `FlyFits.max_weight` says how large they grow).
    - `solver`: `metaplastic.LevenbergMarquardt()` (the default) or a first-order solver
      such as `metaplastic.Optax(optax.adam(1e-3))`.
    - `steps`: solver steps of each fit.
    - `batch_size`: trajectories (draws) of a fly per step, a fresh random subset each step
      (`None`: all; needs `marginal=False` to be smaller than `resamples`).
    - `l1`: the L1 penalty on the coefficients of the Taylor families (`covariance`,
      `forgetting`, `forgetting_y`, `taylor`; never the MLP), in units of the mean
      per-presentation log-likelihood: one weight, or one per fly (a first-order solver
      only; see `padded_l1` for the published implementation's).
    - `evaluation_samples`: score on this many fresh draws (fresh odour splits, noise and
      initial weights) of the same trials instead of the fitted draws (the published
      evaluation); `None`: score on the fitted draws.
    - `key`: the draws, the initial weights and the initial rules.
    - `progress`: show a progress bar for each fit (`False` to silence them).

    **Returns:**

    `{family: FlyFits}`, in the order of `families`.
    """
    if not isinstance(data, DrosophilaData):
        raise MetaplasticError(f"data must be a DrosophilaData, got {type(data).__name__}.")
    families = (families,) if isinstance(families, str) else tuple(families)
    known = FAMILIES + MEMORY_FAMILIES
    bad = [f for f in families if f not in known]
    if bad or not families or len(set(families)) != len(families):
        raise MetaplasticError(f"families must be distinct names from {known}, got {families}.")
    if reward_signal not in REWARD_SIGNALS:
        raise MetaplasticError(
            f"reward_signal must be one of {REWARD_SIGNALS}, got {reward_signal!r}."
        )
    _check_int("resamples", resamples)
    _check_int("steps", steps)
    _check_int("batch_size", batch_size, allow_none=True)
    _check_int("evaluation_samples", evaluation_samples, allow_none=True)
    if not isinstance(marginal, bool):
        raise MetaplasticError(f"marginal must be True or False, got {marginal!r}.")
    if noise not in NOISE:
        raise MetaplasticError(f"noise must be one of {NOISE}, got {noise!r}.")
    fractions = tuple(float(f) for f in fractions)
    if not all(0.0 < f < 1.0 for f in fractions) or len(set(fractions)) != len(fractions):
        raise MetaplasticError(
            f"fractions must be distinct and lie strictly between 0 and 1, got {fractions}."
        )
    for name, value in (("input_variance", input_variance), ("init_std", init_std)):
        if not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
            raise MetaplasticError(f"{name} must be a non-negative number, got {value!r}.")
    if not (isinstance(init_scale, int | float) and init_scale > 0):
        raise MetaplasticError(f"init_scale must be a positive number, got {init_scale!r}.")
    weight_bound = check_weight_bound(weight_bound)
    if solver is None:
        solver = LevenbergMarquardt()
    if not isinstance(solver, AbstractSolver):
        raise MetaplasticError(f"solver must be a metaplastic solver, got {type(solver).__name__}.")
    flies = len(data)
    l1 = np.asarray(l1, dtype=np.float64)
    if l1.ndim == 0:
        l1 = np.full(flies, float(l1))
    if l1.shape != (flies,) or not np.all(np.isfinite(l1)) or np.any(l1 < 0):
        raise MetaplasticError(
            f"l1 must be one non-negative number or one per fly ({flies}), got {l1}."
        )
    if solver.needs_jacobian and np.ptp(l1) > 0:
        raise MetaplasticError(
            "one L1 weight per fly needs a first-order solver (metaplastic.Optax); "
            f"{type(solver).__name__} takes one weight for all flies."
        )
    if batch_size is not None and batch_size < resamples and marginal:
        raise MetaplasticError(
            "batch_size selects draws, which marginal=True averages in one trajectory; "
            "pass marginal=False to fit minibatches of draws."
        )
    k_draws, k_eval, k_rule = jr.split(key, 3)
    zero = TaylorRule.zeros(FACTORS, order=0)
    network = MushroomBody(
        zero,
        n_in=n_in,
        hidden=hidden,
        reward_signal=reward_signal,
        init_std=init_std,
        weight_bound=weight_bound,
        key=k_draws,
    )
    encoding = (n_in, input_variance, noise, init_std, hidden)
    packed, w0 = _encode(data, resamples, *encoding, k_draws)
    names, fit_on, score_on = trial_splits(data, fractions)
    n_configs = len(names)
    members = n_configs * flies
    fit_mask = _masks(packed, fit_on, n_configs, flies, resamples)
    member_data = _tile(packed, n_configs, flies)
    member_w0 = _tile(w0, n_configs, flies)
    if evaluation_samples is None:
        score_data, score_w0 = member_data, member_w0
        score_mask = _masks(packed, score_on, n_configs, flies, resamples)
    else:
        e_packed, e_w0 = _encode(data, evaluation_samples, *encoding, k_eval)
        score_data, score_w0 = _tile(e_packed, n_configs, flies), _tile(e_w0, n_configs, flies)
        score_mask = _masks(e_packed, score_on, n_configs, flies, evaluation_samples)
    train = eqx.tree_at(lambda p: p.presentation_mask, member_data, fit_mask)
    # A fit starts every draw of a fly from the same initial weights (the fly's first).
    start_w = member_w0[:, :1]
    member_l1 = np.tile(l1, n_configs)
    if marginal:
        # Each member is one trajectory whose draws are averaged in its likelihood.
        one = lambda a: np.expand_dims(np.asarray(a), 1)
        train = NoisyChoices(jax.tree.map(one, train))
        trajectories = 1
    else:
        trajectories = resamples
    start_w = np.repeat(start_w, trajectories, axis=1)
    member_l1 = np.repeat(member_l1[:, None], trajectories, axis=1)
    groups = [f for f in families if f in FAMILY_TERMS]
    groups = ([tuple(groups)] if groups else []) + [(f,) for f in families if f not in groups]
    first_order = not solver.needs_jacobian
    # Families with memory draw their students from keys of their own, so that asking for
    # them leaves the keys (hence the fits) of the other families as they were.
    usual = [g for g in groups if g[0] not in MEMORY_FAMILIES]
    keys = dict(zip(usual, jr.split(k_rule, len(usual)))) if usual else {}
    for i, g in enumerate(g for g in groups if g[0] in MEMORY_FAMILIES):
        keys[g] = jr.fold_in(k_rule, 1000 + i)
    out = {}
    for group in groups:
        k = keys[group]
        start = time.perf_counter()
        n = len(group)
        rep = lambda a, n=n: np.concatenate([np.asarray(a)] * n)
        with_l1 = group[0] in TAYLOR_FAMILIES
        batch_l1 = rep(member_l1) if with_l1 else np.zeros_like(rep(member_l1))
        if group[0] in FAMILY_TERMS:
            # One rule over (x, y, w, r) to first order for every small family, each member
            # with its family's terms: the others start at 0 and are frozen there.
            template = TaylorRule.zeros(SMALL_FACTORS, order=1)
            shape = template.coefficients.shape
            masks = np.stack([template.mask(list(FAMILY_TERMS[f])) for f in group])
            masks = np.repeat(masks.reshape(n, 1, -1), members, axis=1).reshape(n * members, -1)
            c = init_scale * host_rng(k).standard_normal(masks.shape) * masks
            c = jnp.asarray(c.reshape((-1,) + shape), template.coefficients.dtype)
            masks = jnp.asarray(masks.reshape((-1,) + shape))
            students = eqx.tree_at(
                lambda r: (r.coefficients, r.trainable),
                template,
                (c, masks),
                is_leaf=lambda x: x is None,
            )
            per_member = lambda m: (m.initial_weights, m.rule.trainable)
        else:
            students = _students(group[0], members, k, init_scale)
            per_member = lambda m: m.initial_weights
        # Each member starts from its own initial weights (the fly's first draw's).
        start_model = eqx.tree_at(
            lambda m: m.initial_weights,
            network.with_rule(students),
            jnp.asarray(rep(start_w[:, 0])),
        )
        member_data = jax.tree.map(lambda a, rep=rep: jnp.asarray(rep(a)), train)
        common = dict(
            solver=solver,
            steps=steps,
            batch_size=batch_size,
            ensemble=True,
            per_member=per_member,
            progress=progress,
            key=k,
        )
        if first_order:
            l1_batch = jnp.asarray(batch_l1, dtype=start_w.dtype)
            result = fit(start_model, (member_data, l1_batch), _choices_with_l1, **common)
        else:
            penalty = L1(float(l1[0])) if with_l1 and l1[0] > 0 else ()
            result = fit(start_model, member_data, ChoiceBCE(), penalty=penalty, **common)
        rule = result.model.rule
        if group[0] in FAMILY_TERMS:
            # The fitted rules without the per-member masks (frozen terms are exactly 0).
            rule = eqx.tree_at(lambda r: r.trainable, rule, None, is_leaf=lambda x: x is None)
        rule = jax.tree.map(lambda a: np.asarray(a) if eqx.is_inexact_array(a) else a, rule)
        deviance, largest = _score(
            network,
            rule,
            jax.tree.map(rep, score_data),
            rep(score_w0),
            rep(score_mask),
            marginal,
        )
        objective = np.asarray(result.history.loss)[-1]
        seconds = (time.perf_counter() - start) / n
        setting = dict(data=data, names=names, fractions=fractions, reward_signal=reward_signal)
        for g, family in enumerate(group):
            part = slice(g * members, (g + 1) * members)
            own = jax.tree.map(lambda a, p=part: a[p] if eqx.is_inexact_array(a) else a, rule)
            out[family] = _collect(
                family,
                own,
                deviance[part],
                objective[part],
                largest[part],
                seconds,
                **setting,
            )
        logger.info("fit_families(%s): %d members in %.1f s", group, members * n, seconds * n)
    return {f: out[f] for f in families}


@validates_input
def padded_l1(data: DrosophilaData, weight: float = 1e-2) -> np.ndarray:
    """The L1 weight per fly, in units of `fit_families`' mean per-presentation
    log-likelihood, that the published implementation's penalty amounts to: its choice loss
    is the mean over a `(trials, longest trial)` tensor whose padded entries add a constant,
    so its `weight · Σ|θ|` weighs `trials · longest / presentations` times more against a
    fly's likelihood than against a per-presentation mean.

    **Arguments:**

    - `data`: the flies.
    - `weight`: the published L1 weight (`1e-2`).

    **Returns:**

    `(flies,)` weights.
    """
    if not isinstance(data, DrosophilaData):
        raise MetaplasticError(f"data must be a DrosophilaData, got {type(data).__name__}.")
    if not weight >= 0:
        raise MetaplasticError(f"weight must be non-negative, got {weight}.")
    pm = np.asarray(data.dataset.presentation_mask)
    trials = np.asarray(data.dataset.trial_mask).sum(axis=1)
    longest = pm.sum(axis=2).max(axis=1)
    return weight * trials * longest / pm.sum(axis=(1, 2))


def _collect(
    family, rule, deviance, objective, largest, seconds, *, data, names, fractions, reward_signal
):
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
        max_weight=largest.reshape(n_configs, flies)[0],
    )
