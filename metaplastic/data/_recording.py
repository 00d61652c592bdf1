import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from .._errors import MetaplasticError, validates_input
from .._validate import batched_inputs, finite_where, real_array, trajectory_masks
from ..nn import AbstractHead
from ._activity import float_dtype


class RecordingDataset(eqx.Module):
    """A batch of recorded trajectories of any network, padded to a common length: what
    `metaplastic.losses.RecordingLoss` fits a `metaplastic.nn.Model` to.

    - `inputs`: the network's input per step, `(batch, time, n_in)`.
    - `recordings`: what was recorded of its outputs (activity, spike counts, fluorescence,
      binary events), `(batch, time, n_out)`.
    - `initial_state`: the network's state at the start of each trajectory: its
      `init_state` PyTree with a leading `batch` axis on every array.
    - `step_mask`: `True` on the valid (non-padded) steps, `(batch, time)`.
    - `neuron_mask`: `True` on the recorded neurons, `(batch, n_out)`.
    - `rewards`: the reward signal per step, `(batch, time)`, or `None` when the recording
      has none (a rule over the reward factor `r` is then refused rather than fed zeros).
    """

    inputs: Float[Array, "batch time n_in"]
    recordings: Float[Array, "batch time n_out"]
    initial_state: PyTree
    step_mask: Bool[Array, "batch time"]
    neuron_mask: Bool[Array, "batch n_out"]
    rewards: Float[Array, "batch time"] | None

    @validates_input
    def __init__(
        self,
        inputs: Float[ArrayLike, "batch time n_in"],
        recordings: Float[ArrayLike, "batch time n_out"],
        initial_state: PyTree,
        *,
        step_mask: Bool[ArrayLike, "batch time"] | None = None,
        neuron_mask: Bool[ArrayLike, "batch n_out"] | Bool[ArrayLike, " n_out"] | None = None,
        rewards: Float[ArrayLike, "batch time"] | None = None,
        head: AbstractHead | None = None,
    ):
        """**Arguments:**

        - `inputs`, `recordings`, `initial_state`, `step_mask`, `neuron_mask`, `rewards`: as
          above (`neuron_mask` may also be `(n_out,)`, shared by all trajectories).
        - `head`: the head the recordings came through; when given, it checks them
          (`PoissonHead` refuses negative or fractional counts, `BernoulliHead` anything
          but 0 and 1) and its `n_neurons` must match.

        Raises `MetaplasticError` naming the array and the place of any problem: wrong
        shapes or dtypes, an empty dataset or trajectory, a trajectory without a valid step
        or recorded neuron, an initial state without the batch axis, or a NaN/Inf where the
        masks mark an entry valid (mark missing samples in the masks instead). Entries the
        masks mark invalid are set to zero.
        """
        x = batched_inputs(inputs)
        rec = real_array("recordings", recordings)
        b, t, _ = x.shape
        if rec.ndim != 3 or rec.shape[:2] != (b, t) or rec.shape[2] < 1:
            raise MetaplasticError(
                f"recordings must have shape (batch={b}, time={t}, n_out), got {rec.shape}."
            )
        n_out = rec.shape[2]
        if head is not None:
            if not isinstance(head, AbstractHead):
                raise MetaplasticError(
                    f"head must be a readout head (an AbstractHead), got {type(head).__name__}."
                )
            if head.n_neurons is not None and head.n_neurons != n_out:
                raise MetaplasticError(
                    f"{type(head).__name__} records {head.n_neurons} neurons but the "
                    f"recordings have {n_out}."
                )
        sm, nm = trajectory_masks(step_mask, neuron_mask, b, t, n_out)
        valid = sm[:, :, None] & nm[:, None, :]
        finite_where("inputs", x, np.broadcast_to(sm[:, :, None], x.shape), _AXES[:2] + ("input",))
        finite_where("recordings", rec, valid, _AXES)
        if head is not None:
            head.check_recordings(rec, valid)
        rw = None
        if rewards is not None:
            rw = real_array("rewards", rewards)
            if rw.shape != (b, t):
                raise MetaplasticError(f"rewards must have shape ({b}, {t}), got {rw.shape}.")
            finite_where("rewards", rw, sm, _AXES[:2])
        leaves, treedef = jax.tree_util.tree_flatten_with_path(initial_state)
        if not leaves:
            raise MetaplasticError("initial_state holds no array.")
        state = []
        for path, leaf in leaves:
            name = "initial_state" + jax.tree_util.keystr(path)
            arr = real_array(name, leaf)
            if arr.ndim < 1 or arr.shape[0] != b:
                raise MetaplasticError(
                    f"{name} must have the batch axis ({b} trajectories) first, got shape "
                    f"{arr.shape}."
                )
            finite_where(name, arr, np.ones(arr.shape, bool))
            state.append(arr)
        dtype = float_dtype(x, rec, *state, *(() if rw is None else (rw,)))
        self.inputs = jnp.asarray(np.where(sm[:, :, None], x, 0.0), dtype)
        self.recordings = jnp.asarray(np.where(valid, rec, 0.0), dtype)
        self.initial_state = jax.tree.unflatten(treedef, [jnp.asarray(a, dtype) for a in state])
        self.step_mask = jnp.asarray(sm)
        self.neuron_mask = jnp.asarray(nm)
        self.rewards = None if rw is None else jnp.asarray(np.where(sm, rw, 0.0), dtype)

    def __len__(self) -> int:
        return self.inputs.shape[0]


_AXES = ("trajectory", "step", "neuron")
