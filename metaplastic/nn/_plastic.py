from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

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


class PlasticDense(AbstractLayer):
    """A dense layer whose weights are *state* that evolves by a plasticity rule.

    `y = f(W x)`, then `W ← W + η · rule(x, y, W, r)`. The weights are not parameters of the
    module: they are carried through the simulation, starting from given initial weights
    (the layer's state, `(n_out, n_in)`).
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

    def step(
        self, weight: Weight, pre: Pre, reward: Scalar | float = 0.0
    ) -> tuple[Post, Float[Array, "n_out n_in"]]:
        """One time step: the activity `y` and the updated weights."""
        post = self.forward(weight, pre)
        return post, self.update(weight, pre, post, reward)

    def init_state(self, *, key, scale=0.1):
        """Random initial weights `N(0, scale²)`, `(out_size, in_size)`."""
        if self.in_size is None or self.out_size is None:
            raise MetaplasticError(
                "PlasticDense.init_state needs the layer's sizes: construct it with "
                "in_size= and out_size=."
            )
        return scale * jr.normal(key, (self.out_size, self.in_size))


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
