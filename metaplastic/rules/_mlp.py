from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._errors import MetaplasticError, validates_input
from .._types import Key, Post, Pre, Scalar, Weight
from ._abstract import AbstractMemorylessRule
from ._expression import FACTORS, as_factors


# Up to this many synapses the rule applies its MLP synapse by synapse (batched matrix
# products); above it, unit by unit on broadcast factors (see `MLPRule.__call__`).
SMALL_LAYER = 64


class MLPRule(AbstractMemorylessRule):
    """A per-synapse multilayer perceptron on the chosen factors, `Δw = MLP(x, y, w, r)`.

    The same small network is applied to every synapse (default: one hidden layer of 10
    leaky-ReLU units and a tanh output).
    """

    mlp: eqx.nn.MLP
    factors: tuple[str, ...] = eqx.field(static=True)

    @validates_input
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
        if getattr(self.mlp, "scan", False) or weight.size <= SMALL_LAYER:
            # Small layers (the fly's 10 × 2, or the single synapses of the choice
            # sensitivities): the MLP as batched matrix products over the synapses.
            inputs = jnp.stack([jnp.broadcast_to(columns[f], shape) for f in self.factors], -1)
            return jax.vmap(jax.vmap(self.mlp))(inputs)
        # Large layers: the same network written unit by unit as broadcast sums of the
        # factors (x a row, y a column, r a scalar), so that no per-synapse input vector is
        # stacked and the whole network fuses into one elementwise pass over the synapses
        # (2.5-30× faster gradients and forward-mode Jacobians at 100 → 1000; RESULTS.md).
        # The weights are split into scalars, whose transpose is a concatenation, rather
        # than indexed one by one, whose transpose is a scatter per entry.
        units = [columns[f] for f in self.factors]
        layers = self.mlp.layers
        hidden = jnp.vectorize(self.mlp.activation)
        for i, layer in enumerate(layers):
            n_out, n_in = layer.weight.shape
            weights = jnp.split(layer.weight.reshape(-1), n_out * n_in)
            biases = [None] * n_out if layer.bias is None else jnp.split(layer.bias, n_out)
            out = []
            for k in range(n_out):
                z = sum(weights[k * n_in + j] * u for j, u in enumerate(units))
                out.append(z if biases[k] is None else z + biases[k])
            units = [hidden(z) for z in out] if i < len(layers) - 1 else out
        (z,) = units
        if self.mlp.depth > 0:  # eqx.nn.MLP applies no final activation at depth 0
            z = jnp.vectorize(self.mlp.final_activation)(z)
        return jnp.broadcast_to(z, shape)
