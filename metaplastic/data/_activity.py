import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._errors import MetaplasticError, validates_input
from .._validate import finite_where, real_array, trajectory_masks


logger = logging.getLogger("metaplastic")


def float_dtype(*arrays: np.ndarray) -> np.dtype:
    """The floating-point dtype that holds all `arrays` (JAX's default float for integers),
    as JAX will store it (float32 unless 64-bit mode is on)."""
    dtype = np.result_type(*(a.dtype for a in arrays))
    if dtype.kind != "f":
        dtype = np.dtype(float)
    return jax.dtypes.canonicalize_dtype(dtype)


class ActivityDataset(eqx.Module):
    """A batch of recorded trajectories of one plastic layer, padded to a common length.

    - `inputs`: presynaptic activity, `(batch, time, n_in)`.
    - `activity`: recorded postsynaptic activity, `(batch, time, n_out)`.
    - `initial_weights`: the weights at the start of each trajectory, `(batch, n_out, n_in)`.
    - `step_mask`: `True` on the valid (non-padded) steps, `(batch, time)`.
    - `neuron_mask`: `True` on the recorded neurons, `(batch, n_out)`.
    - `rewards`: the reward signal per step, `(batch, time)` (zeros when unused).
    """

    inputs: Float[Array, "batch time n_in"]
    activity: Float[Array, "batch time n_out"]
    initial_weights: Float[Array, "batch n_out n_in"]
    step_mask: Bool[Array, "batch time"]
    neuron_mask: Bool[Array, "batch n_out"]
    rewards: Float[Array, "batch time"]

    @validates_input
    def __init__(
        self,
        inputs: Float[ArrayLike, "batch time n_in"],
        activity: Float[ArrayLike, "batch time n_out"],
        initial_weights: Float[ArrayLike, "batch n_out n_in"] | Float[ArrayLike, "n_out n_in"],
        *,
        step_mask: Bool[ArrayLike, "batch time"] | None = None,
        neuron_mask: Bool[ArrayLike, "batch n_out"] | Bool[ArrayLike, " n_out"] | None = None,
        rewards: Float[ArrayLike, "batch time"] | None = None,
    ):
        """**Arguments:**

        - `inputs`: `(batch, time, n_in)`; `activity`: `(batch, time, n_out)`.
        - `initial_weights`: `(batch, n_out, n_in)`, or `(n_out, n_in)` shared by all.
        - `step_mask`: `(batch, time)` booleans, `True` on valid steps (default: all valid).
        - `neuron_mask`: `(batch, n_out)` or `(n_out,)` booleans, `True` on recorded neurons.
        - `rewards`: `(batch, time)`, zeros if `None`.

        Raises `MetaplasticError` naming the array and index of any problem: wrong shapes or
        dtypes, an empty dataset or trajectory, a trajectory without a valid step or recorded
        neuron, or a NaN/Inf in an entry that the masks mark valid (named by trajectory, step
        and neuron). Entries the masks mark invalid are set to zero.

        **Missing samples.** A NaN is not read as "missing": it is refused here, so that it
        cannot surface later as a diverged fit. Mark what is missing with the masks instead:
        a step where nothing was recorded with `step_mask=False`, a neuron that was not
        recorded with `neuron_mask=False`; NaN and Inf may stand in masked entries, which are
        set to zero.
        """
        inputs_np = real_array("inputs", inputs)
        activity_np = real_array("activity", activity)
        w0 = real_array("initial_weights", initial_weights)
        if inputs_np.ndim != 3:
            raise MetaplasticError(
                f"inputs must have shape (batch, time, n_in), got {inputs_np.shape}."
            )
        b, t, n_in = inputs_np.shape
        if b == 0:
            raise MetaplasticError("The dataset is empty: inputs has 0 trajectories.")
        if t < 1:
            raise MetaplasticError("Trajectories must have at least one time step, got 0.")
        if n_in < 1:
            raise MetaplasticError("inputs must have at least one presynaptic neuron (n_in=0).")
        if activity_np.ndim != 3 or activity_np.shape[:2] != (b, t):
            raise MetaplasticError(
                f"activity must have shape (batch={b}, time={t}, n_out), got {activity_np.shape}."
            )
        n_out = activity_np.shape[2]
        if n_out < 1:
            raise MetaplasticError("activity must have at least one neuron (n_out=0).")
        if w0.ndim == 2 and w0.shape == (n_out, n_in):
            w0 = np.broadcast_to(w0, (b,) + w0.shape)
        if w0.shape != (b, n_out, n_in):
            raise MetaplasticError(
                f"initial_weights must have shape (batch={b}, n_out={n_out}, n_in={n_in}) or "
                f"(n_out={n_out}, n_in={n_in}), got {w0.shape}."
            )
        sm, nm = trajectory_masks(step_mask, neuron_mask, b, t, n_out)
        rw = (
            np.zeros((b, t), inputs_np.dtype) if rewards is None else real_array("rewards", rewards)
        )
        if rw.shape != (b, t):
            raise MetaplasticError(f"rewards must have shape ({b}, {t}), got {rw.shape}.")
        # A NaN is refused, not taken as a missing sample: the masks say what is missing,
        # per step (`step_mask`) or per neuron (`neuron_mask`), and a NaN they mark valid
        # would otherwise only surface as a diverged fit.
        finite_where(
            "inputs",
            inputs_np,
            np.broadcast_to(sm[:, :, None], inputs_np.shape),
            ("trajectory", "step", "input"),
        )
        finite_where(
            "activity",
            activity_np,
            sm[:, :, None] & nm[:, None, :],
            ("trajectory", "step", "neuron"),
        )
        finite_where(
            "initial_weights", w0, np.ones(w0.shape, bool), ("trajectory", "neuron", "input")
        )
        finite_where("rewards", rw, sm, ("trajectory", "step"))
        single = np.flatnonzero(sm.sum(axis=1) == 1)
        if len(single):
            logger.warning(
                "ActivityDataset: %d trajectory(ies) (the first is %d) have a single valid step; "
                "activity before any plasticity step carries no information about the rule",
                len(single),
                int(single[0]),
            )
        dtype = float_dtype(inputs_np, activity_np, w0, rw)
        # Invalid entries are zeroed so that a NaN in padding can never leak into a gradient.
        self.inputs = jnp.asarray(np.where(sm[:, :, None], inputs_np, 0.0), dtype)
        self.activity = jnp.asarray(
            np.where(sm[:, :, None] & nm[:, None, :], activity_np, 0.0), dtype
        )
        self.initial_weights = jnp.asarray(w0, dtype)
        self.step_mask = jnp.asarray(sm)
        self.neuron_mask = jnp.asarray(nm)
        self.rewards = jnp.asarray(np.where(sm, rw, 0.0), dtype)

    @property
    def n_trajectories(self) -> int:
        return self.inputs.shape[0]

    def __len__(self) -> int:
        return self.inputs.shape[0]
