"""A tiny fitting problem shared by the checkpoint tests and the process they kill.

Run as a script, it fits with checkpoints and, at step `STOP`, writes a marker file and
waits to be killed."""

import sys
import time
from pathlib import Path

import jax.random as jr
import numpy as np
import optax

import metaplastic as mp


STEPS = 12
STOP = 6


def problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 6, 3)).astype(np.float32)
    y = rng.uniform(size=(5, 6, 2)).astype(np.float32)
    w0 = (0.1 * rng.normal(size=(5, 2, 3))).astype(np.float32)
    data = mp.data.ActivityDataset(x, y, w0)
    layer = mp.nn.PlasticDense(mp.TaylorRule.zeros(order=1), eta=1.0)
    return layer, data


def run(checkpoint_dir=None, *, steps=STEPS, key_seed=1, data_seed=0, optimizer=None, **kw):
    layer, data = problem(data_seed)
    return mp.fit(
        kw.pop("model", layer),
        data,
        mp.losses.ActivityMSE(),
        solver=mp.Optax(optax.adam(0.05) if optimizer is None else optimizer),
        steps=steps,
        batch_size=2,
        key=jr.key(key_seed),
        progress=False,
        checkpoint_dir=checkpoint_dir,
        **kw,
    )


if __name__ == "__main__":
    folder, marker = sys.argv[1], Path(sys.argv[2])

    def wait_to_be_killed(step, loss, model):
        if step == STOP:
            marker.write_text(str(step))
            time.sleep(600)

    run(folder, checkpoint_every=2, callback=wait_to_be_killed)
