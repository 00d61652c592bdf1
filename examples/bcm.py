"""Recover BCM's sliding threshold from recorded activity.

A feed-forward plastic layer (10 inputs → 5 sigmoid units) learns by the
Bienenstock–Cooper–Munro rule

    Δw = η θ₁ x y (y − y_M),    y_M ← y_M + (y² − y_M) / τ,

with `θ₁ = 1`, `τ = 10` steps and `η = 0.5`, each unit's threshold `y_M` starting at zero. Its
activity is recorded with Gaussian noise (std `--noise`) on 16 trajectories of 100 steps of
Gaussian inputs per dataset. The BCM family (`θ₁` and `τ`, fitted as `log(τ − 1)`) is fitted
by Levenberg–Marquardt from a wrong start (`θ₁ = 0.3`, `τ = 3`), all `--datasets` datasets
vmapped in one fit; `τ` is compared with the truth, with its 95 % Laplace interval, and the
weights are scored on 8 held-out trajectories (R²).

Part 2, the same rule on the recurrent synapses of a network, `y_t = σ(W_in x_t + W_rec
y_{t−1})` (5 inputs, 10 sigmoid units, `η = 0.2`, `W_rec` clipped to ±3, the presynaptic
factor of a recurrent synapse the previous rate), recorded from all units with Gaussian
noise (std `--noise`), 16 trajectories of 60 steps (`mp.generate_recordings`), fitted with
`mp.losses.RecordingLoss()` from the same wrong start and scored on 8 held-out trajectories
(R² of the recurrent weights, `mp.metrics.compare_networks`).

    python examples/bcm.py            # 20 datasets
    python examples/bcm.py --quick    # 4 datasets, shorter trajectories
"""

import time

import _cli


TRUE_TAU = 10.0
TRUE_AMPLITUDE = 1.0
TARGETS = {"tau_relative_error": 0.10, "r2_weights": 0.95}


def parse_args(argv=None):
    p = _cli.parser(__doc__, progress=True, quick="4 datasets, 60 steps (about 30 s)")
    p.add_argument("--datasets", type=_cli.positive_int, default=None, help="datasets (20)")
    p.add_argument(
        "--noise", type=_cli.non_negative_float, default=0.02, help="std of the recording noise"
    )
    p.add_argument("--steps", type=_cli.positive_int, default=30, help="solver steps")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    datasets = args.datasets or (4 if args.quick else 20)
    length = 60 if args.quick else 100
    n_in, n_out, n_train, n_test = 10, 5, 16, 8
    eta = 0.5
    truth = mp.nn.PlasticDense(
        mp.rules.BCMRule(TRUE_AMPLITUDE, TRUE_TAU), eta=eta, activation="sigmoid"
    )
    key = jr.key(args.seed)
    kx, kw, kd, kt, ktw = jr.split(key, 5)
    n = datasets * n_train
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n, std=1.0, key=kx)
    w0 = 0.5 * jr.normal(kw, (n, n_out, n_in)) / np.sqrt(n_in)
    readout = mp.nn.ActivityReadout(1.0, args.noise)
    t0 = time.perf_counter()
    data, _ = mp.generate_activity(truth, x, w0, readout=readout, key=kd)
    # One member per dataset: split the trajectories into (datasets, n_train).
    data = mp.behaviour.stack_members(data, datasets)
    t_gen = time.perf_counter() - t0

    start_rule = mp.rules.BCMRule(0.3, 3.0)
    members = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (datasets,) + a.shape) if eqx.is_inexact_array(a) else a,
        start_rule,
    )
    student = mp.nn.PlasticDense(members, eta=eta, activation="sigmoid")
    loss = mp.losses.ActivityMSE()
    result = mp.fit(
        student,
        data,
        loss,
        solver=mp.LevenbergMarquardt(),
        steps=args.steps,
        ensemble=True,
        progress=not args.no_progress,
    )
    fitted = result.model
    post = mp.laplace(fitted, data, loss, ensemble=True)
    ((_, (tau, low, high)),) = post.natural_intervals(0.95).items()
    tau, low, high = (np.asarray(a) for a in (tau, low, high))
    amplitude = np.asarray(fitted.rule.coefficient)

    # Held-out trajectories: new inputs and initial weights, the same for every member.
    x_test = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_test, std=1.0, key=kt)
    w_test = 0.5 * jr.normal(ktw, (n_test, n_out, n_in)) / np.sqrt(n_in)
    r2 = []
    for i in range(datasets):
        rule = jax.tree.map(lambda a, i=i: a[i] if eqx.is_array(a) else a, fitted.rule)
        layer = mp.nn.PlasticDense(rule, eta=eta, activation="sigmoid")
        r2.append(np.median(mp.metrics.compare_layers(truth, layer, w_test, x_test)["r2_weights"]))
    r2 = np.asarray(r2)
    relative = np.abs(tau - TRUE_TAU) / TRUE_TAU
    covered = (low <= TRUE_TAU) & (TRUE_TAU <= high)
    summary = {
        "tau": {"true": TRUE_TAU, "estimate": float(np.median(tau))},
        "r2_weights": float(np.median(r2)),
        "tau_estimates": {
            "median_relative_error": float(np.median(relative)),
            "max_relative_error": float(np.max(relative)),
            "fraction_within_10_percent": float(np.mean(relative <= 0.10)),
            "interval_95_median": [float(np.median(low)), float(np.median(high))],
            "coverage": float(np.mean(covered)),
        },
        "amplitude": {"true": TRUE_AMPLITUDE, "estimate": float(np.median(amplitude))},
        "r2_weights_min": float(np.min(r2)),
        "datasets": datasets,
        "trajectories": {"train": n_train, "test": n_test, "length": length},
        "noise": args.noise,
        "targets": TARGETS,
        "seconds_generate": t_gen,
        "seed": args.seed,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"τ median {summary['tau']['estimate']:.3f} (true {TRUE_TAU}), "
        f"R² weights {summary['r2_weights']:.4f}",
        flush=True,
    )

    # ------------------------------------------------------------ part 2: recurrent synapses
    t1 = time.perf_counter()
    n_in, n, length = 5, 10, 60
    n_train = 8 if args.quick else 16
    network = mp.nn.PlasticRecurrent(
        mp.rules.BCMRule(TRUE_AMPLITUDE, TRUE_TAU),
        n_in,
        n,
        eta=0.2,
        activation="sigmoid",
        weight_bound=3.0,
    )
    rec_truth = mp.nn.Model(network, mp.nn.GaussianHead(n, noise_std=args.noise))
    kx, kd, kt, ktd = jr.split(jr.fold_in(key, 1), 4)
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_train, std=1.0, key=kx)
    x_test = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=8, std=1.0, key=kt)
    rec_data, _ = mp.generate_recordings(rec_truth, x, state_scale=1.0, key=kd)
    held, _ = mp.generate_recordings(rec_truth, x_test, state_scale=1.0, key=ktd)
    rec_student = eqx.tree_at(lambda m: m.network.rule, rec_truth, start_rule)
    rec_loss = mp.losses.RecordingLoss()
    rec_fit = mp.fit(
        rec_student, rec_data, rec_loss, steps=args.steps, progress=not args.no_progress
    ).model
    rec_post = mp.laplace(rec_fit, rec_data, rec_loss)
    ((_, (rec_tau, rec_low, rec_high)),) = rec_post.natural_intervals(0.95).items()
    scores = mp.metrics.compare_networks(network, rec_fit.network, held)
    summary["recurrent"] = {
        "tau": {"true": TRUE_TAU, "estimate": float(rec_tau)},
        "tau_interval_95": [float(rec_low), float(rec_high)],
        "amplitude": float(rec_fit.network.rule.coefficient),
        "r2_recurrent_weights": float(np.median(scores["r2_states"][".recurrent_weights"])),
        "r2_thresholds": float(np.median(scores["r2_states"][".rule_state"])),
        "r2_activity": float(np.median(scores["r2_outputs"])),
        "trajectories": {"train": n_train, "test": 8, "length": length},
        "seconds": time.perf_counter() - t1,
    }
    print(
        f"recurrent: τ {float(rec_tau):.3f}, R² recurrent weights "
        f"{summary['recurrent']['r2_recurrent_weights']:.5f}",
        flush=True,
    )
    summary["seconds"] = time.perf_counter() - start
    return _cli.finish(_cli.open_run(args, "bcm"), summary)


if __name__ == "__main__":
    main()
