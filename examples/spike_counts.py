"""Recover Oja's rule from spike counts and from calcium fluorescence, and check the Laplace
intervals of a Poisson fit.

A 100 → 200 sigmoid layer whose weights follow Oja's rule (Δw = x·y − y²·w) is driven by
Gaussian inputs, and its activity y is recorded two ways:

- as spike counts per time bin, Poisson with expected count exp(3·y + log 2) (2 to 40 spikes
  per bin), scored by the exact Poisson likelihood;
- as calcium fluorescence, an indicator c_t = 0.8·c_{t-1} + y_t read as F = c + noise
  (noise std 0.05), scored by squared error.

A 27-term Taylor rule is fitted to each recording by Levenberg–Marquardt (Fisher scoring for
the counts) and scored on held-out trajectories by the R² of the weights (and of the weight
changes, which leave out the initial weights both simulations share). Last, the two terms
of Oja's rule are fitted to each of many small simulated count datasets at once (a vmapped
ensemble), and the coverage of their 95 % Laplace intervals is counted.

    python examples/spike_counts.py            # the default sizes
    python examples/spike_counts.py --quick    # a 20 → 50 layer and 20 coverage datasets
"""

import time

import _cli


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a 20 → 50 layer and 20 coverage datasets (about 30 s)")
    p.add_argument("--steps", type=_cli.positive_int, default=20, help="solver steps per fit")
    p.add_argument(
        "--datasets",
        type=_cli.positive_int,
        default=None,
        help="simulated datasets of the coverage check (default 100; 20 with --quick)",
    )
    return p.parse_args(argv)


LEVEL = 0.95


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    n_in, n_out = (20, 50) if args.quick else (100, 200)
    n_train, n_test, length = (4, 4, 30) if args.quick else (8, 8, 50)
    datasets = args.datasets or (20 if args.quick else 100)
    key = jr.key(args.seed)
    k_x, k_test, k_cov = jr.split(key, 3)
    oja = mp.TaylorRule.from_expression("x*y - y^2*w")
    layer = mp.nn.PlasticDense(oja, eta=0.1, activation="sigmoid", in_size=n_in, out_size=n_out)
    heads = {
        "poisson": mp.nn.PoissonHead(n_out, gain=3.0, offset=float(np.log(2.0))),
        "calcium": mp.nn.CalciumHead(n_out, decay=0.8, noise_std=0.05),
    }
    loss = mp.losses.RecordingLoss()
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_train, std=1.0, key=k_x)
    x_test = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_test, std=1.0, key=k_test)
    summary = {"n_in": n_in, "n_out": n_out, "seed": args.seed, "quick": args.quick}
    for i, (name, head) in enumerate(heads.items()):
        t0 = time.perf_counter()
        truth = mp.nn.Model(layer, head)
        k_data, k_held = jr.split(jr.fold_in(key, i))
        data, _ = mp.generate_recordings(truth, x, key=k_data)
        held, _ = mp.generate_recordings(truth, x_test, key=k_held)
        student = eqx.tree_at(lambda m: m.network.rule, truth, mp.TaylorRule.zeros())
        fitted = mp.fit(student, data, loss, steps=args.steps, progress=not args.no_progress).model
        scores = mp.metrics.compare_networks(layer, fitted.network, held)
        rule = fitted.network.rule
        summary[name] = {
            "r2_weights": float(np.median(scores["r2_states"][""])),
            "r2_weight_changes": float(np.median(scores["r2_changes"][""])),
            "rule": rule.to_expression(tol=0.02),
            "x*y": rule.coefficient("x*y"),
            "y^2*w": rule.coefficient("y^2*w"),
            "coefficient_error": mp.metrics.coefficient_error(rule, oja),
            "seconds": time.perf_counter() - t0,
        }
        print(f"{name}: {summary[name]['rule']}")

    # ------------------------------------------------------------------ coverage
    t0 = time.perf_counter()
    small = (10, 20, 4, 30)  # n_in, n_out, trajectories per dataset, steps per trajectory
    c_in, c_out, per, c_len = small
    truth = mp.nn.Model(
        mp.nn.PlasticDense(oja, eta=0.1, activation="sigmoid", in_size=c_in, out_size=c_out),
        mp.nn.PoissonHead(c_out, gain=3.0, offset=float(np.log(2.0))),
    )
    kx, kd = jr.split(k_cov)
    xs = mp.tasks.gaussian_stimuli(c_in, c_len, n_trajectories=datasets * per, std=1.0, key=kx)
    data, _ = mp.generate_recordings(truth, xs, key=kd)
    data = jax.tree.map(lambda a: a.reshape((datasets, per) + a.shape[1:]), data)
    terms = ["x*y", "y^2*w"]
    rule = mp.TaylorRule.zeros().with_trainable(mp.TaylorRule.zeros().mask(terms))
    rule = eqx.tree_at(
        lambda r: r.coefficients, rule, jnp.zeros((datasets,) + rule.coefficients.shape)
    )
    student = eqx.tree_at(lambda m: m.network.rule, truth, rule)
    fitted = mp.fit(
        student, data, loss, steps=args.steps, ensemble=True, progress=not args.no_progress
    ).model
    post = mp.laplace(fitted, data, loss, ensemble=True)
    lo, hi = post.interval(LEVEL)
    coverage = {}
    hits_all = np.ones(datasets, bool)
    for term, true in (("x*y", 1.0), ("y^2*w", -1.0)):
        idx = oja.monomial(term)
        low = np.asarray(lo.network.rule.coefficients)[(slice(None),) + idx]
        high = np.asarray(hi.network.rule.coefficients)[(slice(None),) + idx]
        est = np.asarray(fitted.network.rule.coefficients)[(slice(None),) + idx]
        hits = (low <= true) & (true <= high)
        hits_all &= hits
        k = int(hits.sum())
        coverage[term] = {
            "coverage": k / datasets,
            "clopper_pearson_95": list(_cli.clopper_pearson(k, datasets)),
            "median_estimate": float(np.median(est)),
            "median_half_width": float(np.median(high - est)),
        }
    summary["coverage"] = {
        "level": LEVEL,
        "datasets": datasets,
        "layer": [c_in, c_out],
        "trajectories_per_dataset": per,
        "steps_per_trajectory": c_len,
        **coverage,
        "both_terms": float(hits_all.mean()),
        "seconds": time.perf_counter() - t0,
    }
    print(
        "coverage of 95% intervals over "
        f"{datasets} datasets: " + ", ".join(f"{t} {coverage[t]['coverage']:.2f}" for t in terms)
    )
    summary["seconds"] = time.perf_counter() - start
    return _cli.finish(_cli.open_run(args, "spike_counts"), summary)


if __name__ == "__main__":
    main()
