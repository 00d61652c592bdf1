"""Random numbers drawn on the host, for the one-off preparation of simulated data.

Why not JAX's PRNG there: JAX compiles its counter-based generator (and every eager
operation) once for each new array shape. Generating behaviour, re-drawing the noise of an
odour encoding or initialising an ensemble's members needs large arrays of a new shape on every
call, and compiling the generator for them costs more than drawing the numbers. So these
draws come from a numpy generator seeded by the JAX key (the same key always gives the same
numbers), and the data they feed are sliced and stacked in numpy too; the jitted programs
that follow hold no PRNG work. The modules that do this refer here instead of repeating it.
"""

import jax
import numpy as np

from ._types import Key


def host_rng(key: Key) -> np.random.Generator:
    """A numpy generator seeded from a JAX key (reproducible: same key, same draws).

    **Arguments:**

    - `key`: a JAX PRNG key (typed or raw).

    **Returns:**

    A `numpy.random.Generator` seeded with the key's data.
    """
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
