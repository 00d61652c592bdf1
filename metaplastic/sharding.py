"""Data-parallel fits across devices (and hosts) through JAX's own sharding.

Two layouts cover the common cases:

- **A batch of trajectories** split over devices: `shard_batch` lays the data out along a
  one-dimensional `Mesh`, `replicate` copies the model to every device, and `data_parallel`
  wraps a loss so that each device evaluates it on
  its own trajectories (`jax.shard_map`) and the results are combined into exactly the
  single-device value (a weighted mean, weighted by the number of valid entries).
- **An ensemble of fits** (`fit(..., ensemble=True)`: seeds, restarts, rules) split over
  devices: `shard_ensemble` lays the member axis of the trainable parameters out along the
  mesh, and the jitted, vmapped fit runs each member on the device that holds it.

On several hosts, call `jax.distributed.initialize()` first on every host; `batch_mesh()` then
spans the devices of all hosts.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

from ._errors import MetaplasticError
from ._fit import rule_filter_spec
from ._types import Scalar
from .data import ActivityDataset


def batch_mesh(devices=None, *, axis: str = "batch") -> Mesh:
    """A one-dimensional mesh named `axis` over `devices` (default: every device of every
    process, `jax.devices()`)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise MetaplasticError("batch_mesh needs at least one device.")
    return Mesh(np.asarray(devices), (axis,))


def _check_axis(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.axis_names:
        raise MetaplasticError(f"The mesh has no axis {axis!r}; its axes are {mesh.axis_names}.")
    return mesh.shape[axis]


def shard_batch(data: PyTree, mesh: Mesh, *, axis: str = "batch") -> PyTree:
    """Place every array of `data` on `mesh`, split along its leading (trajectory) axis.

    **Arguments:**

    - `data`: a PyTree of arrays with the trajectories along the leading axis, e.g. an
      `ActivityDataset`.
    - `mesh`: the device mesh, e.g. `batch_mesh()`.
    - `axis`: the mesh axis to split over.

    **Returns:**

    The same PyTree, its arrays sharded with `NamedSharding(mesh, P(axis))`.
    """
    size = _check_axis(mesh, axis)
    leaves = [leaf for leaf in jax.tree.leaves(data) if eqx.is_array(leaf)]
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] % size:
            raise MetaplasticError(
                f"Cannot split an array of shape {leaf.shape} over {size} devices along its "
                f"leading axis; pad the batch to a multiple of {size} (padded trajectories "
                "can be masked out with step_mask)."
            )
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda a: jax.device_put(a, sharding) if eqx.is_array(a) else a, data)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a full copy of every array of `tree` (e.g. the model of a data-parallel fit) on
    each device of `mesh`, so that a fit's parameters keep one layout from epoch to epoch
    (and its step is traced once)."""
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: jax.device_put(a, replicated) if eqx.is_array(a) else a, tree)


def shard_ensemble(
    model: PyTree, mesh: Mesh, *, axis: str = "batch", filter_spec: PyTree | None = None
) -> PyTree:
    """Place an ensemble of models (for `fit(..., ensemble=True)`) on `mesh`: the trainable
    arrays, which carry a leading member axis, are split along `axis`; every other array is
    replicated.

    **Arguments:**

    - `model`: the ensemble, e.g. built with `eqx.filter_vmap`.
    - `mesh`, `axis`: as in `shard_batch`; the number of members must be a multiple of the
      number of devices along `axis`.
    - `filter_spec`: what trains (default `rule_filter_spec(model)`), as in `fit`.
    """
    size = _check_axis(mesh, axis)
    if filter_spec is None:
        filter_spec = rule_filter_spec(model)
    members, rest = eqx.partition(model, filter_spec)
    for leaf in jax.tree.leaves(members):
        if leaf.ndim == 0 or leaf.shape[0] % size:
            raise MetaplasticError(
                f"Cannot split ensemble parameters of shape {leaf.shape} over {size} devices: "
                f"the number of members must be a multiple of {size}."
            )
    split = NamedSharding(mesh, P(axis))
    members = jax.tree.map(lambda a: jax.device_put(a, split), members)
    return eqx.combine(members, replicate(rest, mesh))


def valid_entries(data: PyTree) -> Scalar:
    """How many entries a mean loss over `data` averages: the recorded neurons on valid steps
    of an `ActivityDataset`, otherwise the number of trajectories."""
    if isinstance(data, ActivityDataset):
        return jnp.sum(data.step_mask[:, :, None] & data.neuron_mask[:, None, :])
    leaves = [leaf for leaf in jax.tree.leaves(data) if eqx.is_array(leaf) and leaf.ndim > 0]
    if not leaves:
        raise MetaplasticError("The dataset holds no arrays.")
    return jnp.asarray(leaves[0].shape[0])


def data_parallel(
    loss: Callable[[PyTree, PyTree], Scalar],
    mesh: Mesh,
    *,
    axis: str = "batch",
    weight: Callable[[PyTree], Scalar] = valid_entries,
) -> Callable[[PyTree, PyTree], Scalar]:
    """Wrap a mean loss so that each device evaluates it on its own share of the batch.

    The batch is cut into one group of trajectories per device along `axis` (a leading group
    axis, constrained to the mesh so that XLA partitions it), the loss and `weight` are
    vmapped over the groups, and the result is `Σ weight · loss / Σ weight`. With the default
    weight this is exactly the single-device value of `metaplastic.losses.ActivityMSE()` (a
    mean over valid entries) and of any loss that is a plain mean over trajectories.

    **Arguments:**

    - `loss`: `loss(model, batch) -> scalar`, e.g. `metaplastic.losses.ActivityMSE()`. The
      result is a plain function: `fit` differentiates it with `ReverseMode` (the Taylor
      reverse pass covers the `ActivityMSE` object only) and with a first-order solver.
    - `mesh`, `axis`: as in `shard_batch`; the batch size must be a multiple of the number
      of devices along `axis`.
    - `weight`: `weight(batch) -> scalar`, the number of entries the loss averages.

    **Returns:**

    A loss with the same signature, for `fit`.
    """
    size = _check_axis(mesh, axis)
    groups_sharding = NamedSharding(mesh, P(axis))

    def group(a):
        if not eqx.is_array(a):
            return a
        if a.ndim == 0 or a.shape[0] % size:
            raise MetaplasticError(
                f"Cannot split a batch of shape {a.shape} into {size} equal groups along its "
                "leading axis; pad it (and mask the padding) to a multiple of the device count."
            )
        a = a.reshape((size, a.shape[0] // size) + a.shape[1:])
        return jax.lax.with_sharding_constraint(a, groups_sharding)

    def wrapped(model, data):
        groups = jax.tree.map(group, data)
        values, weights = jax.vmap(lambda d: (loss(model, d), weight(d)))(groups)
        weights = weights.astype(values.dtype)
        return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), 1)

    return wrapped


__all__ = [
    "batch_mesh",
    "data_parallel",
    "replicate",
    "shard_batch",
    "shard_ensemble",
    "valid_entries",
]
