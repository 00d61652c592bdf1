"""Closed-loop generation of behaviour in the operant task, and the encoding of odours.

The model is `MushroomBody` driven by `OperantTask`, with odours encoded by `OdourEncoding`.
One trial is a run of presentations that share the same weights; the weights change once per
trial, at the accepted presentation, with the activities of that presentation.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float

from .._errors import MetaplasticError
from .._random import host_rng
from .._simulate import AbstractEnvironment, simulate_network
from .._types import Key
from ..nn import ActivityReadout
from ._data import ChoiceDataset
from ._network import MushroomBody, OdourEncoding
from ._task import OperantTask, TaskState


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


class OperantEnvironment(AbstractEnvironment):
    """The operant task as the environment of a `MushroomBody`, closed loop: one step is one
    trial. The task baits the odours; the network sees the trial's bounded run of
    presentations at once (its weights do not change within a trial) and accepts with
    `p = sigmoid(logit)`; the first acceptance ends the trial, collects the reward and
    drives the network's plasticity step with the reward signal.

    Its per-trial inputs are `(probabilities, bait_uniforms, odours, encoded_inputs,
    accept_uniforms)`: the block's reward probabilities `(2,)`, the baiting draws `(2,)`, the
    odours `(presentations,)`, their encodings `(presentations, n_in)` and the acceptance
    draws `(presentations,)`, all drawn up front. Each trial records `(choices, valid,
    reward, expected, weights, baited, hidden, logits)`.

    With `reward_delay = d > 0` (the network's `MushroomBody.reward_delay`) the task state
    also queues the `d` signals earned but not yet delivered: a trial's signal (zero without
    an acceptance) drives the plasticity step `d` trials later.
    """

    task: OperantTask
    reward_delay: int = eqx.field(static=True, default=0)

    def init_state(self) -> TaskState | tuple[TaskState, Float[Array, " delay"]]:
        """The task's state; with a `reward_delay` also the signals still on their way
        (oldest first, zeros at the start)."""
        if self.reward_delay == 0:
            return self.task.init_state()
        pending = jnp.zeros(self.reward_delay, self.task.probabilities.dtype)
        return self.task.init_state(), pending

    def step(self, network, state, task_state, inputs):
        if network.reward_delay != self.reward_delay:
            raise MetaplasticError(
                f"The environment delays rewards by {self.reward_delay} trials but the "
                f"network by {network.reward_delay}: build OperantEnvironment(task, "
                "network.reward_delay)."
            )
        if self.reward_delay:
            task_state, pending = task_state
        weight = network.weights_of(state)
        p, bait_u, odours, x, accept_u = inputs
        positions = jnp.arange(odours.shape[0])
        task_state = self.task.start_trial(task_state, p, bait_u)
        baited = task_state.baited
        y, logits = network.forward(weight, x)
        accepts = accept_u < jax.nn.sigmoid(logits)
        accepted = jnp.any(accepts)
        first = jnp.argmax(accepts)
        valid = jnp.where(accepted, positions <= first, True)
        choices = (positions == first) & accepted
        expected = self.task.expected_reward(task_state)
        reward, task_state = self.task.end_trial(task_state, odours[first], accepted)
        signal = network.signal(reward, expected)
        if self.reward_delay:
            # The signal earned now joins the queue; the oldest one arrives now.
            earned = jnp.where(accepted, signal, 0.0)
            signal, pending = pending[0], jnp.concatenate([pending[1:], earned[None]])
            task_state = (task_state, pending)
        # The update with the activity of the accepted presentation, already computed.
        updated = network.learn(state, x[first], y[first], signal)
        state = jax.tree.map(lambda n, o: jnp.where(accepted, n, o), updated, state)
        weight = network.weights_of(state)
        out = (choices, valid, reward, expected, weight, baited, y, logits)
        return out, state, task_state


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
    environment = OperantEnvironment(task, network.reward_delay)

    def one(w0, u, z):
        bait_u, odour_u, accept_u = u[:, :2], u[:, 2 : 2 + n_pres], u[:, 2 + n_pres :]
        odours = (odour_u < 0.5).astype(jnp.int32)
        x = encoding.with_noise(odours, z[0])
        xs = (probabilities, bait_u, odours, x, accept_u)
        s0 = network.initial_state(w0)
        sim = simulate_network(network, s0, xs, environment=environment, checkpoint=False)
        choices, valid, reward, expected, weights, baited, y, logits = sim.outputs
        fresh = encoding.with_noise(odours, z[1])
        return (odours, choices, valid, reward, expected, weights, baited, x, fresh, y, logits)

    return jax.vmap(one)(initial_weights, uniforms, normals)


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

    One jitted function scans over trials (`simulate_network` with the task as its
    `OperantEnvironment`); within a trial a bounded run of `task.max_presentations`
    presentations is drawn at once (the weights do not change within a trial) and the first
    acceptance ends it; trajectories are vmapped. Each trajectory starts
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
    if network.reward_delay >= task.n_trials:
        raise MetaplasticError(
            f"The reward delay ({network.reward_delay} trials) is not shorter than the task "
            f"({task.n_trials} trials): no reward would ever arrive. Use a smaller "
            "reward_delay or longer blocks."
        )
    if record not in ("hidden", "output"):
        raise MetaplasticError(f"record must be 'hidden' or 'output', got {record!r}.")
    # Every random number of the closed loop is drawn up front on the host (see
    # `metaplastic._random`), so the scanned trials hold no PRNG work.
    k_run, k_readout = jr.split(key)
    rng = host_rng(k_run)
    dtype = network.initial_weights.dtype
    n_trials, n_pres = task.n_trials, task.max_presentations
    w0 = jnp.asarray(
        network.init_std * rng.standard_normal((n_trajectories,) + network.initial_weights.shape),
        dtype,
    )
    uniforms = rng.random((n_trajectories, n_trials, 2 + 2 * n_pres)).astype(dtype)
    normals = rng.standard_normal((n_trajectories, 2, n_trials, n_pres, encoding.n_in))
    out = _closed_loop(network, task, encoding, w0, uniforms, normals.astype(dtype))
    # Trim the presentation axis to the longest trial on the host (see `metaplastic._random`).
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
