import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .._errors import MetaplasticError, validates_input
from .._types import Key


class ActivityReadout(eqx.Module):
    """What an experimenter records of a population: a subset of neurons, with noise.

    The recorded subset (`recorded_fraction` of the neurons, or an explicit `mask`) and the
    additive Gaussian measurement noise are drawn **once per dataset** with a key, not at every
    training step.
    """

    recorded_fraction: float = eqx.field(static=True)
    noise_std: float = eqx.field(static=True)
    mask: Bool[Array, " n"] | None

    @validates_input
    def __init__(
        self,
        recorded_fraction: float = 1.0,
        noise_std: float = 0.0,
        mask: Bool[ArrayLike, " n"] | None = None,
    ):
        """**Arguments:**

        - `recorded_fraction`: the fraction of neurons recorded, in (0, 1].
        - `noise_std`: the standard deviation of the additive Gaussian noise, >= 0.
        - `mask`: optionally, exactly which neurons are recorded, `(n,)` booleans; it takes
          precedence over `recorded_fraction`.
        """
        for name, value in (("recorded_fraction", recorded_fraction), ("noise_std", noise_std)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise MetaplasticError(f"{name} must be a number, got {value!r}.")
        if not (0.0 < recorded_fraction <= 1.0):
            raise MetaplasticError(f"recorded_fraction must be in (0, 1], got {recorded_fraction}.")
        if not (noise_std >= 0.0 and math.isfinite(noise_std)):
            raise MetaplasticError(f"noise_std must be finite and non-negative, got {noise_std}.")
        if mask is not None:
            m = np.asarray(mask)
            if m.dtype != bool or m.ndim != 1:
                raise MetaplasticError(
                    f"readout mask must be a 1-D boolean array, got {m.dtype} {m.shape}."
                )
            if not m.any():
                raise MetaplasticError("readout mask records no neuron.")
            mask = jnp.asarray(m)
        self.recorded_fraction = float(recorded_fraction)
        self.noise_std = float(noise_std)
        self.mask = mask

    def neuron_mask(self, n: int, *, key: Key) -> Bool[Array, " n"]:
        """Which of `n` neurons are recorded: the explicit mask, or a random subset of
        `round(recorded_fraction * n)` neurons (at least one)."""
        if self.mask is not None:
            if self.mask.shape != (n,):
                raise MetaplasticError(
                    f"readout mask has shape {self.mask.shape}, expected ({n},)."
                )
            if not bool(jnp.any(self.mask)):
                raise MetaplasticError("readout mask records no neuron.")
            return jnp.asarray(self.mask, dtype=bool)
        k = max(1, int(round(self.recorded_fraction * n)))
        chosen = jr.permutation(key, n)[:k]
        return jnp.zeros(n, dtype=bool).at[chosen].set(True)

    def observe(
        self, activity: Float[Array, "*batch n"], *, key: Key
    ) -> tuple[Float[Array, "*batch n"], Bool[Array, " n"]]:
        """Record `activity` (any leading axes, neurons last): returns the noisy activity and
        the mask of recorded neurons (unrecorded neurons are set to zero)."""
        k_mask, k_noise = jr.split(key)
        mask = self.neuron_mask(activity.shape[-1], key=k_mask)
        noisy = activity + self.noise_std * jr.normal(k_noise, activity.shape, activity.dtype)
        return jnp.where(mask, noisy, 0.0), mask
