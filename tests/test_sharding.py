"""Data-parallel and ensemble fits on 4 virtual CPU devices equal the single-device fits.

The device count of a JAX process is fixed when its backend starts, so the check runs in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4`.
"""

import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child() -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax

    import metaplastic as mp

    assert len(jax.devices()) == 4, jax.devices()
    k = jr.split(jr.key(0), 4)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    inputs = mp.tasks.gaussian_stimuli(4, 12, n_trajectories=8, std=0.5, key=k[0])
    w0 = 0.1 * jr.normal(k[1], (8, 5, 4))
    data, _ = mp.generate_activity(teacher, inputs, w0, key=k[2])
    # Unequal lengths, so that the shards average different numbers of entries.
    lengths = jnp.array([12, 5, 12, 12, 9, 12, 3, 12])
    data = mp.data.ActivityDataset(
        data.inputs,
        data.activity,
        data.initial_weights,
        step_mask=jnp.arange(12)[None, :] < lengths[:, None],
    )
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=k[3], scale=0.1), eta=1.0)
    kwargs = dict(steps=4, solver=mp.Optax(optax.adam(1e-2)), progress=False)
    mesh = mp.sharding.batch_mesh()
    out = {"mesh_batch": int(mesh.shape["batch"])}
    # A batch of 9 does not split over 4 devices: a clear error, not a silent drop.
    try:
        mp.sharding.shard_batch({"x": jnp.zeros((9, 2))}, mesh)
        out["indivisible_error"] = None
    except mp.MetaplasticError as err:
        out["indivisible_error"] = str(err)
    mse = mp.losses.ActivityMSE()

    single = mp.fit(student, data, mse, **kwargs)
    sharded_data = mp.sharding.shard_batch(data, mesh)
    assert len(sharded_data.inputs.sharding.device_set) == 4
    loss = mp.sharding.data_parallel(mse, mesh)
    np.testing.assert_allclose(loss(student, sharded_data), mse(student, data), rtol=1e-6)
    sharded = mp.fit(mp.sharding.replicate(student, mesh), sharded_data, loss, **kwargs)
    out["data_parallel_max_diff"] = float(
        jnp.max(jnp.abs(sharded.model.rule.coefficients - single.model.rule.coefficients))
    )
    out["data_parallel_scale"] = float(jnp.max(jnp.abs(single.model.rule.coefficients)))
    out["data_parallel_traces"] = sharded.n_traces

    keys = jr.split(jr.key(5), 4)
    make = lambda key: mp.nn.PlasticDense(mp.TaylorRule.random(key=key, scale=0.1), eta=1.0)
    ensemble = eqx.filter_vmap(make)(keys)
    ens_kwargs = dict(ensemble=True, data_ensemble_axis=None, **kwargs)
    plain = mp.fit(ensemble, data, mse, **ens_kwargs)
    placed = mp.sharding.shard_ensemble(ensemble, mesh)
    assert len(placed.rule.coefficients.sharding.device_set) == 4
    spread = mp.fit(placed, data, mse, **ens_kwargs)
    out["ensemble_max_diff"] = float(
        jnp.max(jnp.abs(spread.model.rule.coefficients - plain.model.rule.coefficients))
    )
    out["ensemble_devices"] = len(spread.model.rule.coefficients.sharding.device_set)
    out["ensemble_traces"] = spread.n_traces
    return out


@pytest.mark.long
def test_sharded_fits_equal_single_device_fits():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["data_parallel_scale"] > 1e-2
    assert out["data_parallel_max_diff"] < 1e-5 * out["data_parallel_scale"] + 1e-7
    assert out["data_parallel_traces"] == 1
    assert out["ensemble_max_diff"] < 1e-6
    assert out["ensemble_devices"] == 4
    assert out["ensemble_traces"] == 1
    assert out["mesh_batch"] == 4
    assert out["indivisible_error"] is not None and "multiple" in out["indivisible_error"]


def test_shard_batch_rejects_an_indivisible_batch():
    import jax.numpy as jnp

    import metaplastic as mp

    mesh = mp.sharding.batch_mesh()
    with pytest.raises(mp.MetaplasticError, match="axis"):
        mp.sharding.shard_batch({"x": jnp.zeros((3, 2))}, mesh, axis="devices")
    # The indivisible-batch check needs several devices: it runs in the 4-device child.


if __name__ == "__main__":
    print(json.dumps(run_child()))
