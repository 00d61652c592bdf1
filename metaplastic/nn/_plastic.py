from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PyTree

from .._errors import MetaplasticError
from .._types import Post, Pre, Scalar, Weight
from .._validate import is_size
from ..rules import AbstractRule
from ._layer import AbstractLayer


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "identity": lambda v: v,
}
"""The activation functions of the layers, by the name their `activation=` takes."""


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise MetaplasticError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")


class PlasticState(eqx.Module):
    """The state of a plastic layer whose rule has memory (`rule.stateful`): the weights and
    the rule's own state (an eligibility trace, a sliding threshold). A layer with a
    memoryless rule carries its weights alone.

    - `weights`: `(n_out, n_in)`.
    - `rule_state`: the rule's state (`rule.init_state(weights)` at the start).
    """

    weights: Float[Array, "n_out n_in"]
    rule_state: PyTree


def state_from_weights(rule: AbstractRule, weights: Float[Array, "n_out n_in"]) -> PyTree:
    """A plastic synapse group's state at the start of a trajectory from its weights: the
    weights themselves for a memoryless rule, `PlasticState(weights, rule.init_state(weights))`
    for a rule with memory."""
    if not rule.stateful:
        return weights
    return PlasticState(weights, rule.init_state(weights))


def weights_of(state: PyTree) -> Float[Array, "*batch n_out n_in"]:
    """The weights in a plastic synapse group's state (see `state_from_weights`); works on
    batched and per-step stacks of states alike."""
    return state.weights if isinstance(state, PlasticState) else state


def plastic_update(
    rule: AbstractRule,
    eta: float,
    state: PyTree,
    pre: Pre,
    post: Post,
    reward: Scalar | float,
) -> PyTree:
    """One plasticity step of a synapse group's state (see `state_from_weights`):
    `W + η · rule(x, y, W, r)` for a memoryless rule, and the same with the rule's state
    threaded through `rule.step` for a rule with memory."""
    if not rule.stateful:
        return state + eta * rule(pre, post, state, reward)
    change, rule_state = rule.step(state.rule_state, pre, post, state.weights, reward)
    return PlasticState(state.weights + eta * change, rule_state)


class PlasticDense(AbstractLayer):
    """A dense layer whose weights are *state* that evolves by a plasticity rule.

    `y = f(W x)`, then `W ← W + η · rule(x, y, W, r)`. The weights are not parameters of the
    module: they are carried through the simulation, starting from given initial weights
    (the layer's state, `(n_out, n_in)`). With a rule that has memory (`rule.stateful`) the
    state is a `PlasticState` of the weights and the rule's state (`state_from_weights`).
    """

    rule: AbstractRule
    eta: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    in_size: int | None = eqx.field(static=True)
    out_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        rule: AbstractRule,
        *,
        eta: float = 1.0,
        activation: str = "sigmoid",
        in_size: int | None = None,
        out_size: int | None = None,
    ):
        """**Arguments:**

        - `rule`: the plasticity rule.
        - `eta`: the plasticity rate η.
        - `activation`: `"sigmoid"`, `"tanh"` or `"identity"`.
        - `in_size`, `out_size`: the layer's sizes, `n_in` and `n_out` (optional: the
          weights given to a simulation fix them; a `Chain` checks the sizes it is given,
          and `init_state` needs both).
        """
        if not isinstance(rule, AbstractRule):
            raise MetaplasticError(f"`rule` must be an AbstractRule, got {type(rule).__name__}.")
        check_activation(activation)
        for name, value in (("in_size", in_size), ("out_size", out_size)):
            if value is not None and not is_size(value):
                raise MetaplasticError(f"{name} must be a positive integer or None, got {value!r}.")
        self.rule = rule
        self.eta = float(eta)
        self.activation = activation
        self.in_size = None if in_size is None else int(in_size)
        self.out_size = None if out_size is None else int(out_size)

    def forward(self, weight: Weight, pre: Pre) -> Post:
        """Postsynaptic activity `f(W x)`, shape `(n_out,)`."""
        return ACTIVATIONS[self.activation](weight @ pre)

    def update(
        self, weight: Weight, pre: Pre, post: Post, reward: Scalar | float = 0.0
    ) -> Float[Array, "n_out n_in"]:
        """The weights after one plasticity step, `W + η · rule(x, y, W, r)`."""
        return weight + self.eta * self.rule(pre, post, weight, reward)

    def step(self, state: PyTree, pre: Pre, reward: Scalar | float = 0.0) -> tuple[Post, PyTree]:
        """One time step: the activity `y` and the updated state (the weights, with the
        rule's state for a rule with memory)."""
        post = self.forward(weights_of(state), pre)
        return post, plastic_update(self.rule, self.eta, state, pre, post, reward)

    def init_state(self, *, key, scale=0.1):
        """Random initial weights `N(0, scale²)`, `(out_size, in_size)` (with the rule's
        initial state for a rule with memory)."""
        if self.in_size is None or self.out_size is None:
            raise MetaplasticError(
                "PlasticDense.init_state needs the layer's sizes: construct it with "
                "in_size= and out_size=."
            )
        return state_from_weights(self.rule, scale * jr.normal(key, (self.out_size, self.in_size)))


class FixedDense(AbstractLayer):
    """A non-plastic dense layer `f(W x + b)`; its weights are not trained by default. As a
    layer of a network its state is empty (`()`)."""

    weight: Float[Array, "n_out n_in"]
    bias: Float[Array, " n_out"]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        weight: Float[Array, "n_out n_in"],
        bias: Float[Array, " n_out"] | None = None,
        *,
        activation: str = "identity",
    ):
        check_activation(activation)
        self.weight = jnp.asarray(weight)
        self.bias = (
            jnp.zeros(self.weight.shape[0], self.weight.dtype)
            if bias is None
            else jnp.asarray(bias)
        )
        self.activation = activation

    @property
    def in_size(self) -> int:
        return self.weight.shape[1]

    @property
    def out_size(self) -> int:
        return self.weight.shape[0]

    def __call__(self, pre: Pre) -> Post:
        return ACTIVATIONS[self.activation](self.weight @ pre + self.bias)

    def step(self, state: tuple, pre: Pre, reward: Scalar | float = 0.0) -> tuple[Post, tuple]:
        """The output `f(W x + b)`; the (empty) state is unchanged."""
        return self(pre), state

    def init_state(self, *, key, scale=0.1):
        return ()
