import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._errors import MetaplasticError


def _finite_where(name: str, values: np.ndarray, valid: np.ndarray) -> None:
    bad = valid & ~np.isfinite(values)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MetaplasticError(
            f"{name} holds a non-finite value ({values[where]}) at index {where}, which is "
            "marked valid; mark it invalid in the mask or remove it."
        )


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

    def __init__(
        self,
        inputs: Float[ArrayLike, "batch time n_in"],
        activity: Float[ArrayLike, "batch time n_out"],
        initial_weights: Float[ArrayLike, "batch n_out n_in"],
        *,
        step_mask: Bool[ArrayLike, "batch time"] | None = None,
        neuron_mask: Bool[ArrayLike, "batch n_out"] | Bool[ArrayLike, " n_out"] | None = None,
        rewards: Float[ArrayLike, "batch time"] | None = None,
    ):
        inputs_np = np.asarray(inputs)
        activity_np = np.asarray(activity)
        w0 = np.asarray(initial_weights)
        if inputs_np.ndim != 3:
            raise MetaplasticError(
                f"inputs must have shape (batch, time, n_in), got {inputs_np.shape}."
            )
        b, t, n_in = inputs_np.shape
        if b == 0:
            raise MetaplasticError("The dataset is empty: inputs has 0 trajectories.")
        if t < 1:
            raise MetaplasticError("Trajectories must have at least one time step, got 0.")
        if activity_np.ndim != 3 or activity_np.shape[:2] != (b, t):
            raise MetaplasticError(
                f"activity must have shape (batch={b}, time={t}, n_out), got {activity_np.shape}."
            )
        n_out = activity_np.shape[2]
        if w0.ndim == 2:
            w0 = np.broadcast_to(w0, (b,) + w0.shape)
        if w0.shape != (b, n_out, n_in):
            raise MetaplasticError(
                f"initial_weights must have shape (batch={b}, n_out={n_out}, n_in={n_in}), "
                f"got {w0.shape}."
            )
        sm = np.ones((b, t), bool) if step_mask is None else np.asarray(step_mask)
        if sm.shape != (b, t) or sm.dtype != bool:
            raise MetaplasticError(
                f"step_mask must be a boolean array of shape ({b}, {t}), got {sm.dtype} {sm.shape}."
            )
        if not sm.any(axis=1).all():
            empty = int(np.argmin(sm.any(axis=1)))
            raise MetaplasticError(f"Trajectory {empty} has no valid step in step_mask.")
        nm = np.ones((b, n_out), bool) if neuron_mask is None else np.asarray(neuron_mask)
        if nm.ndim == 1:
            nm = np.broadcast_to(nm, (b,) + nm.shape)
        if nm.shape != (b, n_out) or nm.dtype != bool:
            raise MetaplasticError(
                f"neuron_mask must be a boolean array of shape ({n_out},) or ({b}, {n_out}), "
                f"got {nm.dtype} {nm.shape}."
            )
        rw = np.zeros((b, t), inputs_np.dtype) if rewards is None else np.asarray(rewards)
        if rw.shape != (b, t):
            raise MetaplasticError(f"rewards must have shape ({b}, {t}), got {rw.shape}.")
        _finite_where("inputs", inputs_np, np.broadcast_to(sm[:, :, None], inputs_np.shape))
        _finite_where("activity", activity_np, sm[:, :, None] & nm[:, None, :])
        _finite_where("initial_weights", w0, np.ones(w0.shape, bool))
        _finite_where("rewards", rw, sm)
        self.inputs = jnp.asarray(np.where(sm[:, :, None], inputs_np, 0.0).astype(inputs_np.dtype))
        # Invalid entries are zeroed so that a NaN in padding can never leak into a gradient.
        self.activity = jnp.asarray(np.where(sm[:, :, None] & nm[:, None, :], activity_np, 0.0))
        self.initial_weights = jnp.asarray(w0)
        self.step_mask = jnp.asarray(sm)
        self.neuron_mask = jnp.asarray(nm)
        self.rewards = jnp.asarray(np.where(sm, rw, 0.0))

    @property
    def n_trajectories(self) -> int:
        return self.inputs.shape[0]

    def __len__(self) -> int:
        return self.inputs.shape[0]
