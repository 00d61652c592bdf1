"""How well calibrated are the Laplace intervals of a fitted rule? Measured on simulated data,
where the true rule is known.

For each setting, many datasets are simulated from one ground truth, every dataset is fitted
(all datasets in one vmapped `metaplastic.fit`), `metaplastic.laplace` gives each fit a 95 %
interval per term, and the coverage — the fraction of datasets whose interval holds the true
coefficient — is reported per term with its Clopper–Pearson 95 % confidence interval.

- `oja_small`, `oja_full`: Oja's rule (x*y − y²*w) on a 10 → 20 sigmoid layer recorded with
  measurement noise, fitted with the two true terms only and with all 27 terms over (x, y, w).
- `fly_covariance`, `fly_forgetting`: the reward rule x*r on the simulated fly (two-odour
  operant task), fitted with the family {1, r, x, x*r} and the same with w, on a fresh draw
  of the odour encoding's noise (the protocol of the real flies);
  `..._generating_inputs`: the same fits given the inputs that produced the choices;
  `..._marginal` (`--parts marginal --draws K`): the marginal likelihood over K draws of the
  input noise (`metaplastic.behaviour.NoisyChoices`).
- `bootstrap_*`: the parametric bootstrap (`metaplastic.bootstrap`, basic and percentile
  intervals) on the first `--bootstrap-datasets` datasets of `fly_covariance` and
  `oja_full`, where Laplace is poorly calibrated.

    python examples/uncertainty.py            # 100 datasets per setting
    python examples/uncertainty.py --quick    # a few small datasets, under a minute
    python examples/uncertainty.py --parts marginal --draws 8
"""

import time

import _cli
import numpy as np


PARTS = ("oja", "fly", "marginal", "bootstrap")


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a few small datasets, to check that everything runs")
    p.add_argument("--datasets", type=_cli.positive_int, default=None, help="default 100")
    p.add_argument(
        "--bootstrap-datasets",
        type=int,
        default=None,
        help="datasets bootstrapped per setting (default 10; 0: no bootstrap)",
    )
    p.add_argument(
        "--replicates", type=_cli.positive_int, default=None, help="bootstrap replicates (20)"
    )
    p.add_argument("--n-train", type=_cli.positive_int, default=None, help="flies per dataset")
    p.add_argument("--trials-per-block", type=_cli.positive_int, default=None)
    p.add_argument(
        "--input-variance",
        type=_cli.positive_float,
        default=0.015,
        help="variance of the odour-encoding noise (default 0.015, as measured in "
        "results/uncertainty.md; the library default is now 0.015²)",
    )
    p.add_argument("--noise", type=_cli.positive_float, default=0.01, help="Oja recording noise")
    p.add_argument(
        "--steps", type=_cli.positive_int, default=None, help="Levenberg–Marquardt steps"
    )
    p.add_argument(
        "--parts",
        type=_cli.list_of(str, choices=PARTS),
        default=("oja", "fly", "bootstrap"),
        help="what to measure, from oja, fly, marginal, bootstrap (default oja,fly,bootstrap)",
    )
    p.add_argument(
        "--draws",
        type=_cli.positive_int,
        default=8,
        help="noise draws of the marginal likelihood (part 'marginal'; default 8)",
    )
    return p.parse_args(argv)


LEVEL = 0.95


def coverage_table(names, truth, estimate, low, high, free=None):
    """Per term: the truth, the coverage of `[low, high]` (arrays `(datasets, terms)`) with
    its confidence interval, and the mean and spread of the estimates against the mean
    reported half-width."""
    rows = {}
    for i, name in enumerate(names):
        if free is not None and not free[i]:
            continue
        hit = (low[:, i] <= truth[i]) & (truth[i] <= high[:, i])
        k, n = int(hit.sum()), len(hit)
        ci = _cli.clopper_pearson(k, n)
        rows[name] = {
            "truth": float(truth[i]),
            "coverage": k / n,
            "ci": [round(ci[0], 4), round(ci[1], 4)],
            "datasets": n,
            "mean_estimate": float(np.mean(estimate[:, i])),
            "sd_estimate": float(np.std(estimate[:, i], ddof=1)),
            "mean_half_width": float(np.mean(high[:, i] - low[:, i]) / 2),
            "calibrated": bool(ci[0] <= LEVEL <= ci[1] or 0.90 <= k / n <= 0.99),
        }
    return rows


def coverage_figure(run, results):
    """One panel per setting: the coverage of each term with its confidence interval, the
    nominal level and the 0.90–0.99 target band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in results if not s.endswith("_summary")]
    fig, axes = plt.subplots(1, len(settings), figsize=(2.2 * len(settings), 6), sharex=True)
    for ax, setting in zip(np.atleast_1d(axes), settings):
        rows = results[setting]
        terms = list(rows)
        cov = np.array([rows[t]["coverage"] for t in terms])
        ci = np.array([rows[t]["ci"] for t in terms])
        yy = np.arange(len(terms))
        ax.axvspan(0.90, 0.99, color="0.9")
        ax.axvline(LEVEL, color="k", lw=0.8)
        ax.errorbar(cov, yy, xerr=[cov - ci[:, 0], ci[:, 1] - cov], fmt="o", ms=3, lw=1)
        ax.set_yticks(yy, terms, fontsize=6)
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(setting.replace("_", " "), fontsize=7)
        ax.set_xlabel("coverage", fontsize=7)
    fig.tight_layout()
    run.save_figure(fig, "coverage.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    # Oja's monomials are nearly collinear (y stays near 0.5): float64, as in the README.
    jax.config.update("jax_enable_x64", True)
    import _simulated_flies as sf
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import metaplastic as mp

    quick = args.quick
    D = args.datasets or (6 if quick else 100)
    B = args.bootstrap_datasets if args.bootstrap_datasets is not None else (2 if quick else 10)
    B = min(B, D) if "bootstrap" in args.parts else 0
    parts = set(args.parts)
    draws = args.draws
    R = args.replicates or (3 if quick else 20)
    n_train = args.n_train or (4 if quick else 18)
    tpb = args.trials_per_block or (20 if quick else 80)
    steps = args.steps or (4 if quick else 8)
    key = jr.key(args.seed)
    k_oja, k_fly, k_boot = jr.split(key, 3)
    results, seconds = {}, {}

    def flat(tree):
        return np.asarray(tree).reshape(tree.shape[0], -1)

    # ------------------------------------------------------------------ Oja, activity
    loss = mp.losses.ActivityMSE()
    truth = np.asarray(mp.rules.oja(("x", "y", "w")).coefficients).reshape(-1)
    n_in, n_out, length, per = (5, 8, 15, 2) if quick else (10, 20, 30, 4)
    if "oja" in parts:
        t0 = time.perf_counter()
        truth_rule = mp.rules.oja(("x", "y", "w"))
        teacher = mp.nn.PlasticDense(truth_rule, eta=1.0, activation="sigmoid")
        kx, kw, kn, ki = jr.split(k_oja, 4)
        x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=D * per, std=0.1, key=kx)
        w0 = 0.01 * jr.normal(kw, (D * per, n_out, n_in))
        readout = mp.nn.ActivityReadout(noise_std=args.noise)
        oja, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=kn)
        oja = jax.tree.map(
            lambda a: a.reshape((D, per) + a.shape[1:]) if eqx.is_array(a) else a, oja
        )
        oja_fits = {}
        for name, terms in (("oja_small", ["x*y", "y^2*w"]), ("oja_full", None)):
            rule = mp.TaylorRule.zeros(("x", "y", "w"))
            if terms is not None:
                rule = rule.with_trainable(rule.mask(terms))
            c = 1e-4 * jr.normal(ki, (D,) + rule.coefficients.shape)
            if terms is not None:
                c = c * rule.trainable
            student = mp.nn.PlasticDense(
                eqx.tree_at(lambda r: r.coefficients, rule, c), eta=1.0, activation="sigmoid"
            )
            fitted = mp.fit(
                student, oja, loss, steps=3 * steps, ensemble=True, progress=not args.no_progress
            ).model
            post = mp.laplace(fitted, oja, loss, ensemble=True)
            # The intervals conditional on each dataset's determined directions, as the
            # results page reports them (a rank-deficient posterior's plain intervals are
            # unbounded for every term along an undetermined direction, and cover trivially).
            lo, hi = post.interval(LEVEL, conditional=True)
            est = flat(fitted.rule.coefficients)
            low, high = flat(lo.rule.coefficients), flat(hi.rule.coefficients)
            results[name] = coverage_table(post.names, truth, est, low, high, post.free)
            rank = np.asarray(post.rank)
            free = np.asarray(post.free)
            extra = {
                "free_terms": int(free.sum()),
                "median_rank": float(np.median(rank)),
                "noise_scale_median": float(np.median(np.asarray(post.noise_scale))),
            }
            # Coverage along the determined eigen-directions of each dataset's precision: is
            # the part of the rule the data do determine calibrated?
            z_hits, z_total = 0, 0
            prec = np.asarray(post.precision)[:, free][:, :, free]
            err = (est - truth)[:, free]
            for m in range(D):
                values, vectors = np.linalg.eigh(prec[m])
                keep = values > 10 * free.sum() * np.finfo(values.dtype).eps * values[-1]
                z = (vectors[:, keep].T @ err[m]) * np.sqrt(values[keep])
                z_hits += int(np.sum(np.abs(z) <= 1.959964))
                z_total += int(keep.sum())
            extra["determined_direction_coverage"] = z_hits / max(z_total, 1)
            extra["determined_directions"] = z_total
            results[name + "_summary"] = extra
            oja_fits[name] = fitted
        seconds["oja"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ flies, choices
    t0 = time.perf_counter()
    kd, kc, kf = jr.split(k_fly, 3)
    choice = mp.behaviour.ChoiceBCE()
    fly_truth = {"1": 0.0, "r": 0.0, "x": 0.0, "x*r": 1.0, "w": 0.0}
    fly_fits = {}
    if "fly" in parts or "marginal" in parts:
        flies = sf.simulate_flies(
            mp.rules.reward_modulated(),
            datasets=D,
            n_train=n_train,
            trials_per_block=tpb,
            input_variance=args.input_variance,
            draws=draws if "marginal" in parts else None,
            key=kd,
        )
        seconds["fly_generate"] = time.perf_counter() - t0

    def fit_and_interval(family, data, members, lm, *, key):
        """Fit a family to `members` datasets in one vmapped fit and take each member's
        Laplace interval; returns the fitted model and the columns of `coverage_table`
        (terms, truth, estimates, lower and upper bounds, the last three `(members, terms)`)."""
        terms = mp.flies.FAMILY_TERMS[family]
        students = sf.family_students(flies, terms, members, key=key)
        fitted = mp.fit(
            students,
            data,
            choice,
            solver=lm,
            steps=steps,
            ensemble=True,
            progress=not args.no_progress,
        ).model
        lo, hi = mp.laplace(fitted, data, choice, ensemble=True, chunks=lm.chunks).interval(LEVEL)
        cols = lambda m: np.stack([sf.coefficient(m.rule, t) for t in terms], axis=1)
        true_terms = np.array([fly_truth[t] for t in terms])
        return fitted, (terms, true_terms, cols(fitted), cols(lo), cols(hi))

    if "fly" in parts:
        # Both inputs (fresh draw, generating) in one vmapped fit per family: 2·D members.
        both = jax.tree.map(
            lambda a, b: jnp.concatenate([a, b]) if eqx.is_array(a) else a,
            flies.train,
            flies.train_generating,
        )
        halves = (("", slice(0, D)), ("_generating_inputs", slice(D, 2 * D)))
        for family, k in (("covariance", kc), ("forgetting", kf)):
            fitted, (terms, true_terms, *estimates) = fit_and_interval(
                family, both, 2 * D, sf.solver(n_train), key=k
            )
            for inputs, part in halves:
                results[f"fly_{family}{inputs}"] = coverage_table(
                    terms, true_terms, *(e[part] for e in estimates)
                )
            fly_fits[f"fly_{family}"] = (fitted, both)
        seconds["fly_fit"] = time.perf_counter() - t0 - seconds["fly_generate"]

    # ------------------------------------------------------------------ marginal likelihood
    if "marginal" in parts:
        t0 = time.perf_counter()
        for family, k in (("covariance", kc), ("forgetting", kf)):
            lm = sf.solver(n_train, draws)
            _, columns = fit_and_interval(family, flies.train_marginal, D, lm, key=k)
            results[f"fly_{family}_marginal"] = coverage_table(*columns)
        seconds["fly_marginal_fit"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ bootstrap
    t0 = time.perf_counter()

    def first(tree, model=False):
        # The first B members: every array of a dataset, the trainable ones of a model.
        cut = lambda t: jax.tree.map(lambda a: a[:B] if eqx.is_array(a) else a, t)
        if not model:
            return cut(tree)
        params, static = eqx.partition(tree, mp.rule_filter_spec(tree))
        return eqx.combine(cut(params), static)

    if B >= 1 and "fly" in parts:
        fitted, data = fly_fits["fly_covariance"]
        terms = mp.flies.FAMILY_TERMS["covariance"]
        boot = mp.bootstrap(
            first(fitted, model=True),
            first(data),
            choice,
            n=R,
            key=k_boot,
            simulate=sf.simulator(flies, n_train),
            solver=sf.solver(n_train),
            steps=max(2, steps - 2),
            ensemble=True,
        )
        cols = lambda m: np.stack([sf.coefficient(m.rule, t) for t in terms], axis=1)
        for method in ("basic", "percentile"):
            lo, hi = boot.interval(LEVEL, method)
            results[f"bootstrap_{method}_fly_covariance"] = coverage_table(
                terms,
                np.array([fly_truth[t] for t in terms]),
                cols(boot.estimate.plastic),
                cols(lo.plastic),
                cols(hi.plastic),
            )

    if B >= 1 and "oja" in parts:

        def simulate_oja(model, data, key, n):
            # The fitted layer re-recorded on the same stimuli and initial weights, with the
            # noise level of its own residuals.
            sigma = float(jnp.sqrt(loss(model, data)))
            rep = lambda a: jnp.concatenate([a] * n)
            sim, _ = mp.generate_activity(
                model,
                rep(data.inputs),
                rep(data.initial_weights),
                readout=mp.nn.ActivityReadout(noise_std=sigma),
                key=key,
            )
            return jax.tree.map(
                lambda a: a.reshape((n, -1) + a.shape[1:]) if eqx.is_array(a) else a, sim
            )

        boot = mp.bootstrap(
            first(oja_fits["oja_full"], model=True),
            first(oja),
            loss,
            n=R,
            key=jr.fold_in(k_boot, 1),
            simulate=simulate_oja,
            steps=2 * steps,
            ensemble=True,
        )
        free = np.ones(truth.size, bool)
        names = mp.laplace(
            first(oja_fits["oja_full"], model=True), first(oja), loss, ensemble=True
        ).names
        for method in ("basic", "percentile"):
            lo, hi = boot.interval(LEVEL, method)
            results[f"bootstrap_{method}_oja_full"] = coverage_table(
                names,
                truth,
                flat(boot.estimate.rule.coefficients),
                flat(lo.rule.coefficients),
                flat(hi.rule.coefficients),
                free,
            )
    seconds["bootstrap"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ report
    coverage = {
        setting: {term: row["coverage"] for term, row in rows.items()}
        for setting, rows in results.items()
        if not setting.endswith("_summary")
    }
    for setting, rows in results.items():
        if setting.endswith("_summary"):
            print(f"{setting}: {rows}")
            continue
        print(f"{setting}:")
        for term, r in rows.items():
            lo_, hi_ = r["ci"]
            print(
                f"  {term:>12}  coverage {r['coverage']:.2f} [{lo_:.2f}, {hi_:.2f}]  "
                f"estimate {r['mean_estimate']:+.4g} ± {r['sd_estimate']:.3g} (sd)  "
                f"half-width {r['mean_half_width']:.3g}  truth {r['truth']:g}"
            )
    seconds["total"] = time.perf_counter() - start
    summary = {
        "coverage": coverage,
        "level": LEVEL,
        "datasets": D,
        "bootstrap_datasets": B,
        "replicates": R,
        "settings": {
            "oja": {"n_in": n_in, "n_out": n_out, "length": length, "trajectories": per},
            "oja_noise": args.noise,
            "fly_n_train": n_train,
            "fly_trials": 3 * tpb,
            "fly_input_variance": args.input_variance,
            "marginal_draws": draws if "marginal" in parts else None,
            "parts": sorted(parts),
            "steps": steps,
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    run = _cli.open_run(args, "uncertainty")
    run.write_json("coverage.json", _cli.jsonable(results))
    try:
        coverage_figure(run, results)
    except ImportError:  # matplotlib is an optional extra
        pass
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
