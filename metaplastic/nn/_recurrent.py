import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._errors import MetaplasticError
from .._types import Post, Pre, Scalar
from .._validate import is_size, real_array
from .._validate import weight_bound as check_weight_bound
from ..rules import AbstractRule
from ._layer import AbstractLayer
from ._plastic import ACTIVATIONS, check_activation


class RecurrentState(eqx.Module):
    """The state of a `PlasticRecurrent` layer.

    - `input_weights`: `W_in`, `(n, n_in)` (plastic with an `input_rule`, else carried
      unchanged).
    - `recurrent_weights`: `W_rec`, `(n, n)`; entry `[i, j]` is the synapse from unit `j`
      onto unit `i`.
    - `rates`: the units' rates of the previous step, `y_{t−1}`, `(n,)`.
    - `rule_state`, `input_rule_state`: the states of the recurrent and input rules when
      they have memory (`rule.init_state(weights)`), else `()` (the default).
    """

    input_weights: Float[Array, "n n_in"]
    recurrent_weights: Float[Array, "n n"]
    rates: Float[Array, " n"]
    rule_state: PyTree = ()
    input_rule_state: PyTree = ()


class PlasticRecurrent(AbstractLayer):
    """A recurrent rate network whose recurrent synapses follow a plasticity rule:

        y_t = f(W_in x_t + W_rec y_{t−1} + b),
        W_rec ← W_rec + η · rule(y_{t−1}, y_t, W_rec, r_t),

    and, with an `input_rule`, `W_in ← W_in + η · input_rule(x_t, y_t, W_in, r_t)`. For a
    recurrent synapse the rule's presynaptic factor `x` is the rate of the presynaptic unit
    at the previous step, its postsynaptic factor `y` the rate it drives now.

    **Stability.** The default activation is `tanh`, so rates stay in (−1, 1) whatever the
    weights; weights stay bounded when the rule has a decay that grows with the weight (as
    Oja's `x*y − y^2*w`, whose weights settle on a bounded subspace) or when `η` is small
    against the length of a trajectory. A purely Hebbian rule (`x*y`) grows the weights
    without bound: that is the rule's dynamics, not a fault of the simulation. When a fit
    explores rules whose weights explode (a 27-term Taylor rule can make `W_rec` grow
    without bound, and the derivatives through the scan with it, long before the rates
    show it), `weight_bound` clips every plastic weight to `[−bound, bound]` after each
    update: choose it above the weights the data could have (a bound that the true
    weights never reach leaves the true rule's dynamics unchanged). Without
    `self_connections` the diagonal of `W_rec` stays at its initial value (zero by
    `init_state`).
    """

    rule: AbstractRule
    input_rule: AbstractRule | None
    bias: Float[Array, " n"]
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    eta: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    self_connections: bool = eqx.field(static=True)
    weight_bound: float | None = eqx.field(static=True)

    def __init__(
        self,
        rule: AbstractRule,
        in_size: int,
        size: int,
        *,
        input_rule: AbstractRule | None = None,
        bias: Float[ArrayLike, " n"] | None = None,
        eta: float = 1.0,
        activation: str = "tanh",
        self_connections: bool = False,
        weight_bound: float | None = None,
    ):
        """**Arguments:**

        - `rule`: the rule of the recurrent synapses.
        - `in_size`: the number of external inputs `n_in`.
        - `size`: the number of units `n`.
        - `input_rule`: the rule of the input synapses; `None` keeps them fixed.
        - `bias`: `b`, `(n,)` (default zeros); not trained by default.
        - `eta`: the plasticity rate η.
        - `activation`: `"tanh"` (default), `"sigmoid"` or `"identity"`.
        - `self_connections`: let the diagonal of `W_rec` be plastic too.
        - `weight_bound`: if given, every plastic weight is clipped to
          `[−weight_bound, weight_bound]` after each update (see "Stability").
        """
        for name, r in (("rule", rule), ("input_rule", input_rule)):
            if not (isinstance(r, AbstractRule) or (name == "input_rule" and r is None)):
                raise MetaplasticError(f"`{name}` must be an AbstractRule, got {type(r).__name__}.")
        for name, value in (("in_size", in_size), ("size", size)):
            if not is_size(value):
                raise MetaplasticError(f"{name} must be a positive integer, got {value!r}.")
        check_activation(activation)
        if bias is None:
            bias = jnp.zeros(int(size))
        else:
            b = real_array("bias", bias)
            if b.shape != (size,) or not np.all(np.isfinite(b)):
                raise MetaplasticError(
                    f"bias must be {size} finite numbers (one per unit), got shape {b.shape}."
                )
            bias = jnp.asarray(b, jnp.result_type(float))
        self.rule = rule
        self.input_rule = input_rule
        self.bias = bias
        self.in_size = int(in_size)
        self.out_size = int(size)
        self.eta = float(eta)
        self.activation = activation
        self.self_connections = bool(self_connections)
        self.weight_bound = check_weight_bound(weight_bound)

    def step(
        self, state: RecurrentState, pre: Pre, reward: Scalar | float = 0.0
    ) -> tuple[Post, RecurrentState]:
        w_in, w_rec, previous = state.input_weights, state.recurrent_weights, state.rates
        post = ACTIVATIONS[self.activation](w_in @ pre + w_rec @ previous + self.bias)
        change, rule_state = self.rule.step(state.rule_state, previous, post, w_rec, reward)
        change = self.eta * change
        if not self.self_connections:
            change = change * (1 - jnp.eye(self.out_size, dtype=change.dtype))
        new_rec = w_rec + change
        new_in, input_state = w_in, state.input_rule_state
        if self.input_rule is not None:
            change_in, input_state = self.input_rule.step(input_state, pre, post, w_in, reward)
            new_in = w_in + self.eta * change_in
        if self.weight_bound is not None:
            new_rec = jnp.clip(new_rec, -self.weight_bound, self.weight_bound)
            if self.input_rule is not None:
                new_in = jnp.clip(new_in, -self.weight_bound, self.weight_bound)
        return post, RecurrentState(new_in, new_rec, post, rule_state, input_state)

    def init_state(self, *, key, scale=0.1):
        """`W_in ~ N(0, 1/n_in)`, `W_rec ~ N(0, scale²/n)` with a zero diagonal (unless
        `self_connections`), rates zero."""
        k_in, k_rec = jr.split(key)
        n, n_in = self.out_size, self.in_size
        w_in = jr.normal(k_in, (n, n_in)) / np.sqrt(n_in)
        w_rec = scale * jr.normal(k_rec, (n, n)) / np.sqrt(n)
        if not self.self_connections:
            w_rec = w_rec * (1 - jnp.eye(n, dtype=w_rec.dtype))
        input_state = () if self.input_rule is None else self.input_rule.init_state(w_in)
        return RecurrentState(
            w_in, w_rec, jnp.zeros(n, w_rec.dtype), self.rule.init_state(w_rec), input_state
        )
