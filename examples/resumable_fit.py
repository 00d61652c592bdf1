"""Fit Oja's rule with a run record and checkpoints, so that an interrupted fit can resume.

Writes a run folder under --out with config.json, metrics.csv (one row per step: loss and
every coefficient), summary.json, figures (coefficient trajectories, weight trajectories) and
the fit's checkpoint. Kill it at any point and continue with `--resume <run folder>`: the
flags not given again are those recorded in the folder's config.json, and the result is
bitwise the one an uninterrupted run gives (on CPU). A resume whose flags differ from the
recorded ones (but for `--out` and `--no-progress`) stops with an error naming them.

    python examples/resumable_fit.py                      # a new run in out/
    python examples/resumable_fit.py --resume out/oja-... # continue an interrupted one

The last line printed is one JSON object summarising the run.
"""

import sys
import time
from pathlib import Path

import _cli


DEFAULTS = {
    "n_in": 8,
    "n_out": 8,
    "length": 40,
    "trajectories": 12,
    "stimulus_std": 0.5,
    "steps": 600,
    "batch_size": 4,
    "learning_rate": 0.01,
    "clip_norm": 1.0,
    "checkpoint_every": 20,
    "seed": 0,
}


def parse_args(argv=None):
    p = _cli.parser(
        __doc__,
        resume="a run folder to continue, with the configuration it was run with",
        quick="60 steps instead of 600",
    )
    p.set_defaults(seed=DEFAULTS["seed"])
    for name, value in DEFAULTS.items():
        if name != "seed":  # --seed is one of the common flags
            kind = _cli.positive_int if isinstance(value, int) else _cli.positive_float
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = p.parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 60)
    if args.resume is not None:
        args.resume = Path(args.resume)
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    # Imported here, not at the top, so that --help answers without loading JAX.
    import jax
    import jax.random as jr
    import numpy as np
    import optax

    import metaplastic as mp

    config = {name: getattr(args, name) for name in DEFAULTS}
    # With --resume: the same folder, with the same settings (a resume with another flag
    # would mix two fits, so it is refused, naming the flag).
    run = _cli.open_run(args, "oja", config=config)
    c = config
    key_data, key_init, key_fit = jr.split(jr.key(c["seed"]), 3)
    k1, k2, k3 = jr.split(key_data, 3)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    inputs = mp.tasks.gaussian_stimuli(
        c["n_in"], c["length"], n_trajectories=c["trajectories"], std=c["stimulus_std"], key=k1
    )
    w0 = 0.2 * jr.normal(k2, (c["trajectories"], c["n_out"], c["n_in"]))
    data, true_weights = mp.generate_activity(teacher, inputs, w0, key=k3)
    student = mp.nn.PlasticDense(mp.TaylorRule.random(key=key_init, scale=0.01), eta=1.0)
    optimizer = optax.chain(
        optax.clip_by_global_norm(c["clip_norm"]), optax.adam(c["learning_rate"])
    )
    with run:
        result = mp.fit(
            student,
            data,
            mp.losses.ActivityMSE(),
            solver=mp.Optax(optimizer),
            steps=c["steps"],
            batch_size=c["batch_size"],
            key=key_fit,
            progress=not args.no_progress,
            checkpoint_dir=run.path / "checkpoint",
            checkpoint_every=c["checkpoint_every"],
            resume=args.resume is not None,
        )
        run.log_history(result.history)
        run.save_figure(
            mp.plot.coefficient_trajectories(result.history, true_rule=mp.rules.oja(), top=6),
            "coefficients.png",
        )
        fitted = mp.simulate(result.model, w0[0], inputs[0], return_weights=True)
        run.save_figure(
            mp.plot.weight_trajectories(true_weights[0], fitted.weights),
            "weights.png",
        )
        scores = mp.metrics.compare_layers(teacher, result.model, w0, inputs)
        error = mp.metrics.coefficient_error(result.model.rule, mp.rules.oja())
        summary = {
            "run": str(run.path),
            "final_loss": float(result.history.loss[-1]),
            "rule": result.model.rule.to_expression(tol=0.02),
            "r2_weights_median": float(np.median(scores["r2_weights"])),
            "coefficient_rmse": error["rmse"],
            "steps": int(result.history.loss.shape[0]),
            "resumed": args.resume is not None,
            "backend": jax.default_backend(),
            "seconds": time.perf_counter() - start,
        }
        run.finish(summary)
    _cli.print_json(summary)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
