import abc

import equinox as eqx
from jaxtyping import Array, Float

from .._types import Post, Pre, Scalar, Weight


class AbstractRule(eqx.Module):
    """A synaptic plasticity rule: maps the local variables of every synapse to a weight change.

    Called as `rule(pre, post, weight, reward)`; a rule that does not use a factor ignores it.
    The plasticity rate η is applied by the layer, not by the rule.
    """

    factors: eqx.AbstractVar[tuple[str, ...]]

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

        The weight change `g(x, y, w, r)`, shape `(n_out, n_in)`.
        """
