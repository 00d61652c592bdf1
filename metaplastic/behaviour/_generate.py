"""Behavioural experiments: closed-loop generation of choices in the operant task, the
teacher-forced likelihood of recorded choices, deviance and R² metrics, and one-call rule
recovery for sweeps.

The model is `metaplastic.nn.MushroomBody` driven by `metaplastic.tasks.OperantTask`, with
odours encoded by `metaplastic.nn.OdourEncoding`. One trial is a run of presentations that
share the same weights; the weights change once per trial, at the accepted presentation, with
the activities of that presentation.
"""

import logging
import time
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PyTree
from jaxtyping import Key as PRNGKeyArray

from ._errors import MetaplasticError
from ._fisher import fit_bernoulli_gauss_newton
from ._fit import FitResult, fit
from ._types import Key, Scalar
from .data import ChoiceDataset, PackedChoiceDataset
from .losses import binary_cross_entropy, masked_mean
from .metrics import percent_deviance_explained, r2_score
from .nn import ActivityReadout, MushroomBody, OdourEncoding
from .nn._mushroom_body import DEFAULT_INPUT_VARIANCE
from .rules import AbstractRule, MLPRule, TaylorRule
from .tasks import OperantTask


logger = logging.getLogger("metaplastic")

BEHAVIOUR_FACTORS = ("x", "y", "w", "r")


# ---------------------------------------------------------------------------------- encoding
def encode_odours(data: ChoiceDataset, encoding: OdourEncoding, *, key: Key) -> ChoiceDataset:
    """The same dataset with `inputs` drawn afresh from `encoding` for every presentation
    (padded presentations get zeros). Works on simulated and on real (odours-only) data.

    **Arguments:**

    - `data`: a `ChoiceDataset`, with or without `inputs`.
    - `encoding`: the odour encoding.
    - `key`: the noise of the encoding.

    **Returns:**

    A `ChoiceDataset` whose `inputs` has shape `(batch, trials, presentations, n_in)`.
    """
    inputs = _encode(encoding, data.odours, data.presentation_mask, key)
    return eqx.tree_at(lambda d: d.inputs, data, inputs, is_leaf=lambda v: v is None)


@eqx.filter_jit
def _encode(encoding, odours, mask, key):
    return jnp.where(mask[..., None], encoding(odours, key=key), 0.0)


# ---------------------------------------------------------------------------------- generation
class GeneratedBehaviour(eqx.Module):
    """Closed-loop behaviour of a ground-truth network in the operant task.

    - `data`: the recorded `ChoiceDataset`; its `inputs` are a fresh re-sample of the encoding
      (or the generating inputs themselves, with `resample_inputs=False`).
    - `weights`: the true weights after each trial's update, `(batch, trials, hidden, n_in)`.
    - `initial_weights`: the true weights before the first trial, `(batch, hidden, n_in)`.
    - `generating_inputs`: the inputs that produced the choices, like `data.inputs`.
    - `baited`: which odours were baited during each trial (after that trial's draw),
      `(batch, trials, 2)`.
    - `activity`, `neuron_mask`: the neural readout, when one was requested
      (`(batch, trials, presentations, n)` and `(batch, n)`), else `None`.
    """

    data: ChoiceDataset
    weights: Float[Array, "batch trials hidden n_in"]
    initial_weights: Float[Array, "batch hidden n_in"]
    generating_inputs: Float[Array, "batch trials presentations n_in"]
    baited: Bool[Array, "batch trials 2"]
    activity: Float[Array, "batch trials presentations n"] | None
    neuron_mask: Bool[Array, "batch n"] | None


@eqx.filter_jit
def _closed_loop(
    network: MushroomBody,
    task: OperantTask,
    encoding: OdourEncoding,
    initial_weights: Float[Array, "batch hidden n_in"],
    uniforms: Float[Array, "batch trials draws"],
    normals: Float[Array, "batch 2 trials presentations n_in"],
):
    probabilities = task.trial_probabilities()
    n_pres = task.max_presentations
    positions = jnp.arange(n_pres)

    def trial(carry, xs):
        weight, state = carry
        p, bait_u, odours, x, accept_u = xs
        state = task.start_trial(state, p, bait_u)
        baited = state.baited
        # All presentations of a trial see the same weights, so the whole bounded run of
        # presentations is evaluated at once; the first acceptance ends the trial.
        y, logits = network.forward(weight, x)
        accepts = accept_u < jax.nn.sigmoid(logits)
        accepted = jnp.any(accepts)
        first = jnp.argmax(accepts)
        valid = jnp.where(accepted, positions <= first, True)
        choices = (positions == first) & accepted
        expected = task.expected_reward(state)
        reward, state = task.end_trial(state, odours[first], accepted)
        signal = network.signal(reward, expected)
        updated = network.update(weight, x[first], y[first], signal)
        weight = jnp.where(accepted, updated, weight)
        out = (choices, valid, reward, expected, weight, baited, y, logits)
        return (weight, state), out

    def one(w0, u, z):
        bait_u, odour_u, accept_u = u[:, :2], u[:, 2 : 2 + n_pres], u[:, 2 + n_pres :]
        odours = (odour_u < 0.5).astype(jnp.int32)
        x = encoding.with_noise(odours, z[0])
        xs = (probabilities, bait_u, odours, x, accept_u)
        _, (choices, valid, reward, expected, weights, baited, y, logits) = jax.lax.scan(
            trial, (w0, task.init_state()), xs
        )
        fresh = encoding.with_noise(odours, z[1])
        return (odours, choices, valid, reward, expected, weights, baited, x, fresh, y, logits)

    return jax.vmap(one)(initial_weights, uniforms, normals)


def _host_generator(key: Key) -> np.random.Generator:
    """A numpy generator seeded from a JAX key (reproducible: same key, same draws)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def generate_behaviour(
    network: MushroomBody,
    task: OperantTask,
    encoding: OdourEncoding,
    n_trajectories: int,
    *,
    key: Key,
    resample_inputs: bool = True,
    readout: ActivityReadout | None = None,
    record: Literal["hidden", "output"] = "hidden",
) -> GeneratedBehaviour:
    """Simulate a ground-truth network choosing in the operant task, closed loop.

    One jitted function scans over trials; within a trial a bounded run of
    `task.max_presentations` presentations is drawn at once (the weights do not change within
    a trial) and the first acceptance ends it; trajectories are vmapped. Each trajectory starts
    from fresh weights `N(0, network.init_std²)`. The random numbers (initial weights,
    baiting, odours, input noise, choices) are drawn up front by a numpy generator seeded from
    `key`, so a key always gives the same behaviour. The presentation axis of the result is
    trimmed to the longest trial that occurred.

    **Arguments:**

    - `network`: the ground-truth `MushroomBody` (its rule generates the data).
    - `task`: the `OperantTask` (blocks, baiting, cap, expectation window).
    - `encoding`: the `OdourEncoding` of the input units.
    - `n_trajectories`: the number of independent trajectories (flies).
    - `key`: all randomness (initial weights, baiting, odours, noise, choices, re-sampling).
    - `resample_inputs`: the dataset's `inputs` are a fresh draw of the encoding noise (the
      fitted model never sees the exact noise behind a choice); `False` keeps the generating
      inputs.
    - `readout`: optionally record neural activity through an `ActivityReadout`.
    - `record`: what the readout records: `"hidden"` (the plastic layer, `n = hidden`) or
      `"output"` (the readout logit, `n = 1`).

    **Returns:**

    A `GeneratedBehaviour`.
    """
    if not isinstance(n_trajectories, int) or n_trajectories < 1:
        raise MetaplasticError(
            f"n_trajectories must be a positive integer, got {n_trajectories!r}."
        )
    if encoding.n_in != network.n_in:
        raise MetaplasticError(
            f"The encoding has {encoding.n_in} input units but the network has {network.n_in}."
        )
    if record not in ("hidden", "output"):
        raise MetaplasticError(f"record must be 'hidden' or 'output', got {record!r}.")
    # Every random number of the closed loop is drawn up front on the host, from a numpy
    # generator seeded by the key: compiling JAX's counter-based PRNG for these arrays took
    # longer than running the whole simulation, and the scanned trials then hold no PRNG work.
    k_run, k_readout = jr.split(key)
    rng = _host_generator(k_run)
    dtype = network.initial_weights.dtype
    n_trials, n_pres = task.n_trials, task.max_presentations
    w0 = jnp.asarray(
        network.init_std * rng.standard_normal((n_trajectories,) + network.initial_weights.shape),
        dtype,
    )
    uniforms = rng.random((n_trajectories, n_trials, 2 + 2 * n_pres)).astype(dtype)
    normals = rng.standard_normal((n_trajectories, 2, n_trials, n_pres, encoding.n_in))
    out = _closed_loop(network, task, encoding, w0, uniforms, normals.astype(dtype))
    # Trim the presentation axis to the longest trial on the host (no shape-dependent
    # compilation after the one jitted loop).
    odours, choices, valid, rewards, expected, weights, baited, x, fresh, y, logits = (
        np.asarray(a) for a in jax.device_get(out)
    )
    n_pres = max(1, int(valid.sum(axis=-1).max()))
    odours, choices, valid, x, fresh, y, logits = (
        a[:, :, :n_pres] for a in (odours, choices, valid, x, fresh, y, logits)
    )
    x = np.where(valid[..., None], x, 0.0)
    data = ChoiceDataset(
        odours,
        choices.astype(rewards.dtype),
        valid,
        np.ones(rewards.shape, bool),
        rewards,
        expected,
        fresh if resample_inputs else x,
    )
    activity = neuron_mask = None
    if readout is not None:
        clean = jnp.asarray(y if record == "hidden" else logits[..., None])
        observed, mask = readout.observe(clean, key=k_readout)
        activity = jnp.where(jnp.asarray(valid)[..., None], observed, 0.0)
        neuron_mask = jnp.broadcast_to(mask, (n_trajectories, mask.shape[0]))
    return GeneratedBehaviour(
        data=data,
        weights=jnp.asarray(weights),
        initial_weights=w0,
        generating_inputs=jnp.asarray(x),
        baited=jnp.asarray(baited),
        activity=activity,
        neuron_mask=neuron_mask,
    )


# ---------------------------------------------------------------------------------- replay
class Replay(eqx.Module):
    """A network teacher-forced on recorded behaviour.

    - `logits`: the logit of accepting at every presentation, `(batch, trials, presentations)`
      for a `ChoiceDataset`, `(batch, n)` for a `PackedChoiceDataset`.
    - `hidden`: the plastic layer's activity at every presentation, the same with a trailing
      `hidden` axis.
    - `weights`: the weights after each trial's update, `(batch, trials, hidden, n_in)`.
    """

    logits: Float[Array, "batch ..."]
    hidden: Float[Array, "batch ..."]
    weights: Float[Array, "batch trials hidden n_in"]


Choices = ChoiceDataset | PackedChoiceDataset


def _check_inputs(network: MushroomBody, data: Choices) -> None:
    if data.inputs is None:
        raise MetaplasticError(
            "The ChoiceDataset has no inputs; encode the odours first with "
            "metaplastic.encode_odours(data, encoding, key=...)."
        )
    if data.inputs.shape[-1] != network.n_in:
        raise MetaplasticError(
            f"The dataset's inputs have {data.inputs.shape[-1]} units but the network has "
            f"{network.n_in} input units."
        )


def _weight_trajectory(network, w0, accepted_inputs, accepted, signals, checkpoint):
    """The weights after each trial: one plasticity step per trial with an acceptance."""

    def trial(weight, xs):
        x, valid, signal = xs
        y = network.plastic.forward(weight, x)
        updated = network.update(weight, x, y, signal)
        weight = jnp.where(valid, updated, weight)
        return weight, weight

    body = jax.checkpoint(trial) if checkpoint else trial
    _, after = jax.lax.scan(body, w0, (accepted_inputs, accepted, signals))
    return after


def _replay_padded(network, w0, inputs, choices, pmask, tmask, rewards, expected, checkpoint):
    accepted = (choices > 0.5) & pmask
    # At most one presentation per trial is accepted, so this sum selects its input.
    x_acc = jnp.einsum("tp,tpi->ti", accepted.astype(inputs.dtype), inputs)
    has = jnp.any(accepted, axis=1) & tmask
    signals = jax.vmap(network.signal)(rewards, expected)
    after = _weight_trajectory(network, w0, x_acc, has, signals, checkpoint)
    # The weights only change between trials, so every presentation is evaluated afterwards,
    # in parallel, with the weights in force during its trial.
    before = jnp.concatenate([w0[None], after[:-1]])
    hidden, logits = jax.vmap(network.forward)(before, inputs)
    return logits, hidden, after


def _replay_packed(
    network, w0, inputs, trial_index, x_acc, accepted, tmask, rewards, expected, checkpoint
):
    signals = jax.vmap(network.signal)(rewards, expected)
    after = _weight_trajectory(network, w0, x_acc, accepted & tmask, signals, checkpoint)
    before = jnp.concatenate([w0[None], after[:-1]])
    weight = before[trial_index]
    hidden = jnp.tanh(jnp.einsum("nji,ni->nj", weight, inputs))
    logits = jax.vmap(network.readout)(hidden)[:, 0]
    return logits, hidden, after


@eqx.filter_jit
def replay(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
    *,
    checkpoint: bool = False,
) -> Replay:
    """Teacher-force a network on recorded odours, choices and rewards.

    Within trial `t` every presentation sees the weights `W_t`; after the trial,
    `W_{t+1} = W_t + η · rule(x_a, y_a, W_t, r_t)` where `a` is the trial's accepted
    presentation. Trials without an accepted presentation (the cap) and padded trials leave
    the weights unchanged.

    **Arguments:**

    - `network`: the `MushroomBody` to replay.
    - `data`: a `ChoiceDataset` with `inputs`, or the same packed (`PackedChoiceDataset`,
      much faster when a few trials are long).
    - `initial_weights`: per-trajectory starting weights, `(batch, hidden, n_in)`; default
      `network.initial_weights` for every trajectory.
    - `checkpoint`: recompute each trial in the backward pass instead of storing it.

    **Returns:**

    A `Replay`.
    """
    _check_inputs(network, data)
    batch = data.trial_mask.shape[0]
    if initial_weights is None:
        w0 = network.initial_weights
        initial_weights = jnp.broadcast_to(w0, (batch,) + w0.shape)
    if isinstance(data, PackedChoiceDataset):
        fn = lambda *a: _replay_packed(network, *a, checkpoint)
        args = (data.inputs, data.trial_index, data.accepted_inputs, data.accepted)
    else:
        fn = lambda *a: _replay_padded(network, *a, checkpoint)
        args = (data.inputs, data.choices, data.presentation_mask)
    logits, hidden, weights = jax.vmap(fn)(
        initial_weights,
        *args,
        data.trial_mask,
        data.rewards,
        data.expected_rewards,
    )
    return Replay(logits, hidden, weights)


def _log_likelihood(logits, choices, mask, axes):
    ll = choices * jax.nn.log_sigmoid(logits) + (1 - choices) * jax.nn.log_sigmoid(-logits)
    return jnp.sum(jnp.where(mask, ll, 0.0), axis=axes)


@eqx.filter_jit
def choice_log_likelihood(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
) -> Float[Array, " batch"]:
    """`Σ log p(observed choice)` over the valid presentations of each trajectory,
    teacher-forced (see `replay`)."""
    logits = replay(network, data, initial_weights).logits
    axes = tuple(range(1, logits.ndim))
    return _log_likelihood(logits, data.choices, data.presentation_mask, axes)


def choice_bce(network: MushroomBody, data: ChoiceDataset | PackedChoiceDataset) -> Scalar:
    """The loss for `metaplastic.fit`: binary cross-entropy of the teacher-forced
    `p(accept)` against the recorded choices, averaged over every valid presentation of the
    batch (padded presentations and trials are excluded, not averaged in). Pass a
    `PackedChoiceDataset` for speed; a `ChoiceDataset` gives the same value."""
    logits = replay(network, data).logits
    return binary_cross_entropy(logits, data.choices, data.presentation_mask)


class ChoiceActivityDataset(eqx.Module):
    """Choices plus a neural recording of the same presentations (for `choice_activity_loss`).

    - `choices`: the `ChoiceDataset` (with inputs).
    - `activity`: recorded activity, `(batch, trials, presentations, n)`.
    - `neuron_mask`: recorded neurons, `(batch, n)`.
    - `record`: `"hidden"` (the plastic layer) or `"output"` (the readout logit).
    """

    choices: ChoiceDataset
    activity: Float[Array, "batch trials presentations n"]
    neuron_mask: Bool[Array, "batch n"]
    record: str = eqx.field(static=True)

    @classmethod
    def from_generated(
        cls, generated: GeneratedBehaviour, record: Literal["hidden", "output"] = "hidden"
    ) -> "ChoiceActivityDataset":
        """Wrap a `GeneratedBehaviour` made with a `readout` (and the same `record`)."""
        if generated.activity is None or generated.neuron_mask is None:
            raise MetaplasticError("generate_behaviour was called without a readout.")
        return cls(generated.data, generated.activity, generated.neuron_mask, record)

    def __len__(self) -> int:
        return self.activity.shape[0]


def choice_activity_loss(
    network: MushroomBody, data: ChoiceActivityDataset, *, activity_weight: float = 1.0
) -> Scalar:
    """`choice_bce + activity_weight · MSE` of the recorded activity, the MSE over valid
    presentations and recorded neurons only. Use `functools.partial` to set the weight."""
    rep = replay(network, data.choices)
    bce = binary_cross_entropy(rep.logits, data.choices.choices, data.choices.presentation_mask)
    predicted = rep.hidden if data.record == "hidden" else rep.logits[..., None]
    mask = data.choices.presentation_mask[..., None] & data.neuron_mask[:, None, None, :]
    return bce + activity_weight * masked_mean((predicted - data.activity) ** 2, mask)


# ---------------------------------------------------------------------------------- metrics
def null_network(network: MushroomBody) -> MushroomBody:
    """The null model: the same network without plasticity (θ = 0)."""
    return network.with_rule(TaylorRule.zeros(BEHAVIOUR_FACTORS, order=0))


@eqx.filter_jit
def percent_deviance(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
) -> Float[Array, " batch"]:
    """Percent deviance explained per trajectory, `100 · (D_null − D) / D_null` with
    `D = −2 Σ log p(observed choice)` over valid presentations and the null model the same
    network with θ = 0."""
    ll = choice_log_likelihood(network, data, initial_weights)
    ll_null = choice_log_likelihood(null_network(network), data, initial_weights)
    return percent_deviance_explained(ll, ll_null)


def _scores(reference, fitted, data, initial_weights):
    a = replay(reference, data, initial_weights)
    b = replay(fitted, data, initial_weights)
    pm = data.presentation_mask
    r2w = jax.vmap(r2_score)(
        a.weights, b.weights, jnp.broadcast_to(data.trial_mask[:, :, None, None], a.weights.shape)
    )
    r2a = jax.vmap(r2_score)(a.hidden, b.hidden, jnp.broadcast_to(pm[..., None], a.hidden.shape))

    loglik = lambda logits: _log_likelihood(logits, data.choices, pm, tuple(range(1, pm.ndim)))

    null = replay(null_network(reference), data, initial_weights)
    ll_null = loglik(null.logits)
    return {
        "r2_weights": r2w,
        "r2_activity": r2a,
        "percent_deviance": percent_deviance_explained(loglik(b.logits), ll_null),
        "true_percent_deviance": percent_deviance_explained(loglik(a.logits), ll_null),
    }


def compare_behaviour(
    reference: MushroomBody,
    fitted: MushroomBody,
    data: ChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
    *,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
) -> dict[str, np.ndarray]:
    """Score a fitted network against the true one on (held-out) recorded behaviour.

    Both networks are teacher-forced on the same data from the same initial weights (default
    `fitted.initial_weights`; the null model of the deviance is the network with θ = 0).

    **Arguments:**

    - `reference`: the ground-truth network.
    - `fitted`: the fitted network; with `ensemble=True`, its rule arrays have a leading
      member axis (as returned by `fit(..., ensemble=True)`).
    - `data`: held-out `ChoiceDataset` with inputs (with a leading member axis at
      `data_ensemble_axis` if `ensemble` and that is not `None`).
    - `initial_weights`: optional per-trajectory starting weights `(batch, hidden, n_in)`.

    **Returns:**

    A dict of numpy arrays of shape `(batch,)` (or `(members, batch)` with `ensemble`):
    `r2_weights` and `r2_activity` (fitted vs true, the weight trajectories over valid trials
    and the plastic layer's activity over valid presentations), `percent_deviance` of the
    fitted network and `true_percent_deviance` of the reference.
    """
    if initial_weights is None:
        w0 = fitted.initial_weights
        batch = data.odours.shape[-3]
        initial_weights = jnp.broadcast_to(w0, (batch,) + w0.shape[-2:])
    out = _compare(reference, fitted, data, initial_weights, ensemble, data_ensemble_axis)
    return {k: np.asarray(v) for k, v in out.items()}


@eqx.filter_jit
def _compare(reference, fitted, data, initial_weights, ensemble, data_ensemble_axis):
    if not ensemble:
        return _scores(reference, fitted, data, initial_weights)
    # Only the rule carries the member axis; the rest of the network is shared.
    rule_params, rule_static = eqx.partition(fitted.rule, eqx.is_array)
    return jax.vmap(
        lambda p, d: _scores(
            reference, fitted.with_rule(eqx.combine(p, rule_static)), d, initial_weights
        ),
        in_axes=(0, data_ensemble_axis),
    )(rule_params, data)


# ---------------------------------------------------------------------------------- ensembles
def stack_members(tree: PyTree, members: int) -> PyTree:
    """Split the leading (trajectory) axis of every array of a dataset into
    `(members, batch // members)`, e.g. to give each seed of an ensemble its own data."""

    def split(a):
        if not eqx.is_array(a):
            return a
        if a.shape[0] % members:
            raise MetaplasticError(
                f"Cannot split {a.shape[0]} trajectories into {members} equal members."
            )
        return a.reshape((members, a.shape[0] // members) + a.shape[1:])

    return jax.tree.map(split, tree)


def stack_rules(
    make_rule: Callable[[Key], AbstractRule], keys: PRNGKeyArray[Array, " members"]
) -> AbstractRule:
    """An ensemble of rules, one per key, with a leading member axis on every array."""
    return eqx.filter_vmap(make_rule)(keys)


def taylor_student(*, key: Key, order: int = 2, scale: float = 1e-3) -> TaylorRule:
    """The default Taylor student: all `(order+1)^4` terms over `x, y, w, r` (81 for order 2),
    initialised from `N(0, scale²)`."""
    return TaylorRule.random(BEHAVIOUR_FACTORS, order, scale=scale, key=key)


def mlp_student(*, key: Key, width: int = 10, scale: float = 0.1) -> MLPRule:
    """The default MLP student on `x, y, w, r` (one hidden layer of `width` units), started
    near the zero rule: the output layer's initial weights are multiplied by `scale` and its
    bias is zero, so the first trials do not move the weights far along a random rule."""
    rule = MLPRule(BEHAVIOUR_FACTORS, width=width, key=key)
    last = rule.mlp.layers[-1]
    return eqx.tree_at(
        lambda r: (r.mlp.layers[-1].weight, r.mlp.layers[-1].bias),
        rule,
        (scale * last.weight, jnp.zeros_like(last.bias)),
    )


class RuleRecovery(eqx.Module):
    """The outcome of `recover_rule`.

    - `fitted`: the fitted networks, rule arrays with a leading seed axis.
    - `scores`: per-seed medians over held-out trajectories, each `(seeds,)`: `r2_weights`,
      `r2_activity`, `percent_deviance`, `true_percent_deviance`.
    - `per_trajectory`: the same metrics per held-out trajectory, `(seeds, n_test)`.
    - `fit`: the `FitResult` of the vmapped fit.
    - `seconds`: wall time of `generate`, `fit` and `evaluate`.
    """

    fitted: MushroomBody
    scores: dict[str, np.ndarray]
    per_trajectory: dict[str, np.ndarray]
    fit: FitResult
    seconds: dict[str, float]

    def median(self) -> dict[str, float]:
        """The median over seeds of each score."""
        return {k: float(np.median(v)) for k, v in self.scores.items()}


def choice_logits(
    network: MushroomBody, data: ChoiceDataset | PackedChoiceDataset
) -> tuple[Float[Array, "batch ..."], Float[Array, "batch ..."], Bool[Array, "batch ..."]]:
    """The teacher-forced logits with the recorded choices and their mask, the form
    `fit_bernoulli_gauss_newton` takes: `(logits, choices, presentation_mask)`."""
    return replay(network, data).logits, data.choices, data.presentation_mask


_CANONICAL = ("x", "y", "w", "r")


def _taylor_parts(rule: TaylorRule, x, y, w, r):
    """For one plasticity step of a Taylor rule: the change `Δ`, its derivative with respect
    to every (effective) coefficient (the monomials, `(C, hidden, n_in)`, in the order of
    `rule.coefficients.ravel()`), and the per-synapse derivatives `∂Δ_ji/∂w_ji` and
    `∂Δ_ji/∂y_j`."""
    order = rule.order
    sizes = [order + 1 if f in rule.factors else 1 for f in _CANONICAL]

    def powers(v, size):
        p, dp = [jnp.ones_like(v)], [jnp.zeros_like(v)]
        for k in range(1, size):
            dp.append(k * p[-1])
            p.append(p[-1] * v)
        return jnp.stack(p), jnp.stack(dp)

    xs, _ = powers(x, sizes[0])  # (nx, n_in)
    ys, dys = powers(y, sizes[1])  # (ny, hidden)
    ws, dws = powers(w, sizes[2])  # (nw, hidden, n_in)
    rs, _ = powers(jnp.asarray(r, w.dtype), sizes[3])  # (nr,)
    # Coefficients in canonical (x, y, w, r) order, size-1 axes for absent factors; contract
    # the reward and presynaptic powers first, then the postsynaptic ones: A_c = Σ θ x^a y^b r^d.
    present = [f for f in _CANONICAL if f in rule.factors]
    c = jnp.transpose(rule.effective_coefficients, [rule.factors.index(f) for f in present])
    c = jnp.tensordot(c.reshape(sizes), rs, axes=[[3], [0]])  # (nx, ny, nw)
    cx = jnp.einsum("abc,ai->bci", c, xs)  # (ny, nw, n_in)
    a = jnp.einsum("bci,bj->cji", cx, ys)  # (nw, hidden, n_in)
    da = jnp.einsum("bci,bj->cji", cx, dys)
    delta = jnp.sum(a * ws, axis=0)
    d_w = jnp.sum(a * dws, axis=0)
    d_y = jnp.sum(da * ws, axis=0)
    # The monomials x^a y^b w^c r^d of every synapse, in the rule's own factor order.
    xr = xs[:, None, :] * rs[None, :, None]  # (nx, nr, n_in)
    yw = ys[:, None, :, None] * ws[None]  # (ny, nw, hidden, n_in)
    canonical = xr[:, None, None, :, None, :] * yw[None, :, :, None, :, :]
    perm = [_CANONICAL.index(f) for f in rule.factors]
    perm += [i for i, f in enumerate(_CANONICAL) if f not in rule.factors] + [4, 5]
    monomials = jnp.transpose(canonical, perm).reshape((-1,) + w.shape)
    return delta, monomials, d_w, d_y


def _synapse_parts(rule_of: Callable, theta, x, y, w, r):
    """The same parts for any rule that acts synapse by synapse, by automatic
    differentiation of the rule on each synapse; the derivatives are with respect to θ."""

    def one(t, xi, yj, wji):
        return rule_of(t)(xi[None], yj[None], wji[None, None], r)[0, 0]

    xi = jnp.broadcast_to(x[None, :], w.shape).reshape(-1)
    yj = jnp.broadcast_to(y[:, None], w.shape).reshape(-1)
    grad = jax.vmap(jax.value_and_grad(one, argnums=(0, 2, 3)), in_axes=(None, 0, 0, 0))
    delta, (d_theta, d_y, d_w) = grad(theta, xi, yj, w.reshape(-1))
    return (
        delta.reshape(w.shape),
        d_theta.T.reshape((theta.size,) + w.shape),
        d_w.reshape(w.shape),
        d_y.reshape(w.shape),
    )


def _sensitivity_jacobian(network: MushroomBody, parts: Callable, data: PackedChoiceDataset):
    """`∂logits/∂θ` by forward sensitivities: along the trial scan carry `S = ∂W/∂θ` and
    update it with the per-synapse derivatives of the rule, then map it to every packed
    presentation. Much cheaper than generic forward mode, which pushes every tangent through
    the whole rule evaluation."""
    eta, bound = network.plastic.eta, network.weight_bound
    readout = network.readout.weight[0]

    def trajectory(w0, x_acc, accepted, signal, inputs, trial_index):
        def trial(carry, xs):
            weight, sens = carry
            x, valid, r = xs
            y = network.plastic.forward(weight, x)
            delta, d_theta, d_w, d_y = parts(x, y, weight, r)
            d_post = (1 - y**2)[None, :] * (sens @ x)  # tanh'
            d_delta = d_theta + d_w[None] * sens + d_y[None] * d_post[:, :, None]
            new_weight, new_sens = weight + eta * delta, sens + eta * d_delta
            if bound is not None:
                new_sens = jnp.where(jnp.abs(new_weight) < bound, new_sens, 0.0)
                new_weight = jnp.clip(new_weight, -bound, bound)
            new_weight = jnp.where(valid, new_weight, weight)
            new_sens = jnp.where(valid, new_sens, sens)
            return (new_weight, new_sens), (weight, sens)

        n_params = parts(x_acc[0], jnp.zeros(w0.shape[0]), w0, signal[0])[1].shape[0]
        sens0 = jnp.zeros((n_params,) + w0.shape, w0.dtype)
        _, (before, sens) = jax.lax.scan(trial, (w0, sens0), (x_acc, accepted, signal))
        hidden = jnp.tanh(jnp.einsum("nji,ni->nj", before[trial_index], inputs))
        logits = jax.vmap(network.readout)(hidden)[:, 0]
        d_logit = (readout[None, :] * (1 - hidden**2))[:, :, None] * inputs[:, None, :]
        return logits, jnp.einsum("npji,nji->np", sens[trial_index], d_logit)

    batch = data.trial_mask.shape[0]
    w0 = jnp.broadcast_to(network.initial_weights, (batch,) + network.initial_weights.shape)
    signals = jax.vmap(jax.vmap(network.signal))(data.rewards, data.expected_rewards)
    return jax.vmap(trajectory)(
        w0,
        data.accepted_inputs,
        data.accepted & data.trial_mask,
        signals,
        data.inputs,
        data.trial_index,
    )


def choice_jacobian(
    theta: Float[Array, " n_params"],
    to_model: Callable[[Array], MushroomBody],
    data: PackedChoiceDataset,
) -> tuple[Float[Array, "batch n"], Float[Array, "batch n n_params"]]:
    """The teacher-forced logits and their exact Jacobian with respect to the flat trainable
    parameters θ, for `fit_bernoulli_gauss_newton(..., jacobian=choice_jacobian)`.

    Computed by forward sensitivities through the trial scan, which requires θ to hold the
    rule's parameters only (the default `rule_filter_spec`). Taylor rules use their
    monomials directly; `MLPRule`s (which act synapse by synapse) are differentiated on
    each synapse. Any other model or rule falls back to `jax.jacfwd`.

    **Arguments:**

    - `theta`: the flat trainable parameters.
    - `to_model`: maps θ to the `MushroomBody`.
    - `data`: a `PackedChoiceDataset`.

    **Returns:**

    The logits of `replay(to_model(θ), data)`, `(batch, n)`, and `∂logits/∂θ`,
    `(batch, n, θ.size)`.
    """
    network = to_model(theta)
    rule = network.rule
    generic = (
        not isinstance(network, MushroomBody)
        or network.plastic.activation != "tanh"
        or not isinstance(data, PackedChoiceDataset)
        or not isinstance(rule, TaylorRule | MLPRule)
        or (isinstance(rule, TaylorRule) and theta.size != rule.coefficients.size)
    )
    if generic:
        logits, jvp = jax.linearize(lambda t: replay(to_model(t), data).logits, theta)
        return logits, jax.vmap(jvp, out_axes=-1)(jnp.eye(theta.size, dtype=theta.dtype))
    if isinstance(rule, TaylorRule):
        # θ is the coefficient tensor itself (rule_filter_spec); frozen terms get no derivative.
        logits, jac = _sensitivity_jacobian(
            network, lambda x, y, w, r: _taylor_parts(rule, x, y, w, r), data
        )
        return logits, (jac if rule.trainable is None else jac * rule.trainable.reshape(-1))
    rule_of = lambda t: to_model(t).rule
    return _sensitivity_jacobian(
        network, lambda x, y, w, r: _synapse_parts(rule_of, theta, x, y, w, r), data
    )


def fit_behaviour(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset,
    *,
    rule: Callable[..., AbstractRule] | Literal["taylor", "mlp"] = "taylor",
    seeds: int = 5,
    method: Literal["gauss_newton", "adam"] = "gauss_newton",
    iterations: int = 12,
    l1: float = 1e-3,
    epochs: int = 300,
    learning_rate: float = 3e-3,
    batch_size: int | None = None,
    data_ensemble_axis: int | None = 0,
    key: Key,
    progress: bool = False,
) -> FitResult:
    """Fit an ensemble of `seeds` student rules, vmapped, to recorded choices.

    **Arguments:**

    - `network`: the network whose rule is replaced by the students (sizes, readout, initial
      weights and reward signal are kept).
    - `data`: a `ChoiceDataset` with inputs (packed here) or a `PackedChoiceDataset`; with a
      leading seed axis at `data_ensemble_axis` (`None`: every seed fits the same data).
    - `rule`: `"taylor"` (`taylor_student`), `"mlp"` (`mlp_student`) or a callable
      `rule(key=...) -> AbstractRule`.
    - `seeds`: the number of ensemble members (each from its own initial rule).
    - `method`: `"gauss_newton"` (damped Fisher scoring, `fit_bernoulli_gauss_newton`, for
      `iterations` iterations) or `"adam"` (`metaplastic.fit` with `choice_bce`, optax Adam
      at `learning_rate` for `epochs` epochs of `batch_size` trajectories).
    - `l1`: the L1 penalty on Taylor coefficients (smoothed for Gauss–Newton).
    - `key`: initial rules and batch order.

    **Returns:**

    A `FitResult` whose model's rule arrays have a leading seed axis.
    """
    make = {"taylor": taylor_student, "mlp": mlp_student}.get(rule, rule)  # type: ignore[arg-type]
    if not callable(make):
        raise MetaplasticError(f"rule must be 'taylor', 'mlp' or a callable, got {rule!r}.")
    if method not in ("gauss_newton", "adam"):
        raise MetaplasticError(f"method must be 'gauss_newton' or 'adam', got {method!r}.")
    if isinstance(data, ChoiceDataset):
        data = PackedChoiceDataset.from_choices(data)
    k_init, k_fit = jr.split(key)
    students = network.with_rule(stack_rules(lambda k: make(key=k), jr.split(k_init, seeds)))
    if method == "gauss_newton":
        return fit_bernoulli_gauss_newton(
            students,
            data,
            logits=choice_logits,
            jacobian=choice_jacobian,
            iterations=iterations,
            l1=l1 if isinstance(students.rule, TaylorRule) else 0.0,
            ensemble=True,
            data_ensemble_axis=data_ensemble_axis,
        )
    return fit(
        students,
        data,
        loss=choice_bce,
        optimizer=optax.adam(learning_rate),
        epochs=epochs,
        batch_size=batch_size,
        l1=l1,
        key=k_fit,
        progress=progress,
        ensemble=True,
        data_ensemble_axis=data_ensemble_axis,
    )


class RecoveryData(eqx.Module):
    """Simulated behaviour for a rule-recovery experiment (see `recovery_data`).

    - `teacher`: the ground-truth `MushroomBody`.
    - `encoding`: the `OdourEncoding`.
    - `train`: the training trajectories, packed, `(seeds, n_train, ...)`.
    - `test`: the held-out trajectories, `(seeds, n_test, ...)`.
    - `seconds`: the time it took to generate them (compilation included).
    """

    teacher: MushroomBody
    encoding: OdourEncoding
    train: PackedChoiceDataset
    test: ChoiceDataset
    seconds: float

    @property
    def seeds(self) -> int:
        return self.test.trial_mask.shape[0]


def recovery_data(
    true_rule: AbstractRule,
    *,
    seeds: int = 5,
    n_train: int = 18,
    n_test: int = 7,
    task: OperantTask | None = None,
    n_in: int = 2,
    hidden: int = 10,
    input_variance: float = DEFAULT_INPUT_VARIANCE,
    reward_signal: str = "prediction_error",
    resample_inputs: bool = True,
    key: Key,
) -> RecoveryData:
    """Generate training and held-out behaviour from a ground-truth rule, for every seed.

    Each seed gets its own `n_train` training and `n_test` held-out trajectories. They come
    from one generation call (one compilation); every trajectory is drawn from its own key,
    so held-out trajectories are never training ones.

    **Arguments:**

    - `true_rule`: the ground-truth rule over `x, y, w, r`.
    - `seeds`, `n_train`, `n_test`: ensemble size and trajectories per seed.
    - `task`: the operant task (default `OperantTask()`: 3 blocks of 80 trials).
    - `n_in`, `hidden`, `input_variance`, `reward_signal`: the network and the encoding.
    - `resample_inputs`: fit and score on a fresh draw of the input noise (see
      `generate_behaviour`).
    - `key`: the encoding, the teacher's initial weights and all the behaviour.

    **Returns:**

    A `RecoveryData`.
    """
    start = time.perf_counter()
    task = OperantTask() if task is None else task
    k_enc, k_net, k_data = jr.split(key, 3)
    encoding = OdourEncoding(n_in, variance=input_variance, key=k_enc)
    teacher = MushroomBody(
        true_rule, n_in=n_in, hidden=hidden, reward_signal=reward_signal, key=k_net
    )
    everything = generate_behaviour(
        teacher,
        task,
        encoding,
        seeds * (n_train + n_test),
        key=k_data,
        resample_inputs=resample_inputs,
    ).data
    # Split and stack on the host: as JAX operations each slice and reshape would compile
    # once for its shape, which costs more than the generation itself.
    host = lambda tree: jax.tree.map(lambda a: np.asarray(a) if eqx.is_array(a) else a, tree)
    device = lambda tree: jax.tree.map(lambda a: jnp.asarray(a) if eqx.is_array(a) else a, tree)
    everything = host(everything)
    split = n_train * seeds
    train = jax.tree.map(lambda a: a[:split], everything)
    test = device(stack_members(jax.tree.map(lambda a: a[split:], everything), seeds))
    packed = PackedChoiceDataset.from_choices(device(train))
    train = device(stack_members(host(packed), seeds))
    jax.block_until_ready((train, test))
    return RecoveryData(teacher, encoding, train, test, time.perf_counter() - start)


def recover_rule(
    true_rule: AbstractRule | None = None,
    *,
    data: RecoveryData | None = None,
    rule: Callable[..., AbstractRule] | Literal["taylor", "mlp"] = "taylor",
    seeds: int = 5,
    method: Literal["gauss_newton", "adam"] = "gauss_newton",
    iterations: int = 12,
    l1: float = 1e-3,
    epochs: int = 300,
    learning_rate: float = 3e-3,
    batch_size: int | None = None,
    key: Key,
    progress: bool = False,
    **data_options,
) -> RuleRecovery:
    """Recover a ground-truth rule from simulated behaviour, several seeds vmapped.

    Every seed fits its own training trajectories from its own initial student rule, all in
    one vmapped fit (`fit_behaviour`); every fitted rule is then scored against the true one
    on that seed's held-out trajectories (`compare_behaviour`), and the median over held-out
    trajectories is reported per seed.

    **Arguments:**

    - `true_rule`: the ground-truth rule; the data are generated by `recovery_data` with
      `seeds`, `key` and any `data_options` (`n_train`, `n_test`, `task`, `n_in`,
      `hidden`, `input_variance`, `reward_signal`, `resample_inputs`).
    - `data`: instead of `true_rule`, data made earlier by `recovery_data` (e.g. to fit
      several rule families on the same trajectories).
    - `rule`, `method`, `iterations`, `l1`, `epochs`, `learning_rate`, `batch_size`: the
      student and its fit (see `fit_behaviour`; `l1` applies to Taylor rules only).
    - `key`: the data (if generated here), the initial student rules and batch order.

    **Returns:**

    A `RuleRecovery`.
    """
    k_data, k_fit = jr.split(key)
    if data is None:
        if true_rule is None:
            raise MetaplasticError("recover_rule needs a true_rule or data.")
        data = recovery_data(true_rule, seeds=seeds, key=k_data, **data_options)
    elif data_options or true_rule is not None:
        raise MetaplasticError(
            "recover_rule was given data; true_rule and data options would be ignored."
        )
    seeds = data.seeds
    t1 = time.perf_counter()
    result = fit_behaviour(
        data.teacher,
        data.train,
        rule=rule,
        seeds=seeds,
        method=method,
        iterations=iterations,
        l1=l1,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        key=k_fit,
        progress=progress,
    )
    t2 = time.perf_counter()
    per = compare_behaviour(data.teacher, result.model, data.test, ensemble=True)
    t3 = time.perf_counter()
    scores = {k: np.median(v, axis=1) for k, v in per.items()}
    logger.info("recover_rule: %s", {k: float(np.median(v)) for k, v in scores.items()})
    return RuleRecovery(
        fitted=result.model,
        scores=scores,
        per_trajectory=per,
        fit=result,
        seconds={"generate": data.seconds, "fit": t2 - t1, "evaluate": t3 - t2},
    )
