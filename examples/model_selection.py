"""Model recovery: does each criterion of `metaplastic.compare_models` pick the rule family that
generated the data?

Simulated flies (two-odour operant task) learn by the covariance rule Δw = x·r, or by the same
with a forgetting term, Δw = x·r − 0.05·w. For every dataset, both families of the fly
analyses — covariance {1, r, x, x*r} and forgetting {1, r, x, x*r, w} — are fitted to the
training flies (on a fresh draw of the odour noise, as for the real flies; with
`--draws K`, by the marginal likelihood over K draws of that noise; with
`--generating-inputs`, training and held-out flies with the inputs that produced their
choices), all datasets in
one vmapped fit per family, and scored by the held-out log-likelihood of held-out flies, AIC,
BIC and the Laplace evidence. The confusion matrix counts, per generating family, how often
each criterion picks each family.

    python examples/model_selection.py            # 100 datasets per generating family
    python examples/model_selection.py --quick    # a few small datasets, under a minute
"""

import time

import _cli


FAMILIES = ("covariance", "forgetting")


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a few small datasets, to check that everything runs")
    p.add_argument(
        "--datasets", type=_cli.positive_int, default=None, help="per generating family (100)"
    )
    p.add_argument("--n-train", type=_cli.positive_int, default=None, help="training flies (18)")
    p.add_argument("--n-test", type=_cli.positive_int, default=None, help="held-out flies (7)")
    p.add_argument("--trials-per-block", type=_cli.positive_int, default=None, help="80")
    p.add_argument(
        "--input-variance",
        type=_cli.positive_float,
        default=0.015,
        help="variance of the odour-encoding noise (default 0.015, as measured in "
        "results/uncertainty.md; the library default is now 0.015²)",
    )
    p.add_argument("--decay", type=_cli.positive_float, default=0.05, help="forgetting rate")
    p.add_argument(
        "--prior-std", type=_cli.positive_float, default=1.0, help="prior std of the evidence"
    )
    p.add_argument("--steps", type=_cli.positive_int, default=None, help="Levenberg–Marquardt (8)")
    p.add_argument(
        "--draws",
        type=_cli.positive_int,
        default=None,
        help="fit and score the marginal likelihood over this many draws of the input noise "
        "(NoisyChoices) instead of one fresh draw",
    )
    p.add_argument(
        "--generating-inputs",
        action="store_true",
        help="fit on the inputs that produced the choices (a well-specified likelihood, "
        "possible only in simulation) instead of a fresh draw of the odour noise",
    )
    args = p.parse_args(argv)
    if args.draws and args.generating_inputs:
        p.error("--draws and --generating-inputs exclude each other")
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    jax.config.update("jax_enable_x64", True)
    import _simulated_flies as sf
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    quick = args.quick
    D = args.datasets or (4 if quick else 100)
    n_train = args.n_train or (4 if quick else 18)
    n_test = args.n_test or (2 if quick else 7)
    tpb = args.trials_per_block or (20 if quick else 80)
    steps = args.steps or (4 if quick else 8)
    truths = {
        "covariance": mp.rules.reward_modulated(),
        "forgetting": mp.rules.with_decay(mp.rules.reward_modulated(), args.decay),
    }
    criteria = ("held_out", "aic", "bic", "evidence")
    confusion = {c: {g: {f: 0 for f in FAMILIES} for g in FAMILIES} for c in criteria}
    examples, seconds = {}, {}
    keys = jr.split(jr.key(args.seed), len(truths))
    for (generating, truth), key in zip(truths.items(), keys):
        t0 = time.perf_counter()
        k_data, k_init = jr.split(key)
        flies = sf.simulate_flies(
            truth,
            datasets=D,
            n_train=n_train,
            n_test=n_test,
            trials_per_block=tpb,
            input_variance=args.input_variance,
            draws=args.draws,
            key=k_data,
        )
        if args.draws:
            train, test = flies.train_marginal, flies.test_marginal
        elif args.generating_inputs:
            train, test = flies.train_generating, flies.test_generating
        else:
            train, test = flies.train, flies.test
        candidates = {
            family: sf.family_students(flies, mp.flies.FAMILY_TERMS[family], D, key=k)
            for family, k in zip(FAMILIES, jr.split(k_init, len(FAMILIES)))
        }
        comparison = mp.compare_models(
            candidates,
            train,
            mp.behaviour.ChoiceBCE(),
            test=test,
            solver=sf.solver(n_train, args.draws or 1),
            steps=steps,
            prior_std=args.prior_std,
            ensemble=True,
            progress=not args.no_progress,
        )
        for c in criteria:
            picks = np.bincount(comparison.best(c), minlength=len(FAMILIES))
            for f, count in zip(FAMILIES, picks):
                confusion[c][generating][f] = int(count)
        # The score differences forgetting − covariance (higher: forgetting preferred).
        diffs = {}
        for c in criteria:
            scores = np.asarray(comparison.scores(c))
            diffs[c] = scores[:, 1] - scores[:, 0]
        examples[generating] = {
            c: {
                "median_difference": float(np.median(diffs[c])),
                "quartiles": [float(q) for q in np.quantile(diffs[c], [0.25, 0.75])],
            }
            for c in criteria
        }
        w = sf.coefficient(comparison.models["forgetting"].rule, "w")
        examples[generating]["fitted_w"] = {
            "median": float(np.median(w)),
            "quartiles": [float(q) for q in np.quantile(w, [0.25, 0.75])],
        }
        seconds[generating] = round(time.perf_counter() - t0, 1)
        print(f"generated by {generating}: {D} datasets in {seconds[generating]} s", flush=True)
    accuracy = {
        c: sum(confusion[c][g][g] for g in FAMILIES) / (len(FAMILIES) * D) for c in criteria
    }
    for c in criteria:
        print(f"{c}: (rows: generating family; columns: picked)")
        for g in FAMILIES:
            print(f"  {g:>10}: " + "  ".join(f"{f} {confusion[c][g][f]:>3}" for f in FAMILIES))
    summary = {
        "confusion": confusion,
        "accuracy": accuracy,
        "score_differences": examples,
        "datasets": D,
        "settings": {
            "n_train": n_train,
            "n_test": n_test,
            "trials": 3 * tpb,
            "decay": args.decay,
            "input_variance": args.input_variance,
            "prior_std": args.prior_std,
            "steps": steps,
            "inputs": (
                f"marginal over {args.draws} draws"
                if args.draws
                else "generating"
                if args.generating_inputs
                else "fresh draw"
            ),
        },
        "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)},
    }
    run = _cli.open_run(args, "model_selection")
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
