import typing
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._errors import MetaplasticError
from .._types import Key, Post, Pre, Scalar, Weight
from ._abstract import AbstractRule
from ._expression import FACTORS, as_factors


class MLPRule(AbstractRule):
    """A per-synapse multilayer perceptron on the chosen factors, `Δw = MLP(x, y, w, r)`.

    The same small network is applied to every synapse (default: one hidden layer of 10
    leaky-ReLU units and a tanh output).
    """

    mlp: eqx.nn.MLP
    factors: tuple[str, ...] = eqx.field(static=True)

    @typing.no_type_check  # validates its own input: see metaplastic/_errors.py
    def __init__(
        self,
        factors: tuple[str, ...] = FACTORS,
        *,
        width: int = 10,
        depth: int = 1,
        activation: Callable = jax.nn.leaky_relu,
        final_activation: Callable = jnp.tanh,
        key: Key,
    ):
        """**Arguments:**

        - `factors`: the inputs of the MLP, from `"x"`, `"y"`, `"w"`, `"r"`.
        - `width`, `depth`: hidden width and number of hidden layers.
        - `activation`, `final_activation`: hidden and output non-linearities.
        - `key`: a JAX PRNG key for the initial parameters.
        """
        factors = as_factors(factors)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (width, depth))
        if not ints or width < 1 or depth < 0:
            raise MetaplasticError(
                f"MLPRule needs integers width >= 1 and depth >= 0, got {width!r}, {depth!r}."
            )
        if not (callable(activation) and callable(final_activation)):
            raise MetaplasticError("MLPRule activations must be functions such as jnp.tanh.")
        if not (isinstance(key, jax.Array) and key.shape in ((), (2,))):
            raise MetaplasticError(f"MLPRule needs one JAX PRNG key, got {key!r}.")
        self.factors = factors
        self.mlp = eqx.nn.MLP(
            in_size=len(factors),
            out_size="scalar",
            width_size=width,
            depth=depth,
            activation=activation,
            final_activation=final_activation,
            key=key,
        )

    def __call__(
        self, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> Float[Array, "n_out n_in"]:
        shape = weight.shape
        columns = {
            "x": pre[None, :],
            "y": post[:, None],
            "w": weight,
            "r": jnp.asarray(reward, weight.dtype),
        }
        if getattr(self.mlp, "scan", False):
            inputs = jnp.stack([jnp.broadcast_to(columns[f], shape) for f in self.factors], -1)
            return jax.vmap(jax.vmap(self.mlp))(inputs)
        # The same network written unit by unit as broadcast sums of the factors: x is a row,
        # y a column and r a scalar, so no per-synapse input vector is stacked, and the whole
        # network fuses into one elementwise pass over the synapses (about 2.5× faster than
        # vmapping the MLP over stacked inputs, gradients included, at 100 → 1000).
        units = [columns[f] for f in self.factors]
        layers = self.mlp.layers
        hidden = jnp.vectorize(self.mlp.activation)
        for i, layer in enumerate(layers):
            out = []
            for k in range(layer.weight.shape[0]):
                z = sum(layer.weight[k, j] * u for j, u in enumerate(units))
                out.append(z if layer.bias is None else z + layer.bias[k])
            units = [hidden(z) for z in out] if i < len(layers) - 1 else out
        (z,) = units
        if self.mlp.depth > 0:  # eqx.nn.MLP applies no final activation at depth 0
            z = jnp.vectorize(self.mlp.final_activation)(z)
        return jnp.broadcast_to(z, shape)
