"""Recover Oja's rule, Δw = x·y − y²·w, from simulated population activity.

The paper's first experiment: a 100 → 1000 sigmoid layer whose weights follow Oja's rule is
driven by Gaussian inputs; only its activity is recorded. A 27-coefficient Taylor rule over
(x, y, w) — or an MLP rule — is fitted through whole trajectories so that the simulated
activity matches the recording, then scored on held-out trajectories.

    python examples/recover_oja.py            # the paper's setting
    python examples/recover_oja.py --quick    # a smaller network, under 30 s
    python examples/recover_oja.py --rule mlp --noise 0.1 --recorded-fraction 0.5

The Taylor rule is fitted by Levenberg–Marquardt; the MLP rule (51 parameters) by L-BFGS on a
fixed batch of trajectories, its gradient by reverse mode through the checkpointed scan (see
examples/RESULTS.md for the measurements behind this choice).
"""

import time

import _cli


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a smaller network (20 → 50) that runs in seconds")
    p.add_argument("--rule", choices=("taylor", "mlp"), default="taylor", help="rule family to fit")
    p.add_argument(
        "--noise", type=_cli.non_negative_float, default=0.0, help="std of the measurement noise"
    )
    p.add_argument(
        "--recorded-fraction", type=_cli.fraction, default=1.0, help="fraction of neurons recorded"
    )
    p.add_argument(
        "--steps",
        type=_cli.positive_int,
        default=None,
        help="solver steps (default 30 Taylor, 40 MLP)",
    )
    p.add_argument("--n-in", type=_cli.positive_int, default=None)
    p.add_argument("--n-out", type=_cli.positive_int, default=None)
    p.add_argument("--length", type=_cli.positive_int, default=50, help="time steps per trajectory")
    p.add_argument("--n-train", type=_cli.positive_int, default=50, help="training trajectories")
    p.add_argument("--n-test", type=_cli.positive_int, default=10, help="held-out trajectories")
    p.add_argument(
        "--batch-size",
        type=_cli.positive_int,
        default=5,
        help="trajectories per Gauss–Newton or Adam step; L-BFGS fits this many as one fixed batch",
    )
    p.add_argument(
        "--float32", action="store_true", help="fit in float32 (default float64: see README)"
    )
    p.add_argument(
        "--solver",
        choices=("lm", "adam", "lbfgs"),
        default=None,
        help="solver (default: lm for the Taylor rule, lbfgs for the MLP rule)",
    )
    p.add_argument(
        "--learning-rate",
        type=_cli.positive_float,
        default=1e-2,
        help="Adam's initial learning rate (MLP rule)",
    )
    p.add_argument(
        "--linear-solver",
        choices=("auto", "qr", "normal"),
        default="auto",
        help="how the Levenberg-Marquardt step is solved (default: qr in float32, normal "
        "equations in float64; see mp.LevenbergMarquardt)",
    )
    p.add_argument(
        "--min-damping",
        type=_cli.non_negative_float,
        default=None,
        help="smallest Levenberg-Marquardt damping (default: eps^2 of the dtype)",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    if not args.float32:
        # Monomials such as x*y and x*y^2 differ by terms of order (y - 0.5)^2 ~ 1e-4 here;
        # float64 resolves them to 1e-11, float32 (QR steps) to about 2e-3: see README.
        jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    n_in = args.n_in or (20 if args.quick else 100)
    n_out = args.n_out or (50 if args.quick else 1000)
    iterations = args.steps or (30 if args.rule == "taylor" else 40)
    key = jr.key(args.seed)
    k_x, k_w, k_obs, k_init, k_test_x, k_test_w = jr.split(key, 6)

    truth = mp.rules.oja(("x", "y", "w"))
    teacher = mp.nn.PlasticDense(truth, eta=1.0, activation="sigmoid")
    inputs = mp.tasks.gaussian_stimuli(
        n_in, args.length, n_trajectories=args.n_train, std=0.1, key=k_x
    )
    w0 = 0.01 * jr.normal(k_w, (args.n_train, n_out, n_in))
    readout = mp.nn.ActivityReadout(recorded_fraction=args.recorded_fraction, noise_std=args.noise)
    data, _ = mp.generate_activity(teacher, inputs, w0, readout=readout, key=k_obs)

    if args.rule == "taylor":
        rule = mp.TaylorRule.random(("x", "y", "w"), scale=1e-4, key=k_init)
    else:
        rule = mp.MLPRule(("x", "y", "w"), key=k_init)
    student = mp.nn.PlasticDense(rule, eta=1.0, activation="sigmoid")

    curve = []  # time-to-recovery: (seconds since start, coefficient error)
    previous = [None]

    def record(it, loss, model):
        entry = {"iteration": it, "seconds": time.perf_counter() - start, "loss": loss}
        if args.rule == "taylor":
            err = mp.metrics.coefficient_error(model.rule, truth)
            entry.update(max_abs_error=err["max_abs"])
        curve.append(entry)
        # Stop once the parameters no longer move: further iterations cannot change the result.
        flat = np.concatenate(
            [np.ravel(a) for a in jax.tree.leaves(eqx.filter(model.rule, eqx.is_inexact_array))]
        )
        moved = np.inf if previous[0] is None else float(np.max(np.abs(flat - previous[0])))
        previous[0] = flat
        return moved < 1e-10

    batch = min(args.batch_size, args.n_train)
    solver_name = args.solver or ("lm" if args.rule == "taylor" else "lbfgs")
    fit_data, batch_size, differentiation = data, batch, None
    if solver_name == "lm":
        # Damped Gauss-Newton, the Jacobian taken one trajectory at a time.
        solver = mp.LevenbergMarquardt(
            chunks=batch,
            linear_solver=None if args.linear_solver == "auto" else args.linear_solver,
            min_damping=args.min_damping,
        )
    else:
        import optax

        # A gradient by reverse mode through the scan, each step's body recomputed in the
        # backward pass: only one weight matrix per step is stored (forward mode would need
        # one tangent per MLP parameter).
        differentiation = mp.ReverseMode(checkpoint=True)
        if solver_name == "adam":
            schedule = optax.cosine_decay_schedule(args.learning_rate, iterations, alpha=0.05)
            solver = mp.Optax(optax.adam(schedule))
        else:
            # L-BFGS wants the same objective at every step: it fits the first `batch`
            # training trajectories as one fixed batch (a fresh random batch each step
            # breaks its curvature pairs). The backtracking line search needs only loss
            # values, i.e. forward passes.
            linesearch = optax.scale_by_backtracking_linesearch(max_backtracking_steps=15)
            solver = mp.Optax(optax.lbfgs(linesearch=linesearch))
            fit_data = jax.tree.map(lambda a: a[:batch] if eqx.is_array(a) else a, data)
            batch_size = None
    result = mp.fit(
        student,
        fit_data,
        mp.losses.ActivityMSE(),
        solver=solver,
        differentiation=differentiation,
        steps=iterations,
        batch_size=batch_size,
        progress=not args.no_progress,
        callback=record,
        key=k_init,
    )
    fitted = result.model

    held_inputs = mp.tasks.gaussian_stimuli(
        n_in, args.length, n_trajectories=args.n_test, std=0.1, key=k_test_x
    )
    held_w0 = 0.01 * jr.normal(k_test_w, (args.n_test, n_out, n_in))
    scores = mp.metrics.compare_layers(teacher, fitted, held_w0, held_inputs)
    summary = {
        "rule_family": args.rule,
        "solver": solver_name,
        "n_in": n_in,
        "n_out": n_out,
        "noise": args.noise,
        "recorded_fraction": args.recorded_fraction,
        "seed": args.seed,
        "dtype": str(jnp.zeros(()).dtype),
        "iterations": len(result.history.loss),
        "final_loss": float(result.history.loss[-1]),
        "r2_weights": float(np.median(scores["r2_weights"])),
        "r2_activity": float(np.median(scores["r2_activity"])),
    }
    if args.rule == "taylor":
        err = mp.metrics.coefficient_error(fitted.rule, truth)
        coefficients = fitted.rule.to_dict()
        others = max(abs(v) for t, v in coefficients.items() if t not in ("x*y", "y^2*w"))
        summary.update(
            rule=fitted.rule.to_expression(tol=1e-3),
            coefficients=coefficients,
            coefficient_error=err,
            targets_met=bool(
                abs(coefficients["x*y"] - 1) <= 0.05
                and abs(coefficients["y^2*w"] + 1) <= 0.05
                and others < 0.02
                and summary["r2_weights"] >= 0.99
            ),
        )
        print("recovered rule:", fitted.rule.to_expression(tol=1e-3))
        print("top terms:", ", ".join(f"{t}: {v:+.4f}" for t, v in fitted.rule.top_terms(5)))
        first = next((c["seconds"] for c in curve if c["max_abs_error"] < 0.02), None)
        summary["seconds_to_recovery"] = first
    else:
        summary.update(rule="mlp", coefficients={})
    summary["time_to_recovery"] = [
        {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in c.items()} for c in curve
    ]
    summary["seconds"] = time.perf_counter() - start

    # A run folder of its own: config.json, metrics.csv (loss and parameters per
    # iteration), summary.json and the figures.
    with mp.runs.create_run(args.out, name=f"recover_oja_{args.rule}", config=vars(args)) as run:
        run.log_history(result.history)
        try:
            _figures(run, args, result, truth, curve)
        except ImportError:
            pass
        summary["run"] = str(run.path)
        run.finish(summary)
    _cli.print_json(summary)
    return summary


def _figures(run, args, result, truth, curve):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.rule != "taylor":
        return
    import itertools
    from functools import partial

    import numpy as np

    from metaplastic.rules import format_monomial

    mp_format_monomial = partial(format_monomial, factors=("x", "y", "w"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    hist = np.asarray(result.history.params.rule.coefficients)
    flat = hist.reshape(hist.shape[0], -1)
    # Row-major flattening of the (x, y, w) exponent grid, labelled like the rule prints them.
    labels = [mp_format_monomial(exps) for exps in itertools.product(range(3), repeat=3)]
    for j, label in enumerate(labels):
        highlight = label in ("x*y", "y^2*w")
        axes[0].plot(
            flat[:, j],
            lw=2 if highlight else 0.8,
            alpha=1 if highlight else 0.5,
            label=label if highlight else None,
        )
    axes[0].axhline(1, ls=":", c="k")
    axes[0].axhline(-1, ls=":", c="k")
    axes[0].set(xlabel="iteration", ylabel="coefficient", title="Taylor coefficients while fitting")
    axes[0].legend()
    t = [c["seconds"] for c in curve]
    e = [c["max_abs_error"] for c in curve]
    axes[1].semilogy(t, e, marker="o")
    axes[1].axhline(0.02, ls=":", c="k")
    axes[1].set(xlabel="wall time (s)", ylabel="max |θ − θ_Oja|", title="time to recovery")
    fig.tight_layout()
    run.save_figure(fig, "recover_oja_taylor.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
