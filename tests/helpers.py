import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(a, b, rtol=1e-5, atol=1e-8) -> bool:
    la, lb = (
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    return len(la) == len(lb) and all(
        a.shape == b.shape and np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(la, lb)
    )


def finite_difference_grad(f, x: jnp.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function of one array, entry by entry."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        out[idx] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * eps)
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    """Run `examples/<name>` with `args` in a fresh process (failing on a non-zero exit) and
    return the JSON object of its last line."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
