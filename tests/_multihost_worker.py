"""One process of a data-parallel fit over several CPU processes (`jax.distributed`), started
by tests/test_multihost.py; with `--processes 1` the same fit in one process, unsharded.

Every process builds the same dataset, keeps only its own share of the trajectories (as a
host loading its own files would) and assembles the global batch with
`jax.make_array_from_process_local_data`; the model is replicated over a mesh of every
process's device. Each process prints one JSON line: the fitted coefficients, the loss
history, the run folder it was given and every file it wrote (seen through a Python audit
hook), so that the test can check that only process 0 writes.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--trajectories", type=int, default=8)
    p.add_argument("--run-out", default=None, help="create a run folder here")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps-per-call", type=int, default=None)
    p.add_argument("--kill-at", type=int, default=None, help="SIGKILL --victim after this step")
    p.add_argument("--victim", type=int, default=1)
    p.add_argument("--watch", default=None, help="report the files written under this folder")
    p.add_argument(
        "--ensemble",
        type=int,
        default=None,
        help="then also fit this many members from different starts on the whole "
        "(replicated) batch, the members split over the processes",
    )
    return p.parse_args(argv)


def watch_writes(root: str) -> list[str]:
    """Record every file or folder this process creates, opens for writing or renames
    under `root`."""
    root = os.path.realpath(root)
    seen: list[str] = []

    def note(path):
        if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
            full = os.path.realpath(os.fsdecode(path))
            if full.startswith(root + os.sep):
                seen.append(os.path.relpath(full, root))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing:
                note(path)
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir"):
            note(args[0])
            if event == "os.rename":
                note(args[1])

    sys.addaudithook(hook)
    return seen


def main(argv=None) -> None:
    args = parse(argv)
    writes = watch_writes(args.watch) if args.watch else []

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.processes,
            process_id=args.process_id,
        )
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    import metaplastic as mp

    n = args.trajectories
    k = jr.split(jr.key(0), 5)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    inputs = mp.tasks.gaussian_stimuli(4, 12, n_trajectories=n, std=0.5, key=k[0])
    w0 = 0.1 * jr.normal(k[1], (n, 5, 4))
    data, _ = mp.generate_activity(teacher, inputs, w0, key=k[2])
    # Unequal lengths, so that the processes average different numbers of entries.
    lengths = jnp.asarray((np.arange(n) * 5) % 11 + 2)
    data = mp.data.ActivityDataset(
        data.inputs,
        data.activity,
        data.initial_weights,
        step_mask=jnp.arange(12)[None, :] < lengths[:, None],
    )
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=k[3], scale=0.1), eta=1.0)
    loss = mp.losses.ActivityMSE()
    whole = data  # every trajectory, for the ensemble fit

    if args.processes > 1:
        assert jax.process_count() == args.processes, jax.process_count()
        mesh = mp.sharding.batch_mesh()
        assert mesh.size == len(jax.devices()) == args.processes * jax.local_device_count()
        # This process's own trajectories, as a host would load only its own files.
        share = n // jax.process_count()
        mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        split = NamedSharding(mesh, PartitionSpec("batch"))
        local = jax.tree.map(lambda a: np.asarray(a)[mine], data)
        data = jax.tree.map(lambda a: jax.make_array_from_process_local_data(split, a), local)
        student = mp.sharding.replicate(student, mesh)
        loss = mp.sharding.data_parallel(loss, mesh)

    def callback(step, value, model):
        if step == args.kill_at and jax.process_index() == args.victim:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    run = None
    checkpoint_dir = args.checkpoint_dir
    if args.run_out is not None:
        run = mp.runs.create_run(args.run_out, name="multihost", config=vars(args))
        checkpoint_dir = run.path / "checkpoint"
    result = mp.fit(
        student,
        data,
        loss,
        solver=mp.Optax(optax.adam(1e-2)),
        steps=args.steps,
        progress=False,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        steps_per_call=args.steps_per_call,
        callback=callback,
    )
    if run is not None:
        run.log_history(result.history)
        run.finish({"loss": float(result.history.loss[-1])})
    coefficients = np.asarray(result.model.rule.coefficients)
    members = None if args.ensemble is None else fit_ensemble(args, whole, k[4])
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "processes": jax.process_count(),
                "devices": len(jax.devices()),
                "coefficients": coefficients.ravel().tolist(),
                "dtype": str(coefficients.dtype),
                "loss": np.asarray(result.history.loss).tolist(),
                "history_last": np.asarray(result.history.params.rule.coefficients[-1])
                .ravel()
                .tolist(),
                "n_traces": result.n_traces,
                "run": None if run is None else str(Path(run.path).resolve()),
                "writes": sorted(set(writes)),
                "ensemble": members,
            }
        ),
        flush=True,
    )


def fit_ensemble(args, data, key):
    """`args.ensemble` members from different starts fitted to every trajectory, the members
    split over the processes (each on one process's device) and the data replicated: the
    history and the fitted members are split across processes and must be gathered."""
    import equinox as eqx
    import jax.random as jr
    import numpy as np
    import optax
    from jax.experimental import multihost_utils

    import metaplastic as mp

    make = lambda k: mp.nn.PlasticDense(mp.TaylorRule.random(key=k, scale=0.1), eta=1.0)
    members = eqx.filter_vmap(make)(jr.split(key, args.ensemble))
    if args.processes > 1:
        mesh = mp.sharding.batch_mesh()
        members = mp.sharding.shard_ensemble(members, mesh)
        data = mp.sharding.replicate(data, mesh)
    result = mp.fit(
        members,
        data,
        mp.losses.ActivityMSE(),
        solver=mp.Optax(optax.adam(1e-2)),
        steps=4,
        progress=False,
        ensemble=True,
        data_ensemble_axis=None,
    )
    coefficients = result.model.rule.coefficients
    if not coefficients.is_fully_addressable:  # members on other processes' devices
        coefficients = multihost_utils.process_allgather(coefficients, tiled=True)
    return {
        "coefficients": np.asarray(coefficients).ravel().tolist(),
        "loss": np.asarray(result.history.loss).tolist(),
        "history_last": np.asarray(result.history.params.rule.coefficients[-1]).ravel().tolist(),
    }


if __name__ == "__main__":
    main()
