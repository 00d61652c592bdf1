"""Sparse rule discovery, measured: how often does the selected rule have exactly the terms of
the rule that generated the data?

For each setting, many datasets are simulated from one ground truth. Every dataset is given
to `metaplastic.threshold_fit` (fit all candidate terms, drop those whose Laplace interval
contains 0, refit, until the set is stable; all datasets in one vmapped fit per round) and,
on the first `--stability-datasets` datasets, to `metaplastic.stability_selection` (the
thresholded fit on `--resamples` random halves of the dataset's trajectories; a term is
stable when selected in at least `--threshold` of them). The interval level is
`1 − 0.05 / (number of candidate terms)` unless `--level` is given.

- `oja`: Oja's rule (x*y − y²*w) on a 10 → 20 sigmoid layer recorded with noise σ = 0.01,
  candidates all 27 monomials over (x, y, w) to second order; inputs `x ~ N(0, 0.5²)`,
  initial weights `0.3·N(0, 1)`, so that `y` spans most of (0, 1) and the monomials differ.
- `oja_poor`: the same with the inputs of `examples/uncertainty.py` (`x ~ N(0, 0.1²)`,
  initial weights `0.01·N(0, 1)`): `y` stays near 0.5, the 27 monomials are nearly collinear
  and several directions are not determined by the data.
- `fly`: simulated flies (2 → 10 mushroom body, two-odour operant task, 3 × 80 trials, 18 flies
  per dataset, odour-noise variance 0.015) learning by x*r − 0.05*w; candidates the 8
  first-order monomials over (x, w, r); fitted on the inputs that generated the choices (the
  well-specified likelihood, possible only in simulation).
- `fly_fresh`: the same flies fitted on a fresh draw of the odour noise (the protocol of the
  real flies, whose likelihood is misspecified: see examples/results/uncertainty.md).

    python examples/sparse_discovery.py            # 100 datasets per setting
    python examples/sparse_discovery.py --quick    # oja and fly, 4 small datasets each
"""

import time
from collections import Counter

import _cli


PARTS = ("oja", "oja_poor", "fly", "fly_fresh")


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a few small datasets, to check that everything runs")
    p.add_argument(
        "--datasets", type=_cli.positive_int, default=None, help="per setting (default 100)"
    )
    p.add_argument(
        "--stability-datasets",
        type=int,
        default=None,
        help="datasets given to stability selection per setting (default 20; 0: none)",
    )
    p.add_argument(
        "--resamples", type=_cli.positive_int, default=None, help="subsets per dataset (10)"
    )
    p.add_argument(
        "--threshold",
        type=_cli.fraction,
        default=0.7,
        help="selection frequency of a stable term (default 0.7)",
    )
    p.add_argument(
        "--level",
        type=_cli.fraction,
        default=None,
        help="interval level (default 1 − 0.05 / number of candidate terms)",
    )
    p.add_argument("--drop", choices=("all", "weakest"), default="all", help="default all")
    p.add_argument(
        "--parts",
        type=_cli.list_of(str, choices=PARTS),
        default=None,
        help="settings to measure, from oja, oja_poor, fly, fly_fresh (default all; with "
        "--quick oja,fly)",
    )
    p.add_argument(
        "--chunk",
        type=_cli.positive_int,
        default=25,
        help="fly datasets fitted together (memory; default 25)",
    )
    args = p.parse_args(argv)
    if args.level is not None and args.level >= 1:
        p.error("argument --level: must be below 1")
    if args.stability_datasets is not None and args.stability_datasets < 0:
        p.error("argument --stability-datasets: must be >= 0")
    return args


def score(term_sets, truth):
    """How many term sets equal the true one, with the most common sets."""
    truth = set(truth)
    k = sum(set(s) == truth for s in term_sets)
    n = len(term_sets)
    common = Counter(" + ".join(s) if s else "(none)" for s in term_sets).most_common(4)
    lo, hi = _cli.clopper_pearson(k, n)
    return {
        "recovered": k,
        "datasets": n,
        "rate": k / n,
        "ci": [round(lo, 3), round(hi, 3)],
        "most_common": [[s, c] for s, c in common],
    }


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    # Oja's monomials are nearly collinear at small inputs: float64, as in the README.
    jax.config.update("jax_enable_x64", True)
    import _simulated_flies as sf
    import equinox as eqx
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    quick = args.quick
    D = args.datasets or (4 if quick else 100)
    S = args.stability_datasets if args.stability_datasets is not None else (2 if quick else 20)
    S = min(S, D)
    B = args.resamples or (4 if quick else 10)
    chosen = args.parts or (("oja", "fly") if quick else PARTS)
    parts = [p for p in PARTS if p in chosen]
    key = jr.key(args.seed)
    results, seconds, examples = {}, {}, {}
    progress = not args.no_progress

    def level_for(n_terms):
        return args.level if args.level is not None else 1 - 0.05 / n_terms

    def datasets(students, data, lo, hi):
        """The students (trainable arrays) and data of datasets `lo` to `hi`."""
        cut = lambda t: jax.tree.map(lambda a: a[lo:hi] if eqx.is_array(a) else a, t)
        params, static = eqx.partition(students, mp.rule_filter_spec(students))
        return eqx.combine(cut(params), static), cut(data)

    def measure(name, students, data, loss, truth, *, solver, steps, n_terms, chunk):
        """Thresholded fit on every dataset (in chunks of `chunk` datasets) and stability
        selection on the first `S`; fills `results[name]`."""
        level = level_for(n_terms)
        t0 = time.perf_counter()
        sets, rounds, converged = [], [], []
        for lo in range(0, D, chunk):
            hi = min(D, lo + chunk)
            sel = mp.threshold_fit(
                *datasets(students, data, lo, hi),
                loss,
                level=level,
                drop=args.drop,
                steps=steps,
                solver=solver,
                ensemble=True,
                progress=progress,
            )
            sets += sel.term_sets()
            rounds += np.asarray(sel.rounds).tolist()
            converged += np.asarray(sel.converged).tolist()
            if lo == 0:
                examples[name] = sel.format(0)
        seconds[name + "_threshold"] = time.perf_counter() - t0
        out = {
            "level": level,
            "candidates": n_terms,
            "truth": sorted(truth),
            "threshold_fit": score(sets, truth)
            | {"median_rounds": float(np.median(rounds)), "converged": int(sum(converged))},
        }
        print(f"{name}: thresholded fit {out['threshold_fit']}", flush=True)
        if S:
            t0 = time.perf_counter()
            # Each subset holds `--fraction` 0.5 of the trajectories: 2·chunk/resamples
            # datasets at a time hold as many trajectories as `chunk` datasets.
            step = max(1, (2 * chunk) // B)
            stab_sets, freqs = [], []
            for lo in range(0, S, step):
                hi = min(S, lo + step)
                stab = mp.stability_selection(
                    *datasets(students, data, lo, hi),
                    loss,
                    resamples=B,
                    threshold=args.threshold,
                    level=level,
                    drop=args.drop,
                    steps=steps,
                    solver=solver,
                    ensemble=True,
                    key=jr.fold_in(jr.fold_in(key, PARTS.index(name)), lo),
                    progress=progress,
                )
                stab_sets += stab.term_sets()
                freqs.append(np.asarray(stab.frequency))
            freq = np.concatenate(freqs)
            lib = np.asarray(stab.library)
            names = [
                mp.rules.format_monomial(e, stab.factors) for e in np.ndindex(*lib.shape) if lib[e]
            ]
            mean_freq = freq.reshape(S, -1)[:, lib.reshape(-1)].mean(axis=0)
            out["stability_selection"] = score(stab_sets, truth) | {
                "resamples": B,
                "threshold": args.threshold,
                "mean_frequency": {
                    n: round(float(f), 3)
                    for n, f in sorted(zip(names, mean_freq), key=lambda kv: -kv[1])
                    if f > 0
                },
            }
            seconds[name + "_stability"] = time.perf_counter() - t0
            print(f"{name}: stability selection {out['stability_selection']}", flush=True)
        results[name] = out

    # ------------------------------------------------------------------ Oja, activity
    n_in, n_out, length, per = 10, 20, 30, 4
    oja_settings = {"oja": (0.5, 0.3), "oja_poor": (0.1, 0.01)}
    factors = ("x", "y", "w")
    for name in [p for p in parts if p.startswith("oja")]:
        t0 = time.perf_counter()
        std, w_std = oja_settings[name]
        teacher = mp.nn.PlasticDense(mp.rules.oja(factors), eta=1.0, activation="sigmoid")
        kx, kw, kn, ki = jr.split(jr.fold_in(key, PARTS.index(name)), 4)
        x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=D * per, std=std, key=kx)
        w0 = w_std * jr.normal(kw, (D * per, n_out, n_in))
        readout = mp.nn.ActivityReadout(noise_std=0.01)
        data, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=kn)
        data = jax.tree.map(
            lambda a: a.reshape((D, per) + a.shape[1:]) if eqx.is_array(a) else a, data
        )
        rule = mp.TaylorRule.zeros(factors)
        c = 1e-4 * jr.normal(ki, (D,) + rule.coefficients.shape)
        students = mp.nn.PlasticDense(
            eqx.tree_at(lambda r: r.coefficients, rule, c), eta=1.0, activation="sigmoid"
        )
        seconds[name + "_generate"] = time.perf_counter() - t0
        measure(
            name,
            students,
            data,
            mp.losses.ActivityMSE(),
            ("x*y", "y^2*w"),
            solver=None,
            steps=15,
            n_terms=27,
            chunk=D,
        )
        results[name]["inputs"] = {"x_std": std, "initial_weight_std": w_std}

    # ------------------------------------------------------------------ flies, choices
    fly_parts = [p for p in parts if p.startswith("fly")]
    if fly_parts:
        t0 = time.perf_counter()
        n_train = 4 if quick else 18
        tpb = 20 if quick else 80
        truth_rule = mp.rules.with_decay(mp.rules.reward_modulated(), 0.05)
        k_data, k_init = jr.split(jr.fold_in(key, 2))
        flies = sf.simulate_flies(
            truth_rule,
            datasets=D,
            n_train=n_train,
            trials_per_block=tpb,
            input_variance=sf.INPUT_VARIANCE,
            key=k_data,
        )
        library = ["1", "x", "w", "r", "x*w", "x*r", "w*r", "x*w*r"]
        students = sf.family_students(flies, library, D, key=k_init)
        seconds["fly_generate"] = time.perf_counter() - t0
        for name in fly_parts:
            data = flies.train_generating if name == "fly" else flies.train
            measure(
                name,
                students,
                data,
                mp.behaviour.ChoiceBCE(),
                ("x*r", "w"),
                solver=sf.solver(n_train),
                steps=4 if quick else 8,
                n_terms=len(library),
                chunk=args.chunk,
            )
            results[name]["inputs"] = "generating" if name == "fly" else "fresh draw"

    # ------------------------------------------------------------------ report
    for name, text in examples.items():
        print(f"{name}, dataset 0:\n{text}")
    seconds["total"] = time.perf_counter() - start
    summary = {
        "selection": {
            name: {
                method: r[method]["rate"]
                for method in ("threshold_fit", "stability_selection")
                if method in r
            }
            for name, r in results.items()
        },
        "results": results,
        "datasets": D,
        "stability_datasets": S,
        "settings": {
            "oja": {"n_in": n_in, "n_out": n_out, "length": length, "trajectories": per},
            "drop": args.drop,
            "parts": parts,
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    run = _cli.open_run(args, "sparse_discovery")
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
