"""How sure are the per-fly rules of the real Drosophila? Per-fly 95 % Laplace intervals of
the covariance and forgetting families, their population summary, and the per-fly model
comparison by AIC, BIC and the Laplace evidence.

Every family is fitted to every fly in one vmapped fit (`metaplastic.flies.rule_intervals`):
Levenberg–Marquardt on the likelihood marginal over `--draws` draws of the unobserved odour
encoding noise (variance 0.015², the published model's), no penalty; the Laplace posterior
of each fly's fit gives every free term its interval. By default the 13 flies with
rejections, block 1 only (the only block with rejections in this conversion of the data).

- per fly and term: estimate, std, 95 % interval, whether it excludes 0;
- per term: "the interval excludes 0 in k/n flies" (with signs), the precision-weighted mean
  with its standard error, Cochran's Q test of heterogeneity between flies, the
  random-effects (DerSimonian–Laird) mean;
- per fly: forgetting against covariance by AIC, BIC and log evidence, and the summed log
  evidence.

    python examples/fly_intervals.py                          # block 1, 13 flies
    python examples/fly_intervals.py --trials all --flies all # all trials, all 18 flies
    python examples/fly_intervals.py --quick                  # 3 flies, 2 draws, 6 steps: a check
    python examples/fly_intervals.py --calibrate 100          # coverage on 100 simulated flies

`--calibrate N` replaces the real flies by N simulated ones in the real flies' setting (one
block of 80 trials, reward probabilities 0.2 / 0.8, input variance 0.015², a rule near the
real flies' medians, `--truth`), fitted exactly as the real ones, and reports the coverage
of every term's interval with its Clopper–Pearson 95 % confidence interval.

Writes intervals.csv (`FlyIntervals.to_dataframe()`), population.json, comparison.json and
intervals.png into a run folder under --out, and prints a JSON summary as its last line.
Needs pandas and matplotlib: pip install -e ".[plot]".
"""

import time

import _cli
import numpy as np


FAMILIES = ("covariance", "forgetting", "forgetting_y")
TERMS = ("x*r", "r", "x", "1", "w", "y")


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="3 flies, 2 draws, 6 steps")
    _cli.fly_data_option(p)
    p.add_argument(
        "--families",
        type=_cli.list_of(str, choices=FAMILIES),
        default=("covariance", "forgetting"),
        help="comma-separated small families (default: covariance,forgetting)",
    )
    p.add_argument("--trials", choices=("block1", "all"), default="block1")
    p.add_argument(
        "--flies",
        choices=("with_rejections", "all"),
        default="with_rejections",
        help="the flies with rejections (default) or all of them",
    )
    p.add_argument("--draws", type=_cli.positive_int, default=8, help="noise draws (default 8)")
    p.add_argument(
        "--no-marginal",
        action="store_true",
        help="fit one fresh draw of the input noise as if it were the fly's (needs --draws 1)",
    )
    p.add_argument("--steps", type=_cli.positive_int, default=20, help="solver steps (20)")
    p.add_argument(
        "--input-variance",
        type=_cli.non_negative_float,
        default=None,
        help="variance of the encoding noise (default 0.015², the library's)",
    )
    p.add_argument(
        "--prior-std",
        type=_cli.positive_float,
        default=1.0,
        help="prior std of every free term in the evidence (default 1)",
    )
    p.add_argument(
        "--calibrate",
        type=_cli.positive_int,
        default=None,
        metavar="N",
        help="fit N simulated flies with a known rule instead of the real ones: coverage",
    )
    p.add_argument(
        "--truth",
        default="0.25*x*r - 0.06*r",
        help="the simulated flies' rule over (x, w, r) for --calibrate (default 0.25*x*r - 0.06*r)",
    )
    args = p.parse_args(argv)
    if args.calibrate is None:  # the simulated flies need no data
        _cli.check_fly_data(p, args)
    return args


def simulated_flies(mp, n, truth, input_variance, key):
    """`n` simulated flies in the setting of the real block 1, written as the recordings'
    `.mat` files into a temporary folder and loaded back with `load_drosophila`."""
    import tempfile

    import jax.random as jr

    k_net, k_gen = jr.split(key)
    rule = mp.TaylorRule.from_expression(truth, factors=("x", "w", "r"), order=1)
    teacher = mp.behaviour.MushroomBody(rule, key=k_net)
    task = mp.behaviour.OperantTask(((0.2, 0.8),), 80)
    encoding = mp.behaviour.OdourEncoding(2, variance=input_variance)
    d = mp.behaviour.generate_behaviour(teacher, task, encoding, n, key=k_gen).data
    folder = tempfile.mkdtemp(prefix="fly_intervals_")
    mp.flies.save_drosophila(d, folder)
    return mp.flies.load_drosophila(folder), rule


def coverage(intervals, rule):
    """Per family and term: the fraction of flies whose interval holds the true coefficient,
    its Clopper–Pearson 95 % interval, the mean estimate, the sd of the estimates and the
    mean reported std."""
    out = {}
    for family in intervals.families:
        out[family] = {}
        for term in intervals.terms[family]:
            if term == "1":
                true = float(np.asarray(rule.coefficients).reshape(-1)[0])
            elif all(f.split("^")[0] in rule.factors for f in term.split("*")):
                true = rule.coefficient(term)
            else:  # a factor the simulated rule does not have (y)
                true = 0.0
            est, low, high = intervals.interval(family, term)
            hit = (low <= true) & (true <= high)
            k, n = int(hit.sum()), int(hit.size)
            ci = _cli.clopper_pearson(k, n)
            out[family][term] = {
                "truth": true,
                "coverage": k / n,
                "ci": [round(ci[0], 3), round(ci[1], 3)],
                "flies": n,
                "mean_estimate": float(np.mean(est)),
                "sd_estimate": float(np.std(est, ddof=1)),
                "mean_std": float(
                    np.mean(intervals.std[family][:, intervals.terms[family].index(term)])
                ),
                "excludes_zero": int(intervals.excludes_zero(family, term).sum()),
            }
    return out


def interval_figure(run, intervals, label):
    """One panel per term: every fly's estimate and 95 % interval, one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [t for t in TERMS if any(t in intervals.terms[f] for f in intervals.families)]
    n = len(intervals)
    fig, axes = plt.subplots(1, len(terms), figsize=(2.6 * len(terms), 0.28 * n + 1.6), sharey=True)
    colours = {"covariance": "tab:blue", "forgetting": "tab:red", "forgetting_y": "tab:green"}
    offsets = np.linspace(-0.2, 0.2, len(intervals.families))
    yy = np.arange(n)
    for ax, term in zip(np.atleast_1d(axes), terms):
        ax.axvline(0.0, color="k", lw=0.7)
        counts = []
        for off, family in zip(offsets, intervals.families):
            if term not in intervals.terms[family]:
                continue
            est, low, high = intervals.interval(family, term)
            out = intervals.excludes_zero(family, term)
            c = colours[family]
            ax.errorbar(
                est, yy + off, xerr=[est - low, high - est], fmt="none", ecolor=c, lw=1, alpha=0.8
            )
            ax.plot(est[out], (yy + off)[out], "o", color=c, ms=4)
            ax.plot(est[~out], (yy + off)[~out], "o", mfc="white", mec=c, ms=4)
            counts.append(f"{out.sum()}/{n}")
        ax.set_title(f"{term}   (excludes 0: {', '.join(counts)})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes = np.atleast_1d(axes)
    axes[0].set_yticks(yy, intervals.names, fontsize=7)
    axes[0].invert_yaxis()
    handles = [
        plt.Line2D([], [], color=colours[f], marker="o", label=f) for f in intervals.families
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(
        f"95 % Laplace intervals per fly ({label}); filled: the interval excludes 0", fontsize=9
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    run.save_figure(fig, "intervals.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    _cli.needs_pandas("fly_intervals.py")
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    # As examples/uncertainty.py, whose calibration these intervals rely on.
    jax.config.update("jax_enable_x64", True)
    import jax.random as jr

    import metaplastic as mp

    truth_rule = None
    if args.calibrate:
        variance = 0.015**2 if args.input_variance is None else args.input_variance
        data, truth_rule = simulated_flies(
            mp, args.calibrate, args.truth, variance, jr.fold_in(jr.key(args.seed), 1)
        )
    else:
        data = mp.flies.load_drosophila(args.data)
    if args.flies == "with_rejections":
        data = data.without_accept_only()
    draws, steps = args.draws, args.steps
    if args.quick:
        data = data.select(list(range(min(3, len(data)))))
        draws, steps = (1 if args.no_marginal else 2), 6
    options = dict(
        trials=args.trials,
        draws=draws,
        marginal=not args.no_marginal,
        steps=steps,
        prior_std=args.prior_std,
        key=jr.key(args.seed),
        progress=not args.no_progress,
    )
    if args.input_variance is not None:
        options["input_variance"] = args.input_variance
    intervals = mp.flies.rule_intervals(data, args.families, **options)

    population = {
        family: {t: intervals.population(family, t).as_dict() for t in intervals.terms[family]}
        for family in intervals.families
    }
    with_rejections = ~intervals.accept_only
    if args.flies == "all" and with_rejections.any() and not with_rejections.all():
        sub = intervals.select(with_rejections)
        population["with_rejections_only"] = {
            family: {t: sub.population(family, t).as_dict() for t in sub.terms[family]}
            for family in sub.families
        }
    comparisons = {}
    for b in intervals.families:
        if b != intervals.families[0]:
            c = intervals.compare(intervals.families[0], b)
            c["per_fly"] = {
                name: {
                    "delta_log_evidence": float(c["delta_log_evidence"][i]),
                    "delta_aic": float(c["delta_aic"][i]),
                    "delta_bic": float(c["delta_bic"][i]),
                }
                for i, name in enumerate(intervals.names)
            }
            for k in ("delta_log_evidence", "delta_aic", "delta_bic"):
                c.pop(k)
            comparisons[f"{b}_vs_{intervals.families[0]}"] = c

    run = _cli.open_run(args, "fly_intervals")
    calibration = None
    if truth_rule is not None:
        calibration = coverage(intervals, truth_rule)
        run.write_json("calibration.json", _cli.jsonable(calibration))
        for family, rows in calibration.items():
            print(f"coverage, {family} ({args.truth}):")
            for t, c in rows.items():
                print(
                    f"  {t:>4}: {c['coverage']:.2f} {c['ci']}  estimate {c['mean_estimate']:+.4f}"
                    f" ± {c['sd_estimate']:.4f} (sd)  mean std {c['mean_std']:.4f}  truth "
                    f"{c['truth']:+g}  excludes 0 in {c['excludes_zero']}/{c['flies']}"
                )
    run.write_csv("intervals.csv", intervals.to_dataframe())
    run.write_json("population.json", _cli.jsonable(population))
    run.write_json("comparison.json", _cli.jsonable(comparisons))
    label = f"{'block 1' if args.trials == 'block1' else 'all trials'}, {len(intervals)} flies"
    try:
        interval_figure(run, intervals, label)
    except ImportError:  # matplotlib is an optional extra
        pass

    for family in intervals.families:
        print(f"{family}:")
        for t in intervals.terms[family]:
            s = population[family][t]
            print(
                f"  {t:>4}: excludes 0 in {s['excludes_zero']}/{s['flies']} flies "
                f"(+{s['positive']} / -{s['negative']}); median {s['median']:+.3f}; "
                f"weighted mean {s['mean']:+.3f} ± {s['se']:.3f}; random-effects "
                f"{s['random_mean']:+.3f} ± {s['random_se']:.3f}; Q = {s['q']:.1f} "
                f"(p = {s['p_heterogeneity']:.2g}), tau = {s['tau']:.3f}"
            )
    for name, c in comparisons.items():
        print(
            f"{name}: log evidence favours {c['b']} in {c['flies_for_b_evidence']}/{c['flies']} "
            f"flies (summed Δ = {c['total_delta_log_evidence']:+.1f} nats); BIC in "
            f"{c['flies_for_b_bic']}/{c['flies']} (Σ Δ = {c['total_delta_bic']:+.1f}); AIC in "
            f"{c['flies_for_b_aic']}/{c['flies']} (Σ Δ = {c['total_delta_aic']:+.1f})"
        )
    summary = {
        "trials": args.trials,
        "flies": len(intervals),
        "draws": draws,
        "marginal": not args.no_marginal,
        "steps": steps,
        "input_variance": intervals.input_variance,
        "excludes_zero": {
            family: {
                t: f"{population[family][t]['excludes_zero']}/{population[family][t]['flies']}"
                for t in intervals.terms[family]
            }
            for family in intervals.families
        },
        "median_estimate": {
            family: {t: round(population[family][t]["median"], 4) for t in intervals.terms[family]}
            for family in intervals.families
        },
        "comparison": {
            name: {k: v for k, v in c.items() if k != "per_fly"} for name, c in comparisons.items()
        },
        "max_last_change": {
            family: float(np.max(intervals.last_change[family])) for family in intervals.families
        },
        "seconds": round(time.perf_counter() - start, 1),
        "fit_seconds": round(intervals.seconds, 1),
    }
    if calibration is not None:
        summary["calibration"] = {
            "truth": args.truth,
            "coverage": {
                f: {t: c["coverage"] for t, c in rows.items()} for f, rows in calibration.items()
            },
        }
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
