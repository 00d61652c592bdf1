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


def write_random_flies(folder, trials, seed=0):
    """Write flies that choose at random as `.mat` files in the recordings' format: fly `i`
    (`Fly{i + 1}.mat`) has `trials[i]` trials, each 0–2 rejections then an acceptance, odours
    and rewards drawn at random from `numpy.random.default_rng(seed)`."""
    import scipy.io

    rng = np.random.default_rng(seed)
    for fly, n in enumerate(trials):
        y = []
        for _ in range(n):
            y += [0] * int(rng.integers(0, 3)) + [1]
        odour = rng.integers(0, 2, len(y))
        r = rng.integers(0, 2, sum(y))
        scipy.io.savemat(
            os.path.join(folder, f"Fly{fly + 1}.mat"),
            {"X": np.stack([1 - odour, odour], 1), "Y": np.array(y)[None], "R": r[None]},
        )
