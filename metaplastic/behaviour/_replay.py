"""Teacher-forced replay of recorded choices: the network's logits, activity and weights on
recorded odours, choices and rewards, and the choice likelihood built on them."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._errors import MetaplasticError
from .._simulate import current_checkpoint, simulate_network
from ..losses import bernoulli_log_likelihood
from ..nn import ACTIVATIONS
from ._data import ChoiceDataset, NoisyChoices, PackedChoiceDataset, marginal_logits
from ._network import MushroomBody


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
            "metaplastic.behaviour.encode_odours(data, encoding, key=...)."
        )
    if data.inputs.shape[-1] != network.n_in:
        raise MetaplasticError(
            f"The dataset's inputs have {data.inputs.shape[-1]} units but the network has "
            f"{network.n_in} input units."
        )


def _weight_trajectory(network, w0, accepted_inputs, accepted, signals, checkpoint):
    """The weights after each trial: the network's plasticity step at each trial with an
    acceptance, scanned over trials by the one simulation."""
    sim = simulate_network(
        network,
        network.initial_state(w0),
        accepted_inputs,
        network.delayed_signals(signals, accepted),
        accepted,
        return_states=True,
        checkpoint=checkpoint,
    )
    return network.weights_of(sim.states)


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
    activation = ACTIVATIONS[network.plastic.activation]
    hidden = activation(jnp.einsum("nji,ni->nj", weight, inputs))
    logits = jax.vmap(network.readout)(hidden)[:, 0]
    return logits, hidden, after


def replay(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset | NoisyChoices,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
    *,
    checkpoint: bool | int | None = None,
) -> Replay:
    """Teacher-force a network on recorded odours, choices and rewards.

    Within trial `t` every presentation sees the weights `W_t`; after the trial,
    `W_{t+1} = W_t + η · rule(x_a, y_a, W_t, r_t)` where `a` is the trial's accepted
    presentation (a rule with memory steps its state too; with the network's `reward_delay`
    the signal `r_t` is the one earned `reward_delay` trials earlier). Trials without an accepted presentation (the cap) and padded trials leave
    the weights unchanged. The trials are scanned by `metaplastic.simulate_network` with the
    network's plasticity step, the accepted presentations as its inputs and the trials
    without one masked out.

    **Arguments:**

    - `network`: the `MushroomBody` to replay.
    - `data`: a `ChoiceDataset` with `inputs`, or the same packed (`PackedChoiceDataset`,
      much faster when a few trials are long). `NoisyChoices` hold several encodings and are
      refused with a pointer to `choice_logits`.
    - `initial_weights`: per-trajectory starting weights, `(batch, hidden, n_in)`; default
      `network.initial_weights` for every trajectory.
    - `checkpoint`: as for `simulate_network` (default: as the differentiation strategy says).

    **Returns:**

    A `Replay`.
    """
    if checkpoint is None:
        checkpoint = current_checkpoint()
    return _replay(network, data, initial_weights, checkpoint)


@eqx.filter_jit
def _replay(network, data, initial_weights, checkpoint):
    if isinstance(data, NoisyChoices):
        raise MetaplasticError(
            "replay takes one encoding of the odours; for NoisyChoices replay each draw "
            "(data.packed along axis 1) or use choice_logits for the marginal logits."
        )
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


def choice_logits(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset | NoisyChoices,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
    *,
    checkpoint: bool | int | None = None,
) -> Float[Array, "batch ..."]:
    """The teacher-forced logit of accepting at every presentation (see `replay`). On
    `NoisyChoices` every draw of the input noise is replayed (vmapped) and the result is the
    logit of the probability averaged over the draws (`marginal_logits`), `(batch, n)`."""
    if not isinstance(data, NoisyChoices):
        return replay(network, data, initial_weights, checkpoint=checkpoint).logits
    one = lambda d: replay(network, d, initial_weights, checkpoint=checkpoint).logits
    return marginal_logits(jax.vmap(one, in_axes=1, out_axes=1)(data.packed), axis=1)


def summed_log_likelihood(
    logits: Float[Array, "*shape"],
    choices: Float[Array, "*shape"],
    mask: Bool[Array, "*shape"],
    axes: int | tuple[int, ...] | None,
) -> Float[Array, "..."]:
    """`Σ log p(choice)` of Bernoulli choices with the given logits, over the entries where
    `mask` is true, summed over `axes` (shared by the likelihood and the metrics)."""
    ll = bernoulli_log_likelihood(logits, choices)
    return jnp.sum(jnp.where(mask, ll, 0.0), axis=axes)


@eqx.filter_jit
def choice_log_likelihood(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset | NoisyChoices,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
) -> Float[Array, " batch"]:
    """`Σ log p(observed choice)` over the valid presentations of each trajectory,
    teacher-forced (see `replay`); on `NoisyChoices` the marginal over the draws."""
    logits = choice_logits(network, data, initial_weights)
    axes = tuple(range(1, logits.ndim))
    return summed_log_likelihood(logits, data.choices, data.presentation_mask, axes)
