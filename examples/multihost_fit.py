"""Fit Oja's rule data-parallel over several processes with jax.distributed, and check that
the result is the one-process fit's.

Starts --processes local Python processes (one CPU device each), each of which calls
`jax.distributed.initialize(coordinator_address="localhost:PORT", num_processes=N,
process_id=i)`, loads only its own share of the trajectories and assembles the global batch
with `jax.make_array_from_process_local_data`; the model is replicated over a mesh of every
process's device (`mp.sharding.batch_mesh()`) and `mp.fit` runs the same program on every
process. Process 0 alone writes the run folder (under --out) and the fit's checkpoint.
Meanwhile this process runs the same fit alone, unsharded, and compares (float64).

On a cluster, start the worker part on every host instead, with the coordinator's address:
see the README's section on several devices and several hosts.

    python examples/multihost_fit.py                 # 2 processes
    python examples/multihost_fit.py --processes 4

The last line printed is one JSON object: the largest difference of the fitted coefficients
from the one-process fit (`max_abs_diff_vs_single_process`), the run folder and the seconds.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _cli


DEFAULTS = {
    "n_in": 6,
    "n_out": 4,
    "length": 20,
    "trajectories": 16,
    "stimulus_std": 0.5,
    "steps": 40,
    "learning_rate": 0.01,
}


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="8 trajectories, 10 steps")
    p.add_argument(
        "--processes", type=int, default=2, help="number of local processes (default: 2)"
    )
    for name, value in DEFAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    # Set by the launcher for the processes it starts.
    p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.trajectories, args.steps = min(args.trajectories, 8), min(args.steps, 10)
    if args.processes < 1:
        p.error("--processes must be at least 1")
    if args.trajectories % args.processes:
        p.error("--trajectories must be a multiple of --processes (one equal share each)")
    return args


def problem(args):
    """The dataset (every trajectory) and the student model; the same on every process."""
    import jax.random as jr

    import metaplastic as mp

    k = jr.split(jr.key(args.seed), 4)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    inputs = mp.tasks.gaussian_stimuli(
        args.n_in, args.length, n_trajectories=args.trajectories, std=args.stimulus_std, key=k[0]
    )
    w0 = 0.2 * jr.normal(k[1], (args.trajectories, args.n_out, args.n_in))
    data, _ = mp.generate_activity(teacher, inputs, w0, key=k[2])
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=k[3], scale=0.05), eta=1.0)
    return data, student


def fit(args, student, data, loss, **kwargs):
    import jax.random as jr
    import optax

    import metaplastic as mp

    return mp.fit(
        student,
        data,
        loss,
        solver=mp.Optax(optax.adam(args.learning_rate)),
        steps=args.steps,
        key=jr.key(args.seed),
        **({"progress": False} | kwargs),
    )


def worker(args) -> None:
    """One of the processes of the data-parallel fit."""
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(
        coordinator_address=f"localhost:{args.port}",
        num_processes=args.processes,
        process_id=args.process_id,
    )
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import metaplastic as mp

    data, student = problem(args)
    mesh = mp.sharding.batch_mesh()  # every process's devices
    # Load only this process's trajectories (here: cut from the shared dataset), then
    # assemble the global batch, split along the mesh.
    share = args.trajectories // jax.process_count()
    mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
    split = NamedSharding(mesh, PartitionSpec("batch"))
    data = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(split, np.asarray(a)[mine]), data
    )
    config = {k: v for k, v in vars(args).items() if k not in ("process_id", "port")}
    # Every process calls create_run: process 0 makes the folder, the others get its path.
    with mp.runs.create_run(args.out, name="multihost", config=config) as run:
        result = fit(
            args,
            mp.sharding.replicate(student, mesh),
            data,
            mp.sharding.data_parallel(mp.losses.ActivityMSE(), mesh),
            checkpoint_dir=run.path / "checkpoint",
        )
        run.log_history(result.history)
        run.finish({"final_loss": float(result.history.loss[-1])})
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "devices": len(jax.devices()),
                "run": str(run.path),
                "coefficients": np.asarray(result.model.rule.coefficients).ravel().tolist(),
                "final_loss": float(result.history.loss[-1]),
                "n_traces": result.n_traces,
            }
        ),
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args) -> None:
    """Start the processes, run the one-process fit meanwhile, compare."""
    start = time.perf_counter()
    port = str(free_port())
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in DEFAULTS]
    flags += [f"--processes={args.processes}", f"--seed={args.seed}", f"--out={args.out}"]
    if args.no_compile_cache:
        flags.append("--no-compile-cache")
    elif args.compile_cache:
        flags.append(f"--compile-cache={args.compile_cache}")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *flags, f"--process-id={i}", f"--port={port}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(args.processes)
    ]
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import numpy as np

        import metaplastic as mp

        data, student = problem(args)
        single = fit(args, student, data, mp.losses.ActivityMSE(), progress=not args.no_progress)
        outs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            sys.exit(f"process {i} failed (exit status {p.returncode}):\n{err[-4000:]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    reference = np.asarray(single.model.rule.coefficients).ravel()
    diffs = [np.max(np.abs(np.asarray(r["coefficients"]) - reference)) for r in results]
    summary = {
        "processes": args.processes,
        "devices": results[0]["devices"],
        "run": results[0]["run"],
        "steps": args.steps,
        "trajectories": args.trajectories,
        "dtype": str(single.model.rule.coefficients.dtype),
        "final_loss": results[0]["final_loss"],
        "final_loss_single_process": float(single.history.loss[-1]),
        "n_traces": results[0]["n_traces"],
        "max_abs_diff_vs_single_process": float(max(diffs)),
        "seconds": time.perf_counter() - start,
    }
    mp.runs.Run(Path(results[0]["run"]), {}).write_json("comparison.json", summary)
    _cli.print_json(summary)


def main(argv=None):
    args = parse_args(argv)
    _cli.compile_cache(args)
    if args.process_id is None:
        launch(args)
    else:
        worker(args)


if __name__ == "__main__":
    main()
