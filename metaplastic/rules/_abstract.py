import abc
from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, Float, PyTree

from .._types import Post, Pre, Scalar, Weight


class AbstractRule(eqx.Module):
    """A synaptic plasticity rule: maps the local variables of every synapse to a weight change.

    Called as `rule(pre, post, weight, reward)`; a rule that does not use a factor ignores it.
    The plasticity rate η is applied by the layer, not by the rule.

    **State.** Every rule has a state, carried by the layer that holds it through the one
    scan of `metaplastic.simulate_network` (`init_state`, `step`). A memoryless rule (Taylor,
    MLP) has the empty state `()` and `stateful = False`, and layers then carry only their
    weights, exactly as without the protocol. A rule with memory (`TraceRule`, `BCMRule`)
    sets `stateful = True`: a layer holding it carries `(weights, rule state)`. Adding a rule
    with memory is one subclass that implements `init_state`, `step` and
    `natural_parameters`.
    """

    factors: eqx.AbstractVar[tuple[str, ...]]
    stateful: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def init_state(self, weight: Weight) -> PyTree:
        """The rule's state before the first step, for a layer with weights like `weight`
        (`()` for a memoryless rule)."""
        raise NotImplementedError

    @abc.abstractmethod
    def step(
        self, state: PyTree, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> tuple[Float[Array, "n_out n_in"], PyTree]:
        """One plasticity step with the rule's state: `(change, state)`, the weight change
        (before the layer's η) and the rule's state after the step. A memoryless rule returns
        `(rule(pre, post, weight, reward), state)`."""
        raise NotImplementedError

    @abc.abstractmethod
    def natural_parameters(self) -> dict[str, Any]:
        """`{name: value}` for the parameters the rule fits in an unbounded parametrisation,
        in their natural one, each an increasing function of the fitted array (`None` where
        that array does not train); `metaplastic.Posterior.natural_intervals` maps intervals
        through them. Empty for a rule fitted in its natural parameters."""
        raise NotImplementedError

    @abc.abstractmethod
    def __call__(
        self, pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> Float[Array, "n_out n_in"]:
        """**Arguments:**

        - `pre`: presynaptic activity `x`, shape `(n_in,)`.
        - `post`: postsynaptic activity `y`, shape `(n_out,)`.
        - `weight`: the weights `w`, shape `(n_out, n_in)`.
        - `reward`: the scalar reward signal `r`.

        **Returns:**

        The weight change `g(x, y, w, r)`, shape `(n_out, n_in)` (for a rule with memory:
        the change of a first step, from its initial state).
        """


class AbstractMemorylessRule(AbstractRule):
    """A rule without memory: the weight change depends on the present step's `x`, `y`, `w`
    and `r` only. Its state is empty; a subclass implements `__call__` (and `factors`)."""

    stateful: ClassVar[bool] = False

    def init_state(self, weight: Weight) -> tuple[()]:
        """A memoryless rule's state: empty."""
        return ()

    def natural_parameters(self) -> dict[str, Any]:
        """None: a memoryless rule's coefficients are fitted as they are."""
        return {}

    def step(
        self, state: tuple[()], pre: Pre, post: Post, weight: Weight, reward: Scalar | float
    ) -> tuple[Float[Array, "n_out n_in"], tuple[()]]:
        """`(rule(pre, post, weight, reward), state)`: no memory."""
        return self(pre, post, weight, reward), state
