"""Any optax optimiser as a solver of `metaplastic.fit`."""

from typing import ClassVar

import equinox as eqx
import optax
from jaxtyping import PyTree

from .._errors import MetaplasticError, validates_input
from .._types import Scalar
from ._base import AbstractSolver, Objective


class Optax(AbstractSolver):
    """A first-order solver: one optax update per step from the gradient of the objective.

    The update is given the extra arguments `value`, `grad` and `value_fn` (the objective on
    the step's batch), so line-search optimisers such as `optax.lbfgs()` and transformations
    such as `optax.contrib.reduce_on_plateau` work as they are.

    **Arguments:**

    - `optimizer`: an optax `GradientTransformation`, e.g. `optax.adam(1e-2)`. Clip gradients
      by chaining: `optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))`.
    """

    optimizer: optax.GradientTransformationExtraArgs = eqx.field(static=True)
    needs_jacobian: ClassVar[bool] = False
    default_steps: ClassVar[int] = 500
    default_steps_per_call: ClassVar[int] = 100
    divergence_hint: ClassVar[str] = (
        "Try a smaller learning rate or clip the gradients, e.g. "
        "optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))."
    )

    @validates_input
    def __init__(self, optimizer: optax.GradientTransformation):
        if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
            raise MetaplasticError(
                f"Optax needs an optax GradientTransformation, got {type(optimizer).__name__}."
            )
        self.optimizer = optax.with_extra_args_support(optimizer)

    def init(self, objective: Objective, params: PyTree) -> PyTree:
        return self.optimizer.init(params)

    def step(
        self, objective: Objective, params: PyTree, state: PyTree, batch: PyTree
    ) -> tuple[PyTree, PyTree, Scalar]:
        value, grads = objective.value_and_grad(params, batch)
        updates, state = self.optimizer.update(
            grads,
            state,
            params,
            value=value,
            grad=grads,
            value_fn=lambda p: objective.value(p, batch),
        )
        return eqx.apply_updates(params, updates), state, value
