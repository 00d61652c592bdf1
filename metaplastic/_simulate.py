"""The one scanned simulation of any network, and generation of synthetic datasets."""

import abc
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._errors import MetaplasticError, first_line, validates_input
from ._types import Key
from ._validate import batched_inputs, real_array
from .data import ActivityDataset, RecordingDataset
from .data._activity import float_dtype
from .nn import (
    AbstractLayer,
    ActivityReadout,
    Model,
    PlasticDense,
    layer_rules,
    state_from_weights,
    weights_of,
)


_CHECKPOINT: contextvars.ContextVar[bool | int] = contextvars.ContextVar(
    "metaplastic_checkpoint", default=False
)


@contextlib.contextmanager
def checkpointing(checkpoint: bool | int) -> Iterator[None]:
    """Within this context every simulation traced without its own `checkpoint=` checkpoints
    its scan as `checkpoint` says (`True`: every step; an integer `k`: segments of `k` steps;
    `False`: store every step). A differentiation strategy sets it around the loss it
    differentiates (`metaplastic.ReverseMode(checkpoint=...)`), so losses and models never
    carry the option: how a scan is differentiated is the strategy's business."""
    token = _CHECKPOINT.set(_check_checkpoint(checkpoint))
    try:
        yield
    finally:
        _CHECKPOINT.reset(token)


def _check_checkpoint(checkpoint: Any) -> bool | int:
    """`checkpoint` itself if it is `True`, `False` or a segment length >= 1."""
    if not (isinstance(checkpoint, bool) or (isinstance(checkpoint, int) and checkpoint >= 1)):
        raise MetaplasticError(
            f"checkpoint must be True, False or a segment length >= 1, got {checkpoint!r}."
        )
    return checkpoint


def current_checkpoint() -> bool | int:
    """The checkpointing of simulations in the current context (see `checkpointing`)."""
    return _CHECKPOINT.get()


class Simulation(eqx.Module):
    """The result of simulating one trajectory.

    - `activity`: postsynaptic activity `y_t`, `(time, n_out)`.
    - `weights`: the weights after each step's update, `(time, n_out, n_in)`, or `None`.
    - `final_weights`: the weights at the end, `(n_out, n_in)`.
    """

    activity: Float[Array, "time n_out"]
    weights: Float[Array, "time n_out n_in"] | None
    final_weights: Float[Array, "n_out n_in"]


def _scan_segments(body, carry, xs, length: int, segment: int):
    """Scan `body` over `length` steps as `length/segment` checkpointed segments, so that the
    backward pass stores one carry per segment and recomputes inside it (√T memory)."""
    n_seg = -(-length // segment)
    pad = n_seg * segment - length

    def pad_and_split(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((n_seg, segment) + a.shape[1:])

    xs, valid = xs
    xs = jax.tree.map(pad_and_split, xs)
    valid = pad_and_split(valid)

    @jax.checkpoint
    def outer(c, seg):
        return jax.lax.scan(body, c, seg)

    carry, ys = jax.lax.scan(outer, carry, (xs, valid))
    ys = jax.tree.map(lambda a: a.reshape((n_seg * segment,) + a.shape[2:])[:length], ys)
    return carry, ys


class Trajectory(eqx.Module):
    """The result of simulating one trajectory of any network.

    - `outputs`: the network's output per step, `(time, n_out)` (closed loop: what the
      environment records per step).
    - `states`: the network's state after each step (its PyTree with a leading `time`
      axis), or `None`.
    - `final_state`: the state at the end.
    """

    outputs: Float[Array, "time n_out"] | PyTree
    states: PyTree | None
    final_state: PyTree


class AbstractEnvironment(eqx.Module):
    """A task stepped beside a network, closed loop: at each step it lets the network respond
    to what the task presents, decides from the response what happens (a choice, a reward)
    and what the network learns from. `simulate_network(..., environment=...)` scans it; a
    new task is one subclass.

    The environment's `inputs` to `simulate_network` are whatever it needs per step (its
    schedule and its random draws, drawn up front), any PyTree with a leading `time` axis.
    """

    @abc.abstractmethod
    def init_state(self) -> PyTree:
        """What the task remembers between steps, at the start."""
        raise NotImplementedError

    @abc.abstractmethod
    def step(
        self, network: AbstractLayer, state: PyTree, task_state: PyTree, inputs: PyTree
    ) -> tuple[PyTree, PyTree, PyTree]:
        """One step of the loop.

        **Arguments:**

        - `network`: the network.
        - `state`: the network's state before the step.
        - `task_state`: the task's state before the step.
        - `inputs`: this step's slice of the environment's inputs.

        **Returns:**

        `(outputs, state, task_state)`: what the step records (any PyTree), the network's
        state and the task's state after it.
        """
        raise NotImplementedError


def check_rewards_used(network: AbstractLayer) -> None:
    """A `MetaplasticError` naming the rule when a rule of `network` takes the reward factor
    `r` and the data has no rewards."""
    for rule in layer_rules(network):
        if "r" in rule.factors:
            raise MetaplasticError(
                f"A {type(rule).__name__} of the network takes the reward factor 'r' "
                f"(factors {tuple(rule.factors)}), but the data has no rewards: give the "
                "dataset its rewards, or use a rule without 'r'."
            )


def simulate_network(
    network: AbstractLayer,
    initial_state: PyTree,
    inputs: Float[Array, "time n_in"] | PyTree,
    rewards: Float[Array, " time"] | None = None,
    step_mask: Bool[Array, " time"] | None = None,
    *,
    environment: AbstractEnvironment | None = None,
    return_states: bool = False,
    checkpoint: bool | int | None = None,
) -> Trajectory:
    """Run any network over one trajectory with one `jax.lax.scan` (the simulation of every
    model of the library, open loop or closed loop). Vmap it for batches.

    At each valid step `y_t, s_{t+1} = network.step(s_t, x_t, r_t)`; a padded step
    (`step_mask` False) leaves the state unchanged. With an `environment` the loop is closed:
    each step is `environment.step(network, s_t, e_t, inputs_t)`, which decides what the
    network sees and learns from (the fly's operant task: `behaviour.OperantEnvironment`).

    **Arguments:**

    - `network`: any `metaplastic.nn.AbstractLayer` (a `PlasticDense`, a
      `PlasticRecurrent`, a `Chain`, ...).
    - `initial_state`: the network's state before the first step (as its `init_state`).
    - `inputs`: the input per step, `(time, n_in)` (closed loop: the environment's).
    - `rewards`: the reward signal per step, `(time,)`; `None` when there is none, which a
      rule over the reward factor `r` refuses.
    - `step_mask`: valid steps, `(time,)`; all valid if `None`.
    - `environment`: a closed-loop task (`AbstractEnvironment`); `inputs` are then its
      per-step inputs (any PyTree with a leading `time` axis), and `rewards` and
      `step_mask` must be `None` (the environment decides both).
    - `return_states`: also return the state after every step.
    - `checkpoint`: `True` checkpoints every step of the scan body; an integer `k` scans in
      checkpointed segments of `k` steps, storing one state per segment for the backward
      pass instead of one per step; `None` (default) follows the differentiation strategy
      (`checkpointing`), which stores every step unless it says otherwise.

    **Returns:**

    A `Trajectory`; with an environment its `outputs` are what the environment's steps
    record and its `final_state` the network's.
    """
    if checkpoint is None:
        checkpoint = current_checkpoint()
    if environment is not None:
        return _closed_loop(
            network,
            environment,
            initial_state,
            inputs,
            rewards,
            step_mask,
            return_states,
            checkpoint,
        )
    length = inputs.shape[0]
    if rewards is None:
        check_rewards_used(network)
        rewards = jnp.zeros(length, inputs.dtype)
    if step_mask is None:
        step_mask = jnp.ones(length, bool)

    def body(state, xs):
        (pre, reward), valid = xs
        post, new_state = network.step(state, pre, reward)
        new_state = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new_state, state)
        return new_state, (post, new_state if return_states else None)

    xs = ((inputs, rewards), step_mask)
    final, (outputs, states) = _scan(body, initial_state, xs, length, checkpoint)
    return Trajectory(outputs, states, final)


def _scan(body, carry, xs, length: int, checkpoint: bool | int):
    """`jax.lax.scan` of `body` (whose `xs` are `(inputs, valid)`), checkpointed as asked."""
    if checkpoint is True:
        return jax.lax.scan(jax.checkpoint(body), carry, xs)
    if _check_checkpoint(checkpoint) is False:
        return jax.lax.scan(body, carry, xs)
    return _scan_segments(body, carry, xs, length, checkpoint)


def _closed_loop(
    network, environment, initial_state, inputs, rewards, step_mask, return_states, checkpoint
):
    if not isinstance(environment, AbstractEnvironment):
        raise MetaplasticError(
            f"environment must be an AbstractEnvironment, got {type(environment).__name__}."
        )
    if rewards is not None or step_mask is not None:
        raise MetaplasticError(
            "With an environment, the environment decides the rewards and which steps count: "
            "pass rewards=None and step_mask=None."
        )
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise MetaplasticError("The environment's inputs hold no array (a leading time axis).")
    length = leaves[0].shape[0]

    def body(carry, xs):
        step_inputs, valid = xs  # only the padding of checkpointed segments is invalid
        out, state, task_state = environment.step(network, *carry, step_inputs)
        new = jax.tree.map(lambda n, o: jnp.where(valid, n, o), (state, task_state), carry)
        return new, (out, new[0] if return_states else None)

    xs = (inputs, jnp.ones(length, bool))
    carry = (initial_state, environment.init_state())
    (final, _), (outputs, states) = _scan(body, carry, xs, length, checkpoint)
    return Trajectory(outputs, states, final)


def simulate(
    layer: PlasticDense,
    initial_weights: Float[Array, "n_out n_in"],
    inputs: Float[Array, "time n_in"],
    rewards: Float[Array, " time"] | None = None,
    step_mask: Bool[Array, " time"] | None = None,
    *,
    return_weights: bool = False,
    checkpoint: bool | int | None = None,
) -> Simulation:
    """Run a plastic layer over one trajectory (`simulate_network` with the weights as the
    state, and rewards of zero by default).

    At each step `y_t = f(W_t x_t)` and `W_{t+1} = W_t + η · rule(x_t, y_t, W_t, r_t)`. Padded
    steps (`step_mask` False) leave the weights unchanged. A rule with memory starts from its
    initial state (`rule.init_state`) and carries it through the scan beside the weights.
    Vmap it for batches.

    **Arguments:**

    - `layer`: the plastic layer (rule, η, activation).
    - `initial_weights`: `(n_out, n_in)`.
    - `inputs`: presynaptic activity, `(time, n_in)`.
    - `rewards`: the reward signal per step, `(time,)`; zeros if `None`.
    - `step_mask`: valid steps, `(time,)`; all valid if `None`.
    - `return_weights`: also return the weight trajectory.
    - `checkpoint`: as for `simulate_network`.

    **Returns:**

    A `Simulation`.
    """
    if rewards is None:
        rewards = jnp.zeros(inputs.shape[0], inputs.dtype)
    out = simulate_network(
        layer,
        state_from_weights(layer.rule, initial_weights),
        inputs,
        rewards,
        step_mask,
        return_states=return_weights,
        checkpoint=checkpoint,
    )
    weights = None if out.states is None else weights_of(out.states)
    return Simulation(out.outputs, weights, weights_of(out.final_state))


def simulate_dataset(
    layer: PlasticDense,
    data: ActivityDataset,
    *,
    return_weights: bool = False,
    checkpoint: bool | int | None = None,
) -> Simulation:
    """Simulate every trajectory of a dataset from its initial weights (vmapped); the
    keywords are those of `simulate`."""
    return jax.vmap(
        lambda w0, x, r, m: simulate(
            layer, w0, x, r, m, return_weights=return_weights, checkpoint=checkpoint
        )
    )(data.initial_weights, data.inputs, data.rewards, data.step_mask)


@validates_input
def generate_activity(
    layer: PlasticDense,
    inputs: Float[Array, "batch time n_in"],
    initial_weights: Float[Array, "batch n_out n_in"],
    *,
    readout: ActivityReadout = ActivityReadout(1.0, 0.0),
    rewards: Float[Array, "batch time"] | None = None,
    key: Key,
) -> tuple[ActivityDataset, Float[Array, "batch time n_out n_in"]]:
    """Simulate a ground-truth layer and record it through a readout.

    **Returns:**

    The recorded `ActivityDataset` and the true weight trajectories.
    """
    if not isinstance(layer, PlasticDense):
        raise MetaplasticError(f"layer must be a PlasticDense, got {type(layer).__name__}.")
    if not isinstance(readout, ActivityReadout):
        raise MetaplasticError(f"readout must be an ActivityReadout, got {type(readout).__name__}.")
    if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
        raise MetaplasticError(f"key must be one JAX PRNG key, got {key!r}.")
    x = batched_inputs(inputs)
    w0 = real_array("initial_weights", initial_weights)
    batch, length, n_in = x.shape
    if w0.ndim == 2:
        w0 = np.broadcast_to(w0, (batch,) + w0.shape)
    if w0.ndim != 3 or w0.shape[0] != batch or w0.shape[2] != n_in or w0.shape[1] < 1:
        raise MetaplasticError(
            f"initial_weights must have shape (batch={batch}, n_out, n_in={n_in}), got "
            f"{np.shape(initial_weights)}."
        )
    if rewards is not None:
        rewards = real_array("rewards", rewards)
        if rewards.shape != (batch, length):
            raise MetaplasticError(
                f"rewards must have shape (batch={batch}, time={length}), got {rewards.shape}."
            )
    if readout.mask is not None and readout.mask.shape != (w0.shape[1],):
        raise MetaplasticError(
            f"readout mask has shape {readout.mask.shape}, expected ({w0.shape[1]},) for "
            f"{w0.shape[1]} neurons."
        )
    for name, arr in (("inputs", x), ("initial_weights", w0), ("rewards", rewards)):
        if arr is not None and not np.all(np.isfinite(arr)):
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise MetaplasticError(f"{name} holds a non-finite value at index {where}.")
    dtype = float_dtype(x, w0)
    inputs = jnp.asarray(x, dtype)
    initial_weights = jnp.asarray(w0, dtype)
    rewards = jnp.zeros((batch, length), dtype) if rewards is None else jnp.asarray(rewards, dtype)
    mask = jnp.ones((batch, length), bool)
    sim = jax.jit(jax.vmap(lambda w0, x, r, m: simulate(layer, w0, x, r, m, return_weights=True)))(
        initial_weights, inputs, rewards, mask
    )
    observed, neuron_mask = readout.observe(sim.activity, key=key)
    data = ActivityDataset(
        inputs, observed, initial_weights, neuron_mask=neuron_mask, rewards=rewards
    )
    return data, sim.weights


def simulate_recordings(
    network: AbstractLayer,
    data: RecordingDataset,
    *,
    return_states: bool = False,
    checkpoint: bool | int | None = None,
) -> Trajectory:
    """Simulate every trajectory of a `RecordingDataset` from its initial state (vmapped
    `simulate_network`); the keywords are those of `simulate_network`. Every field of the
    result has a leading `batch` axis."""
    rewards_axis = None if data.rewards is None else 0
    return jax.vmap(
        lambda s0, x, r, m: simulate_network(
            network, s0, x, r, m, return_states=return_states, checkpoint=checkpoint
        ),
        in_axes=(0, 0, rewards_axis, 0),
    )(data.initial_state, data.inputs, data.rewards, data.step_mask)


@validates_input
def generate_recordings(
    model: Model,
    inputs: Float[Array, "batch time n_in"],
    initial_state: PyTree | None = None,
    *,
    rewards: Float[Array, "batch time"] | None = None,
    recorded_fraction: float = 1.0,
    state_scale: float = 0.1,
    key: Key,
) -> tuple[RecordingDataset, Trajectory]:
    """Simulate a ground-truth network and record it through its head: synthetic data for
    recovery studies.

    **Arguments:**

    - `model`: a `metaplastic.nn.Model` (the true network and the head that records it).
    - `inputs`: `(batch, time, n_in)`.
    - `initial_state`: the network's state at the start of each trajectory (its PyTree with a
      leading `batch` axis); `None` draws one per trajectory with `init_state(scale=
      state_scale)`.
    - `rewards`: `(batch, time)`, or `None` for none.
    - `recorded_fraction`: the fraction of the neurons recorded, in (0, 1]: one random
      subset for the whole dataset, the others marked unrecorded in `neuron_mask`.
    - `key`: the PRNG key of the initial states, the subset and the recording noise.

    **Returns:**

    `(data, truth)`: the `RecordingDataset` and the true `Trajectory` (every state,
    batched).
    """
    if not isinstance(model, Model):
        raise MetaplasticError(
            f"model must be a metaplastic.nn.Model(network, head), got {type(model).__name__}."
        )
    if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
        raise MetaplasticError(f"key must be one JAX PRNG key, got {key!r}.")
    readout = ActivityReadout(recorded_fraction)  # checks the fraction; draws the subset
    x = batched_inputs(inputs)
    batch = x.shape[0]
    network = model.network
    if network.in_size is not None and x.shape[2] != network.in_size:
        raise MetaplasticError(
            f"inputs have {x.shape[2]} inputs per step but {type(network).__name__} takes "
            f"{network.in_size}."
        )
    k_state, k_mask, k_noise = jax.random.split(key, 3)
    if initial_state is None:
        keys = jax.random.split(k_state, batch)
        initial_state = jax.vmap(lambda k: network.init_state(key=k, scale=state_scale))(keys)
    dtype = float_dtype(x)
    inputs = jnp.asarray(x, dtype)
    if rewards is not None:
        rewards = jnp.asarray(real_array("rewards", rewards), dtype)
        if rewards.shape != x.shape[:2]:
            raise MetaplasticError(
                f"rewards must have shape {x.shape[:2]} (batch, time), got {rewards.shape}."
            )
    state = jax.tree.map(lambda a: jnp.asarray(a, dtype), initial_state)
    rewards_axis = None if rewards is None else 0

    @jax.jit
    def run(state, inputs, rewards):
        sim = jax.vmap(
            lambda s0, xs, r: simulate_network(network, s0, xs, r, return_states=True),
            in_axes=(0, 0, rewards_axis),
        )(state, inputs, rewards)
        predictions = jax.vmap(model.head.predict)(sim.outputs)
        keys = jax.random.split(k_noise, batch)
        recorded = jax.vmap(lambda p, k: model.head.sample(p, key=k))(predictions, keys)
        return sim, recorded

    try:
        sim, recorded = run(state, inputs, rewards)
    except MetaplasticError:
        raise
    except Exception as err:
        raise MetaplasticError(
            "The network cannot be simulated from this initial state and these inputs — do "
            f"their shapes match the network's? {first_line(err)}"
        ) from err
    neuron_mask = np.asarray(readout.neuron_mask(recorded.shape[-1], key=k_mask))
    data = RecordingDataset(
        inputs,
        np.asarray(recorded),
        state,
        neuron_mask=neuron_mask,
        rewards=rewards,
        head=model.head,
    )
    return data, sim
