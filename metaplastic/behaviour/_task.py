"""The two-odour operant task: blocks of reward probabilities, baiting, reward expectation."""

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._errors import MetaplasticError
from .._types import Scalar


class TaskState(eqx.Module):
    """What the task remembers between trials.

    - `baited`: whether the reward of odour A (index 0) and B (index 1) is waiting, `(2,)`.
    - `history`: the last `window` rewards, oldest first, `(window,)` (zeros before the first
      trial, so `E[R]` starts at 0).
    """

    baited: Bool[Array, "2"]
    history: Float[Array, " window"]


def bait(
    baited: Bool[ArrayLike, "2"],
    probabilities: Float[ArrayLike, "2"],
    uniforms: Float[ArrayLike, "2"],
) -> Bool[Array, "2"]:
    """Baiting at the start of a trial: each odour's reward is drawn with its probability and,
    once drawn, stays available until collected (`baited | (u < p)`)."""
    return jnp.asarray(baited) | (jnp.asarray(uniforms) < jnp.asarray(probabilities))


def collect_reward(
    baited: Bool[ArrayLike, "2"], odour: Int[ArrayLike, ""], accepted: Bool[ArrayLike, ""]
) -> tuple[Float[Array, ""], Bool[Array, "2"]]:
    """The end of a trial: accepting `odour` collects its reward if it is baited (`R = 1`) and
    clears its bait; a trial without acceptance (the presentation cap) collects nothing.

    **Returns:**

    The reward `R` (0.0 or 1.0) and the bait state after the trial.
    """
    baited = jnp.asarray(baited)
    odour = jnp.asarray(odour)
    accepted = jnp.asarray(accepted)
    hit = jnp.arange(2) == odour
    reward = jnp.any(hit & baited) & accepted
    return reward.astype(jnp.result_type(float)), baited & ~(hit & accepted)


class OperantTask(eqx.Module):
    """The two-odour operant task with blocks, baiting and a reward expectation.

    Trials come in blocks, each with its own reward probabilities for odour A and B. At the
    start of a trial each odour's reward is drawn and stays available (*baited*) until
    collected. Within a trial, odours A or B (probability 1/2 each) are presented until the
    animal accepts one; accepting a baited odour gives `R = 1` (and clears the bait), any other
    acceptance `R = 0`.

    **The presentation cap.** A trial holds at most `max_presentations` presentations. If none
    of them is accepted, the trial ends there: all its presentations are recorded as valid
    rejections (they are observed behaviour and count in the likelihood), no reward is
    collected (`R = 0`, bait kept), no plasticity update happens, and the trial enters the
    reward history as an unrewarded trial.

    **The reward expectation.** `E[R]` before trial `t` is the mean of the rewards of the
    previous `expectation_window` trials, the history starting at zeros (this is
    `metaplastic.behaviour.expected_reward`).
    """

    probabilities: Float[Array, "blocks 2"]
    block_lengths: tuple[int, ...] = eqx.field(static=True)
    max_presentations: int = eqx.field(static=True)
    expectation_window: int = eqx.field(static=True)

    def __init__(
        self,
        probabilities: Float[ArrayLike, "blocks 2"] | Sequence[Sequence[float]] = (
            (0.2, 0.8),
            (0.9, 0.1),
            (0.2, 0.8),
        ),
        block_lengths: int | Sequence[int] = 80,
        *,
        max_presentations: int = 50,
        expectation_window: int = 10,
    ):
        """**Arguments:**

        - `probabilities`: reward probabilities `(p_A, p_B)` of each block, `(blocks, 2)`.
        - `block_lengths`: trials per block, one integer for all blocks or one per block.
        - `max_presentations`: the cap on presentations per trial (see above).
        - `expectation_window`: `k`, the number of past rewards averaged into `E[R]`.
        """
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
            raise MetaplasticError(
                f"probabilities must have shape (blocks, 2) for odours A and B, got {p.shape}."
            )
        if not np.all((p >= 0) & (p <= 1)):
            raise MetaplasticError(f"reward probabilities must lie in [0, 1], got {p.tolist()}.")
        if isinstance(block_lengths, int | np.integer):
            lengths = (int(block_lengths),) * p.shape[0]
        else:
            lengths = tuple(int(n) for n in block_lengths)
        if len(lengths) != p.shape[0] or min(lengths) < 1:
            raise MetaplasticError(
                f"block_lengths must be positive, one per block ({p.shape[0]}), got {lengths}."
            )
        if not isinstance(max_presentations, int) or max_presentations < 1:
            raise MetaplasticError(
                f"max_presentations must be a positive integer, got {max_presentations!r}."
            )
        if not isinstance(expectation_window, int) or expectation_window < 1:
            raise MetaplasticError(
                f"expectation_window must be a positive integer, got {expectation_window!r}."
            )
        self.probabilities = jnp.asarray(p, dtype=jnp.result_type(float))
        self.block_lengths = lengths
        self.max_presentations = max_presentations
        self.expectation_window = expectation_window

    @property
    def n_trials(self) -> int:
        return sum(self.block_lengths)

    def trial_probabilities(self) -> Float[Array, "trials 2"]:
        """The reward probabilities `(p_A, p_B)` in force on every trial, `(n_trials, 2)`."""
        index = np.repeat(np.arange(len(self.block_lengths)), self.block_lengths)
        return self.probabilities[index]

    def init_state(self) -> TaskState:
        """Nothing baited, an all-zero reward history."""
        return TaskState(
            jnp.zeros(2, bool), jnp.zeros(self.expectation_window, self.probabilities.dtype)
        )

    def start_trial(
        self, state: TaskState, probabilities: Float[Array, "2"], uniforms: Float[Array, "2"]
    ) -> TaskState:
        """Bait each odour with its probability for this trial, given two uniform draws
        (odour A is baited if `uniforms[0] < probabilities[0]`, and so on)."""
        return TaskState(bait(state.baited, probabilities, uniforms), state.history)

    def expected_reward(self, state: TaskState) -> Scalar:
        """`E[R]` before the coming trial: the mean of the reward history."""
        return jnp.mean(state.history)

    def end_trial(
        self, state: TaskState, odour: Int[Array, ""], accepted: Bool[Array, ""]
    ) -> tuple[Float[Array, ""], TaskState]:
        """Collect the reward of the accepted odour (none if `accepted` is False) and push it
        onto the reward history."""
        reward, baited = collect_reward(state.baited, odour, accepted)
        history = jnp.concatenate([state.history[1:], reward[None].astype(state.history.dtype)])
        return reward, TaskState(baited, history)
