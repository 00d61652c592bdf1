"""The fly mushroom-body model: odour encoding, one plastic layer, a fixed readout."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from .._errors import MetaplasticError
from .._types import Key, Post, Pre, Scalar, Weight
from .._validate import weight_bound as check_weight_bound
from ..nn import AbstractLayer, FixedDense, PlasticDense, plastic_update, state_from_weights
from ..nn import weights_of as _weights_of
from ..rules import AbstractRule
from ..tasks._rewards import arriving_late


REWARD_SIGNALS = ("prediction_error", "reward")
"""The reward signals `r` a fly model can learn from: reward minus expected reward, or the
reward itself."""
DEFAULT_INPUT_VARIANCE = 0.015**2
"""The default variance of the input noise: the published fly model's, whose parameter named
"input_variance" (0.015) multiplies standard-normal draws, i.e. is the noise's standard
deviation. Choices are fitted by the likelihood averaged over draws of this noise
(`NoisyChoices`), which the recording never sees."""


class OdourEncoding(eqx.Module):
    """How odours drive the input units: each odour drives its own random half of the `n_in`
    units at a mean rate, and every unit gets independent Gaussian noise at every presentation.

    `x = means[odour] + sqrt(variance) · ξ`, `ξ ~ N(0, I)`.
    """

    means: Float[Array, "2 n_in"]
    variance: float = eqx.field(static=True)

    def __init__(
        self,
        n_in: int = 2,
        *,
        mean: float = 0.75,
        variance: float = DEFAULT_INPUT_VARIANCE,
        key: Key | None = None,
    ):
        """**Arguments:**

        - `n_in`: the number of input units (even, at least 2); odour A drives `n_in // 2` of
          them and odour B the other half.
        - `mean`: the mean rate of a driven unit (undriven units have mean 0).
        - `variance`: the variance of the Gaussian noise on every unit.
        - `key`: which units each odour drives (a random split); `None` gives odour A the
          first half and odour B the second.
        """
        if not isinstance(n_in, int) or n_in < 2 or n_in % 2:
            raise MetaplasticError(f"n_in must be an even integer >= 2, got {n_in!r}.")
        if not variance >= 0:
            raise MetaplasticError(f"variance must be non-negative, got {variance}.")
        order = np.arange(n_in) if key is None else np.asarray(jr.permutation(key, n_in))
        means = np.zeros((2, n_in))
        means[0, order[: n_in // 2]] = mean
        means[1, order[n_in // 2 :]] = mean
        self.means = jnp.asarray(means, dtype=jnp.result_type(float))
        self.variance = float(variance)

    @property
    def n_in(self) -> int:
        return self.means.shape[1]

    def __call__(
        self, odours: Int[ArrayLike, "*shape"], *, key: Key
    ) -> Float[Array, "*shape n_in"]:
        """Encode odour identities (0 = A, 1 = B) of any shape with fresh noise."""
        odours = jnp.asarray(odours)
        return self.with_noise(odours, jr.normal(key, odours.shape + (self.n_in,)))

    def with_noise(
        self, odours: Int[ArrayLike, "*shape"], noise: Float[Array, "*shape n_in"]
    ) -> Float[Array, "*shape n_in"]:
        """Encode odours with given standard-normal draws `noise` (one per unit)."""
        return self.means[jnp.asarray(odours)] + jnp.sqrt(self.variance) * noise


class MushroomBody(AbstractLayer):
    """The mushroom-body model of a fly choosing whether to accept an odour.

    Input units `x` (the odour encoding) drive a plastic layer `y = tanh(W x)` (Kenyon cells to
    output neurons, `n_in → hidden`), a fixed readout sums them into one logit
    (`logit = Σ_j (readout_weight / hidden) · y_j`), and `p(accept) = sigmoid(logit)`.
    The weights `W` are state: once per trial, at the accepted presentation, they change by
    `W ← W + η · rule(x, y, W, r)` with `η = 1 / n_in` and the reward signal `r`
    (`R − E[R]` for `reward_signal="prediction_error"`, `R` for `"reward"`).

    `initial_weights` are the weights a fitted model starts every trajectory from (not trained
    by default).

    As a layer of the model zoo (`metaplastic.nn.AbstractLayer`) its state is the weights and
    one step is one trial's plasticity step at the accepted presentation: `step(W, x_a, r)`
    gives `y = tanh(W x_a)` and the clipped updated weights. `metaplastic.simulate_network`
    scans it over trials, teacher-forced on recorded choices (`replay`) or closed loop in the
    task (`OperantEnvironment`). With a rule that has memory (`rule.stateful`, e.g. a
    `metaplastic.rules.TraceRule`) the state is a `metaplastic.nn.PlasticState` of the
    weights and the rule's state (`initial_state`, `weights_of`).

    **Delayed reward.** With `reward_delay = d > 0` the reward signal of a trial reaches the
    synapses `d` trials later: the signal earned at trial `t` (zero if the trial had no
    acceptance) drives the plasticity step of trial `t + d` (it is lost if that trial has no
    acceptance), and the first `d` trials learn with a zero signal. Generation, replay and
    fitting all apply the delay (`delayed_signals`); a rule must carry the credit across the
    gap (an eligibility trace) to learn from such rewards.
    """

    plastic: PlasticDense
    readout: FixedDense
    initial_weights: Float[Array, "hidden n_in"]
    reward_signal: str = eqx.field(static=True)
    init_std: float = eqx.field(static=True)
    weight_bound: float | None = eqx.field(static=True)
    reward_delay: int = eqx.field(static=True)

    def __init__(
        self,
        rule: AbstractRule,
        *,
        n_in: int = 2,
        hidden: int = 10,
        readout_weight: float = 5.0,
        init_std: float = 0.01,
        reward_signal: str = "prediction_error",
        weight_bound: float | None = 100.0,
        reward_delay: int = 0,
        key: Key,
    ):
        """**Arguments:**

        - `rule`: the plasticity rule of the plastic layer (over `x, y, w, r`).
        - `n_in`, `hidden`: sizes of the input and plastic layers.
        - `readout_weight`: the readout weights are all `readout_weight / hidden`.
        - `init_std`: initial weights are drawn from `N(0, init_std²)`.
        - `reward_signal`: `"prediction_error"` (`r = R − E[R]`) or `"reward"` (`r = R`).
        - `weight_bound`: weights are clipped to `[-weight_bound, weight_bound]` after each
          update (`None`: never). A numerical safeguard for fitting: a candidate rule with
          growing terms (`w^2`) can blow the weights up to infinity within a trajectory and
          turn the loss into NaN; far below the bound `tanh` is already saturated, so the
          bound does not change behaviour.
        - `reward_delay`: the number of trials between a choice and the arrival of its
          reward signal (see "Delayed reward"; 0: immediate).
        - `key`: draws `initial_weights`.
        """
        if not isinstance(n_in, int) or n_in < 1 or not isinstance(hidden, int) or hidden < 1:
            raise MetaplasticError(
                f"n_in and hidden must be positive integers, got {n_in!r}, {hidden!r}."
            )
        if reward_signal not in REWARD_SIGNALS:
            raise MetaplasticError(
                f"reward_signal must be one of {REWARD_SIGNALS}, got {reward_signal!r}."
            )
        if not init_std >= 0:
            raise MetaplasticError(f"init_std must be non-negative, got {init_std}.")
        self.plastic = PlasticDense(rule, eta=1.0 / n_in, activation="tanh")
        self.readout = FixedDense(jnp.full((1, hidden), readout_weight / hidden))
        self.initial_weights = init_std * jr.normal(key, (hidden, n_in))
        self.reward_signal = reward_signal
        self.init_std = float(init_std)
        self.weight_bound = check_weight_bound(weight_bound)
        if isinstance(reward_delay, bool) or not isinstance(reward_delay, (int, np.integer)):
            raise MetaplasticError(
                f"reward_delay must be a whole number of trials, got {reward_delay!r}."
            )
        if reward_delay < 0:
            raise MetaplasticError(
                f"reward_delay must be 0 (immediate) or a positive number of trials, got "
                f"{reward_delay}."
            )
        self.reward_delay = int(reward_delay)

    @property
    def n_in(self) -> int:
        return self.initial_weights.shape[-1]

    @property
    def hidden(self) -> int:
        return self.initial_weights.shape[-2]

    @property
    def in_size(self) -> int:
        return self.n_in

    @property
    def out_size(self) -> int:
        return self.hidden

    @property
    def rule(self) -> AbstractRule:
        return self.plastic.rule

    def with_rule(self, rule: AbstractRule) -> "MushroomBody":
        """The same network (sizes, readout, initial weights) with another rule."""
        return eqx.tree_at(lambda m: m.plastic.rule, self, rule)

    def sample_initial_weights(self, n: int, *, key: Key) -> Float[Array, "n hidden n_in"]:
        """`n` fresh initial weight matrices from `N(0, init_std²)`."""
        return self.init_std * jr.normal(key, (n, self.hidden, self.n_in))

    def forward(
        self, weight: Weight, inputs: Float[Array, "presentations n_in"]
    ) -> tuple[Float[Array, "presentations hidden"], Float[Array, " presentations"]]:
        """The plastic layer's activity `y` and the logit of accepting, for every presentation
        of a trial (the weights do not change within a trial)."""
        post = jax.vmap(lambda x: self.plastic.forward(weight, x))(inputs)
        logits = jax.vmap(self.readout)(post)[:, 0]
        return post, logits

    def signal(self, reward: Scalar, expected: Scalar) -> Scalar:
        """The reward signal `r` of the rule: `R − E[R]` or `R`."""
        if self.reward_signal == "prediction_error":
            return reward - expected
        return reward

    def delayed_signals(
        self, signals: Float[Array, " trials"], accepted: Bool[Array, " trials"]
    ) -> Float[Array, " trials"]:
        """The reward signal each trial's plasticity step receives, from the signal each
        trial earned: itself without a delay; with `reward_delay = d`, the signal of trial
        `t − d` if that trial had an acceptance, else zero (zero for the first `d` trials)."""
        if self.reward_delay == 0:
            return signals
        earned = jnp.where(accepted, signals, 0.0)
        return arriving_late(earned, self.reward_delay, unit="trials", option="reward_delay")

    def initial_state(self, weight: Weight) -> PyTree:
        """The network's state at the start of a trajectory with weights `weight`: the
        weights, with the rule's initial state for a rule with memory."""
        return state_from_weights(self.rule, weight)

    def weights_of(self, state: PyTree) -> Float[Array, "*batch hidden n_in"]:
        """The weights in a state (or a stack of states) of the network."""
        return _weights_of(state)

    def update(self, weight: Weight, pre: Pre, post: Post, signal: Scalar) -> Weight:
        """The weights after one plasticity step at an accepted presentation (clipped to
        `weight_bound`), for a memoryless rule (`learn` takes any state)."""
        new = self.plastic.update(weight, pre, post, signal)
        if self.weight_bound is not None:
            new = jnp.clip(new, -self.weight_bound, self.weight_bound)
        return new

    def learn(self, state: PyTree, pre: Pre, post: Post, signal: Scalar) -> PyTree:
        """The state after one plasticity step at an accepted presentation: `update` for a
        memoryless rule; for a rule with memory its state steps too (weights clipped to
        `weight_bound`)."""
        if not self.rule.stateful:
            return self.update(state, pre, post, signal)
        new = plastic_update(self.rule, self.plastic.eta, state, pre, post, signal)
        if self.weight_bound is not None:
            new = eqx.tree_at(
                lambda s: s.weights,
                new,
                jnp.clip(new.weights, -self.weight_bound, self.weight_bound),
            )
        return new

    def step(self, state: PyTree, pre: Pre, reward: Scalar | float) -> tuple[Post, PyTree]:
        """One trial's plasticity step: the plastic layer's activity `y = tanh(W x)` at the
        accepted presentation `x` and the state after the update with the reward signal
        `reward` (`signal`, not the raw reward)."""
        post = self.plastic.forward(self.weights_of(state), pre)
        return post, self.learn(state, pre, post, reward)

    def init_state(self, *, key: Key, scale: float | None = None) -> PyTree:
        """Initial weights `N(0, scale²)`, `scale` defaulting to `init_std` (with the rule's
        initial state for a rule with memory)."""
        scale = self.init_std if scale is None else scale
        weight = scale * jr.normal(key, (self.hidden, self.n_in), self.initial_weights.dtype)
        return self.initial_state(weight)
