"""Ensembles: datasets and rules with a leading member axis, and the default student rules."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree
from jaxtyping import Key as PRNGKeyArray

from .._errors import MetaplasticError
from .._random import host_rng
from .._types import Key
from ..rules import FACTORS, AbstractRule, MLPRule, TaylorRule


def stack_members(tree: PyTree, members: int) -> PyTree:
    """Split the leading (trajectory) axis of every array of a dataset into
    `(members, batch // members)`, e.g. to give each seed of an ensemble its own data."""

    def split(a):
        if not eqx.is_array(a):
            return a
        if a.shape[0] % members:
            raise MetaplasticError(
                f"Cannot split {a.shape[0]} trajectories into {members} equal members."
            )
        return a.reshape((members, a.shape[0] // members) + a.shape[1:])

    return jax.tree.map(split, tree)


def stack_rules(
    make_rule: Callable[[Key], AbstractRule], keys: PRNGKeyArray[Array, " members"]
) -> AbstractRule:
    """An ensemble of rules, one per key, with a leading member axis on every array."""
    return eqx.filter_vmap(make_rule)(keys)


TAYLOR_STUDENT_SCALE = 1e-3
"""The initial scale of the default Taylor student: its coefficients are drawn from
`N(0, scale²)`, so that the first trials stay near the zero rule."""
MLP_STUDENT_SCALE = 0.1
"""The initial scale of the default MLP student: its output layer scaled down by `scale` (its
bias zero), so that the first trials stay near the zero rule."""


def taylor_student(*, key: Key, order: int = 2, scale: float = TAYLOR_STUDENT_SCALE) -> TaylorRule:
    """The default Taylor student: all `(order+1)^4` terms over `x, y, w, r` (81 for order 2),
    initialised from `N(0, scale²)`."""
    return TaylorRule.random(FACTORS, order, scale=scale, key=key)


def mlp_student(*, key: Key, width: int = 10, scale: float = MLP_STUDENT_SCALE) -> MLPRule:
    """The default MLP student on `x, y, w, r` (one hidden layer of `width` units), started
    near the zero rule: the output layer's initial weights are multiplied by `scale` and its
    bias is zero, so the first trials do not move the weights far along a random rule."""
    rule = MLPRule(FACTORS, width=width, key=key)
    last = rule.mlp.layers[-1]
    return eqx.tree_at(
        lambda r: (r.mlp.layers[-1].weight, r.mlp.layers[-1].bias),
        rule,
        (scale * last.weight, jnp.zeros_like(last.bias)),
    )


def taylor_students(
    members: int, *, key: Key, order: int = 2, scale: float = TAYLOR_STUDENT_SCALE
) -> TaylorRule:
    """`members` Taylor students (the distribution of `taylor_student`), coefficients with a
    leading member axis, drawn at once on the host (see `metaplastic._random`; the numbers
    differ from `stack_rules(taylor_student, keys)`)."""
    rule = TaylorRule.zeros(FACTORS, order=order)
    c = scale * host_rng(key).standard_normal((members,) + rule.coefficients.shape)
    return eqx.tree_at(lambda r: r.coefficients, rule, jnp.asarray(c, rule.coefficients.dtype))


def mlp_students(
    members: int, *, key: Key, width: int = 10, scale: float = MLP_STUDENT_SCALE
) -> MLPRule:
    """`members` MLP students (the distribution of `mlp_student`: Equinox's
    `uniform(±1/√fan_in)` for every layer, the output layer's weights scaled by `scale` and
    its bias zero), arrays with a leading member axis, drawn at once on the host (see
    `metaplastic._random`; initialising members one by one, or a vmapped initialiser, spends
    seconds on PRNG dispatch and compilation; the numbers differ from
    `stack_rules(mlp_student, keys)`)."""
    template = eqx.filter_eval_shape(lambda k: mlp_student(key=k, width=width), key)
    rng = host_rng(key)
    layers = template.mlp.layers
    arrays = []
    for i, layer in enumerate(layers):
        lim = 1.0 / np.sqrt(layer.in_features)
        w = rng.uniform(-lim, lim, (members,) + layer.weight.shape)
        b = rng.uniform(-lim, lim, (members,) + layer.bias.shape)
        if i == len(layers) - 1:
            w, b = scale * w, np.zeros_like(b)
        arrays += [jnp.asarray(w, layer.weight.dtype), jnp.asarray(b, layer.bias.dtype)]
    where = lambda r: [a for lyr in r.mlp.layers for a in (lyr.weight, lyr.bias)]
    return eqx.tree_at(where, template, arrays)
