"""The network protocol: a layer is a step `state, pre, reward → post, state`, and a chain of
layers is itself a layer."""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import Array, Float, PyTree

from .._errors import MetaplasticError
from .._types import Key, Scalar
from ..rules import AbstractRule


class AbstractLayer(eqx.Module):
    """A network, or one stage of one: a module with a *state* and a *step*.

    The state is what the simulation carries from one step to the next — the weights of a
    plastic layer, the rates a recurrent layer feeds back, nothing for a fixed layer. It is
    never a parameter: it starts from an initial state given with the data and is never
    trained. The module's own arrays (a rule's coefficients, fixed weights, biases) are its
    parameters, and the fit's filter spec says which of them train (by default the rules').

    `metaplastic.simulate_network` runs any layer over a trajectory with one `jax.lax.scan`;
    `Chain` composes layers into one. A new kind of layer is one subclass that implements
    `step` and `init_state` and says its sizes.

    - `in_size`: the number of presynaptic inputs per step (`None`: not fixed by the layer).
    - `out_size`: the number of outputs per step (`None`: not fixed by the layer).
    """

    in_size: eqx.AbstractVar[int | None]
    out_size: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def step(
        self, state: PyTree, pre: Float[Array, " n_in"], reward: Scalar | float
    ) -> tuple[Float[Array, " n_out"], PyTree]:
        """One time step of one trajectory.

        **Arguments:**

        - `state`: the layer's state before the step.
        - `pre`: the presynaptic activity `x_t`, `(n_in,)`.
        - `reward`: the scalar reward signal `r_t`.

        **Returns:**

        `(post, state)`: the layer's output `y_t`, `(n_out,)`, and its state after the step.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def init_state(self, *, key: Key, scale: float = 0.1) -> PyTree:
        """A random initial state (for generating synthetic data): weights drawn with
        standard deviation `scale` (divided by the square root of the fan-in where a layer
        says so), rates at zero."""
        raise NotImplementedError


def layer_rules(layer: Any) -> list[AbstractRule]:
    """The plasticity rules inside `layer` (any PyTree), in tree order."""
    is_rule = lambda node: isinstance(node, AbstractRule)
    return [leaf for leaf in jax.tree.leaves(layer, is_leaf=is_rule) if is_rule(leaf)]


def check_sizes(first: AbstractLayer, second: AbstractLayer, where: str) -> None:
    """A `MetaplasticError` naming both layers when `first`'s outputs cannot feed
    `second`'s inputs (sizes that are `None` match anything)."""
    n_out, n_in = first.out_size, second.in_size
    if n_out is not None and n_in is not None and n_out != n_in:
        raise MetaplasticError(
            f"{where}: {type(first).__name__} gives {n_out} outputs but the next layer, "
            f"{type(second).__name__}, takes {n_in} inputs."
        )


class Chain(AbstractLayer):
    """Layers applied one after another, each one's output the next one's input: itself a
    layer, so chains nest and simulate like any layer. Every layer receives the same reward.

    The state is the tuple of the layers' states; the output is the last layer's. A rule
    shared by several layers is one module referenced by each (pass the same rule object):
    the filter spec then selects it once."""

    layers: tuple[AbstractLayer, ...]

    def __init__(self, *layers: AbstractLayer):
        """**Arguments:**

        - `*layers`: the layers, first to last (at least one). Consecutive sizes must
          agree, else a `MetaplasticError` names both layers and their sizes.
        """
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise MetaplasticError("Chain needs at least one layer.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, AbstractLayer):
                raise MetaplasticError(
                    f"Chain layer {i} must be a layer (an AbstractLayer such as "
                    f"metaplastic.nn.PlasticDense), got {type(layer).__name__}."
                )
        for i in range(len(layers) - 1):
            check_sizes(layers[i], layers[i + 1], f"Chain layers {i} and {i + 1}")
        self.layers = tuple(layers)

    @property
    def in_size(self) -> int | None:
        return self.layers[0].in_size

    @property
    def out_size(self) -> int | None:
        return self.layers[-1].out_size

    def step(self, state, pre, reward):
        new_states = []
        activity = pre
        for layer, layer_state in zip(self.layers, state):
            activity, new = layer.step(layer_state, activity, reward)
            new_states.append(new)
        return activity, tuple(new_states)

    def init_state(self, *, key, scale=0.1):
        keys = jr.split(key, len(self.layers))
        return tuple(layer.init_state(key=k, scale=scale) for layer, k in zip(self.layers, keys))
