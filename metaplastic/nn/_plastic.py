from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._errors import MetaplasticError
from .._types import Post, Pre, Scalar, Weight
from ..rules import AbstractRule


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "identity": lambda v: v,
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise MetaplasticError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")


class PlasticDense(eqx.Module):
    """A dense layer whose weights are *state* that evolves by a plasticity rule.

    `y = f(W x)`, then `W ← W + η · rule(x, y, W, r)`. The weights are not parameters of the
    module: they are carried through the simulation, starting from given initial weights.
    """

    rule: AbstractRule
    eta: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, rule: AbstractRule, *, eta: float = 1.0, activation: str = "sigmoid"):
        """**Arguments:**

        - `rule`: the plasticity rule.
        - `eta`: the plasticity rate η.
        - `activation`: `"sigmoid"`, `"tanh"` or `"identity"`.
        """
        if not isinstance(rule, AbstractRule):
            raise MetaplasticError(f"`rule` must be an AbstractRule, got {type(rule).__name__}.")
        check_activation(activation)
        self.rule = rule
        self.eta = float(eta)
        self.activation = activation

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


class FixedDense(eqx.Module):
    """A non-plastic dense layer `f(W x + b)`; its weights are not trained by default."""

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

    def __call__(self, pre: Pre) -> Post:
        return ACTIVATIONS[self.activation](self.weight @ pre + self.bias)
