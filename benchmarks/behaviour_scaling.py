"""Scaling of behavioural rule recovery: fit time and recovery quality against the length of
the trajectories and the size of the plastic layer.

For each configuration, `x*r` generates choices in the operant task (3 equal blocks; the
trials given are the total), `--seeds` seeds each fit the 81-term Taylor rule (L1 1e-3) to
their own `--n-train` trajectories, vmapped, and are scored on `--n-test` held-out ones.
One JSON line per configuration: `compile_s` (JAX's own time tracing, lowering and compiling
the fit's one step program, `run_step`, which the fit then runs `steps` times from the host),
`step_s` (the median wall time of one solver step after the first, all seeds together:
one Levenberg–Marquardt step, or one full-batch Adam step), `fit_s` (the whole fit,
compilation included), `generate_s`, `evaluate_s`, the median over seeds of `r2_weights`,
`r2_activity`, `percent_deviance` and `true_percent_deviance`, and `peak_rss_mb`.

Levenberg–Marquardt (damped Gauss–Newton, the default solver of `recover_rule`) keeps the
sensitivities `∂W/∂θ` of every trial (trials × 81 × hidden × n_in per trajectory); where that
would exceed `--gn-memory-gib` the configuration is fitted with Adam (`--adam-steps`
full-batch steps, lr 3e-3) instead, and its `solver` says so.

    python -m benchmarks.behaviour_scaling                       # both sweeps
    python -m benchmarks.behaviour_scaling --hidden 10 --trials 30,60
    python -m benchmarks.behaviour_scaling --trials 30 --hidden 10 --hidden-trials 30 --seeds 1 --steps 2
    python -m benchmarks.behaviour_scaling --markdown benchmarks/BEHAVIOUR_SCALING_TABLE.md
"""

import argparse
import json
import logging
import statistics
import time


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


class _LogTimes(logging.Handler):
    """Collects the library's fit log records with their timestamps."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append((record.created, record.msg, record.args))


def gn_sensitivity_gib(seeds, n_train, trials, hidden, n_in=2, n_params=81):
    """The memory the Gauss–Newton Jacobian keeps for the trial scan: `∂W/∂θ` per trial."""
    return seeds * n_train * trials * n_params * hidden * n_in * 4 / 2**30


def one_configuration(trials, hidden, args):
    import jax.random as jr
    import optax

    import metaplastic as mp

    from ._harness import FIT_PROGRAMS, CompileTimer, device_facts, machine_facts, peak_rss_mb

    if trials % 3:
        raise SystemExit(f"trials must be a multiple of 3 (3 equal blocks), got {trials}")
    task = mp.behaviour.OperantTask(block_lengths=trials // 3)
    memory = gn_sensitivity_gib(args.seeds, args.n_train, trials, hidden)
    solver = "levenberg_marquardt" if memory <= args.gn_memory_gib else "adam"
    k_data, k_fit = jr.split(jr.key(args.seed))
    data = mp.behaviour.recovery_data(
        mp.rules.reward_modulated(),
        seeds=args.seeds,
        n_train=args.n_train,
        n_test=args.n_test,
        task=task,
        hidden=hidden,
        key=k_data,
    )
    handler = _LogTimes()
    logger = logging.getLogger("metaplastic")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    options = (
        {"solver": mp.LevenbergMarquardt(), "steps": args.steps}
        if solver == "levenberg_marquardt"
        else {"solver": mp.Optax(optax.adam(3e-3)), "steps": args.adam_steps}
    )
    try:
        with CompileTimer(FIT_PROGRAMS) as timer:
            res = mp.behaviour.recover_rule(data=data, rule="taylor", key=k_fit, **options)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    fit_s = res.seconds["fit"]
    compile_s = sum(timer.take().values())
    # `fit` logs each step when it ends; the first one also compiles the step program.
    stamps = [t for t, m, _ in handler.records if m.startswith("fit: step")]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = statistics.median(gaps) if gaps else float("nan")
    med = res.median()
    return {
        "name": "behaviour_scaling",
        "config": {
            "trials": trials,
            "hidden": hidden,
            "n_in": 2,
            "seeds": args.seeds,
            "n_train": args.n_train,
            "n_test": args.n_test,
            "solver": solver,
            "steps": options["steps"],
            "packed_length": int(data.train.choices.shape[-1]),
        },
        "gn_sensitivity_gib": round(memory, 3),
        "compile_s": round(compile_s, 3),
        "step_s": round(step_s, 4),
        "fit_s": round(fit_s, 2),
        "generate_s": round(data.seconds, 2),
        "evaluate_s": round(res.seconds["evaluate"], 2),
        "r2_weights": round(med["r2_weights"], 4),
        "r2_activity": round(med["r2_activity"], 4),
        "percent_deviance": round(med["percent_deviance"], 2),
        "true_percent_deviance": round(med["true_percent_deviance"], 2),
        "r2_weights_per_seed": [round(float(v), 4) for v in res.scores["r2_weights"]],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_avg_1min": machine_facts().get("load_avg_1min"),
        **device_facts(),
    }


def markdown(records):
    head = (
        "| trials | hidden | solver (steps) | packed length | compile s | step s | fit s (incl. compile) "
        "| R² weights | R² activity | % deviance (fit / true) | peak RSS MB | load |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in records:
        c = r["config"]
        # Records written before the fitting layer counted steps say method and iterations.
        solver = c["solver"] if "solver" in c else c["method"]
        steps = c["steps"] if "steps" in c else c["iterations"]
        lines.append(
            f"| {c['trials']} | {c['hidden']} | {solver} ({steps}) | "
            f"{c['packed_length']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['fit_s']:.1f} | "
            f"{r['r2_weights']:.3f} | {r['r2_activity']:.3f} | "
            f"{r['percent_deviance']:.1f} / {r['true_percent_deviance']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['load_avg_1min']} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", type=_ints, default=[30, 60, 120, 240, 480, 960, 1920])
    p.add_argument("--trials-hidden", type=int, default=10, help="hidden size of the T sweep")
    p.add_argument("--hidden", type=_ints, default=[10, 50, 100, 500, 1000])
    p.add_argument("--hidden-trials", type=int, default=240, help="trials of the hidden sweep")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--n-train", type=int, default=18)
    p.add_argument("--n-test", type=int, default=7)
    p.add_argument("--steps", type=int, default=12, help="Levenberg-Marquardt steps")
    p.add_argument(
        "--adam-steps",
        type=int,
        default=150,
        help="full-batch Adam steps where Levenberg-Marquardt would need too much memory",
    )
    p.add_argument("--gn-memory-gib", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    start = time.perf_counter()
    configs = [(t, args.trials_hidden) for t in args.trials]
    configs += [
        (args.hidden_trials, h) for h in args.hidden if (args.hidden_trials, h) not in configs
    ]
    records = []
    for trials, hidden in configs:
        rec = one_configuration(trials, hidden, args)
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(markdown(records))
    summary = {
        "name": "behaviour_scaling_summary",
        "configurations": len(records),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return records


if __name__ == "__main__":
    main()
