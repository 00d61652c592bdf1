"""Recover a rule with memory from the choices of simulated flies whose reward arrives late.

The fly's mushroom-body model (2 → 10 tanh plastic layer, fixed readout) learns in the
two-odour operant task (3 blocks of 80 trials, baiting) while the reward signal
`r = R − E[R]` of each choice reaches the synapses two trials later. Its rule is an
eligibility trace, `e ← λ e + g(x)`, `Δw = η r e`, with `λ = 0.7` and `g = x`: the delayed
counterpart of the fly's covariance rule `x·r` (with `g = x·y` the fly hardly learns: its
initial weights are N(0, 0.01²), so `y ≈ 0` and the weights barely move over 240 trials).

Part 1, recovery and coverage: for each of `--datasets` datasets (18 training and 7 held-out
flies each; the likelihood averaged over `--draws` draws of the unobserved input noise), the
trace family (`λ` and the coefficient of
`g = x`) is fitted by Levenberg–Marquardt (all datasets vmapped in one fit), `λ` is compared
with the truth, the weights are scored on the held-out flies (R²), and the 95 % Laplace
interval on `λ` (the logit's interval mapped through the sigmoid) is checked for coverage.

Part 2, model recovery: `--confusion-datasets` datasets from the immediate rule `x·r` and as
many from the trace rule, in the same delayed task; both families (immediate `θ·x·r`, one
parameter; trace, two) are fitted to every dataset by `compare_models` (on one fresh draw
of the input noise, `--confusion-draws`), which picks one by BIC and one by the Laplace
evidence: the confusion matrices.

    python examples/delayed_reward.py            # 50 datasets, 100 per generator
    python examples/delayed_reward.py --quick    # 8 datasets, 10 per generator
"""

import time

import _cli


TRUE_DECAY = 0.7
DELAY = 2
# Part 1's likelihood averages 8 draws of the unobserved input noise: fitted on one fresh
# draw, the amplitude is attenuated (0.973 of the truth) and the intervals on λ cover 0.88.
DRAWS = 8
TARGETS = {"decay_error": 0.05, "r2_weights": 0.90, "coverage": (0.90, 0.99), "accuracy": 0.90}


def parse_args(argv=None):
    p = _cli.parser(__doc__, progress=True, quick="8 datasets, 10 per generator (about 1 min)")
    p.add_argument(
        "--datasets", type=_cli.positive_int, default=None, help="datasets of part 1 (50)"
    )
    p.add_argument(
        "--confusion-datasets",
        type=_cli.positive_int,
        default=None,
        help="datasets per generating rule in part 2 (100)",
    )
    p.add_argument("--n-train", type=_cli.positive_int, default=18, help="training flies")
    p.add_argument("--n-test", type=_cli.positive_int, default=7, help="held-out flies")
    p.add_argument("--steps", type=_cli.positive_int, default=15, help="solver steps")
    p.add_argument(
        "--draws",
        type=_cli.positive_int,
        default=DRAWS,
        help="part 1 fits the likelihood averaged over this many draws of the unobserved "
        f"input noise (default {DRAWS}; 1: one fresh draw, fitted as if it were the noise "
        "behind the choices)",
    )
    p.add_argument(
        "--confusion-draws",
        type=_cli.positive_int,
        default=1,
        help="the same for part 2 (default 1: one fresh draw, enough to tell the families "
        "apart and 8x cheaper)",
    )
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

    bh = mp.behaviour
    datasets = args.datasets or (8 if args.quick else 50)
    n_confusion = args.confusion_datasets or (10 if args.quick else 100)
    progress = not args.no_progress
    k_rec, k_conf = jr.split(jr.key(args.seed))
    loss = bh.ChoiceBCE()

    true_trace = mp.rules.TraceRule(mp.TaylorRule.from_expression("x", ("x",), 1), TRUE_DECAY)
    immediate = mp.TaylorRule.from_expression("x*r", ("x", "r"), 1)

    def stacked(rule, members):
        """`members` copies of a rule's trainable arrays (masks shared)."""
        grow = lambda a: jnp.broadcast_to(a, (members,) + a.shape)
        return jax.tree.map(lambda a: grow(a) if eqx.is_inexact_array(a) else a, rule)

    def trace_student(members):
        inner = mp.TaylorRule(jnp.asarray([0.0, 0.5]), ("x",))
        inner = inner.with_trainable(inner.mask(["x"]))
        return stacked(mp.rules.TraceRule(inner, 0.5), members)

    def immediate_student(members):
        rule = mp.TaylorRule.from_expression("0.5*x*r", ("x", "r"), 1)
        return stacked(rule.with_trainable(rule.mask(["x*r"])), members)

    def unmasked(model):
        """The same model with the students' masks dropped (they only say what trains), so
        that every array of the rule carries the member axis for scoring."""
        is_taylor = lambda n: isinstance(n, mp.TaylorRule)
        return jax.tree.map(
            lambda n: eqx.tree_at(lambda r: r.trainable, n, None) if is_taylor(n) else n,
            model,
            is_leaf=is_taylor,
        )

    def generate(rule, n, key, draws):
        return bh.recovery_data(
            rule,
            seeds=n,
            n_train=args.n_train,
            n_test=args.n_test,
            reward_delay=DELAY,
            draws=None if draws == 1 else draws,
            key=key,
        )

    # ------------------------------------------------------------ part 1: recovery, coverage
    t0 = time.perf_counter()
    data = generate(true_trace, datasets, k_rec, args.draws)
    t_gen = time.perf_counter() - t0
    model = data.teacher.with_rule(trace_student(datasets))
    result = mp.fit(
        model,
        data.train,
        loss,
        solver=mp.LevenbergMarquardt(),
        steps=args.steps,
        ensemble=True,
        progress=progress,
    )
    fitted = result.model
    post = mp.laplace(fitted, data.train, loss, ensemble=True)
    ((_, (decay, low, high)),) = post.natural_intervals(0.95).items()
    decay, low, high = (np.asarray(a) for a in (decay, low, high))
    covered = (low <= TRUE_DECAY) & (TRUE_DECAY <= high)
    scores = bh.compare_behaviour(data.teacher, unmasked(fitted), data.test, ensemble=True)
    r2 = np.median(scores["r2_weights"], axis=1)  # per dataset: median over held-out flies
    theta = np.asarray(fitted.rule.inner.coefficients[:, 1])
    k = int(covered.sum())
    recovery = {
        "datasets": datasets,
        "decay_estimates": {
            "median": float(np.median(decay)),
            "mean": float(np.mean(decay)),
            "median_abs_error": float(np.median(np.abs(decay - TRUE_DECAY))),
            "fraction_within_0.05": float(np.mean(np.abs(decay - TRUE_DECAY) <= 0.05)),
            "max_abs_error": float(np.max(np.abs(decay - TRUE_DECAY))),
        },
        "coefficient_x": {"true": 1.0, "median": float(np.median(theta))},
        "interval_width_median": float(np.median(high - low)),
        "coverage": k / datasets,
        "coverage_ci95": _cli.clopper_pearson(k, datasets),
        "r2_weights_median": float(np.median(r2)),
        "r2_weights_min": float(np.min(r2)),
        "seconds": {"generate": t_gen, "fit_laplace_score": time.perf_counter() - t0 - t_gen},
    }
    print(
        f"part 1: λ median {recovery['decay_estimates']['median']:.3f} (true {TRUE_DECAY}), "
        f"coverage {k}/{datasets}, R² weights {recovery['r2_weights_median']:.3f}",
        flush=True,
    )

    # ------------------------------------------------------------ part 2: model recovery
    t1 = time.perf_counter()
    families = ("immediate", "trace")
    confusion = {c: np.zeros((2, 2), int) for c in ("bic", "evidence")}
    for row, (rule, key) in enumerate(zip((immediate, true_trace), jr.split(k_conf))):
        d = generate(rule, n_confusion, key, args.confusion_draws)
        candidates = {
            "immediate": d.teacher.with_rule(immediate_student(n_confusion)),
            "trace": d.teacher.with_rule(trace_student(n_confusion)),
        }
        comparison = mp.compare_models(
            candidates,
            d.train,
            loss,
            solver=mp.LevenbergMarquardt(),
            steps=args.steps,
            ensemble=True,
            progress=progress,
        )
        for criterion in confusion:
            picks = np.asarray(comparison.best(criterion))
            for col in range(2):
                confusion[criterion][row, col] = int(np.sum(picks == col))
        print(
            f"part 2: data from {families[row]}: picked (immediate, trace) "
            f"{confusion['bic'][row].tolist()} by BIC, {confusion['evidence'][row].tolist()} "
            "by the evidence",
            flush=True,
        )
    matrices = {}
    for criterion, m in confusion.items():
        matrices[criterion] = {
            "accuracy": float(np.trace(m) / m.sum()),
            "per_generator": {families[i]: float(m[i, i] / m[i].sum()) for i in range(2)},
            "matrix": {
                f"from_{families[i]}": {f"picked_{families[j]}": int(m[i, j]) for j in range(2)}
                for i in range(2)
            },
        }
    summary = {
        "trace_decay": {"true": TRUE_DECAY, "estimate": recovery["decay_estimates"]["median"]},
        "r2_weights": recovery["r2_weights_median"],
        "coverage": recovery["coverage"],
        "confusion": matrices,
        "recovery": recovery,
        "confusion_datasets_per_generator": n_confusion,
        "confusion_seconds": time.perf_counter() - t1,
        "targets": TARGETS,
        "reward_delay": DELAY,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "steps": args.steps,
        "draws": args.draws,
        "confusion_draws": args.confusion_draws,
        "seed": args.seed,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    return _cli.finish(_cli.open_run(args, "delayed_reward"), summary)


if __name__ == "__main__":
    main()
