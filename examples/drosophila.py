"""Per-fly plasticity rules of 18 real Drosophila in the two-odour operant task.

Every fly gets its own rule, fitted to its own choices, from five families:

- covariance:   Δw = θ₀ + θ_r·r + θ_x·x + θ_xr·x·r
- forgetting:   the same plus θ_w·w (a weight-dependent, forgetting term)
- forgetting_y: the same plus θ_y·y (what the published implementation fitted as
                "forgetting": its coefficient tensor is indexed in reverse, so its `w` is `y`)
- taylor:       all 81 terms of x, y, w, r up to second order, with L1
- mlp:          a small per-synapse MLP of x, y, w, r

with r = R − E[R] (or r = R with --reward-signal reward). All flies are fitted at once
(one vmapped fit per family; the small families share one), on several draws of the
unobserved noisy odour encoding per fly, each with its own odour split.

Two protocols (--protocol):

- library (default): Levenberg–Marquardt on the likelihood marginal over the draws of the
  encoding noise, fresh noise at every presentation;
- published: the original implementation's fly protocol through this library's API: Adam
  (1e-3), 251 epochs of one step per training sample (20 samples, each with one frozen noise
  vector of standard deviation 0.015 and its own odour split), coefficients started at
  N(0, 1e-10), the L1 of 1e-2 as its padded mean weighs it per fly, no weight clipping
  (except the 81-term family, which overflows without it), scored on 5 fresh samples of
  the same trials; no held-out sweep.

Each fit is scored by the percent deviance it
explains relative to the same network without plasticity: in sample (fit and score on all
trials), held out (fit on the first fraction of each fly's trials, score on the rest), and
restricted to block 1, the only block with recorded rejections. The families are compared
fly by fly (flies improved, Wilcoxon signed-rank p-value).

    python examples/drosophila.py                      # ../shared/data/drosophila
    python examples/drosophila.py --data DIR --out out
    python examples/drosophila.py --reward-signal reward
    python examples/drosophila.py --families covariance,forgetting --resamples 4
    python examples/drosophila.py --protocol published

Writes a run folder under --out (config.json, metrics.csv, summary.json, flies.csv from
the fits' DataFrames, figures) and prints a JSON summary as its last line. Needs pandas
and matplotlib: pip install -e ".[plot]".
"""

import argparse
import sys
import time

import _cli


SWEEP_FAMILIES = ("covariance", "forgetting", "forgetting_y")
FAMILIES = ("covariance", "forgetting", "forgetting_y", "taylor", "mlp")
# Fitted on request (--families ...,trace): a rule with memory, an eligibility trace.
KNOWN_FAMILIES = FAMILIES + ("trace",)
FRACTIONS = (0.5, 0.6, 0.7, 0.8)
# The options of each protocol (a command-line option overrides its protocol's value). The
# published values: optimiser, epochs, samples, L1, initial scale and evaluation from the
# original implementation's trainer and config; its "input_variance" of 0.015 multiplies a
# standard normal draw, so it is a standard deviation (variance 0.015²).
PROTOCOLS = {
    "library": dict(
        resamples=4,
        marginal=True,
        steps=8,
        input_variance=0.015**2,
        noise="presentation",
        init_scale=1e-5,
        l1=1e-3,
        weight_bound=None,
        taylor_weight_bound=100.0,
        evaluation_samples=None,
        fractions=FRACTIONS,
    ),
    "published": dict(
        resamples=20,
        marginal=False,
        steps=251,  # epochs; each is one Adam step per training sample
        input_variance=0.015**2,
        noise="trajectory",
        init_scale=1e-5,
        l1="padded",
        weight_bound=None,
        taylor_weight_bound=100.0,
        evaluation_samples=5,
        fractions=(),
    ),
}


def parse_args(argv=None):
    p = _cli.parser(
        __doc__, quick="3 flies, covariance and forgetting, 2 draws, 4 steps, no sweep: a check"
    )
    _cli.fly_data_option(p)
    p.add_argument(
        "--families",
        type=_cli.list_of(str, choices=KNOWN_FAMILIES),
        default=FAMILIES,
        help=f"comma-separated families to fit (default: {_cli.comma(FAMILIES)}; also: "
        "trace, an eligibility trace of 1 + x released by the reward signal)",
    )
    p.add_argument(
        "--reward-signal",
        choices=("prediction_error", "reward"),
        default="prediction_error",
        help="r = R − E[R] (prediction_error) or r = R (reward)",
    )
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="library",
        help="library (Levenberg-Marquardt, marginal likelihood) or published (the original "
        "implementation's Adam protocol); the options below override it",
    )
    p.add_argument(
        "--resamples",
        type=_cli.positive_int,
        default=None,
        help="draws of the encoding noise per fly (library 4, published 20)",
    )
    p.add_argument(
        "--input-variance",
        type=_cli.non_negative_float,
        default=None,
        help="variance of the encoding noise (default 0.015², the published model's)",
    )
    p.add_argument(
        "--noise",
        choices=("presentation", "trajectory"),
        default=None,
        help="encoding noise fresh at every presentation (library) or one frozen vector per "
        "draw (published)",
    )
    p.add_argument(
        "--marginal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the likelihood marginal over the draws (library) or every draw as its own "
        "trajectory (--no-marginal, published)",
    )
    p.add_argument(
        "--fractions",
        type=_cli.list_of(_cli.fraction, allow_empty=True),
        default=None,
        help="comma-separated training fractions of the held-out sweep (small families; "
        f"library default: {_cli.comma(FRACTIONS)}; published: none; '' for none)",
    )
    p.add_argument(
        "--sweep-all",
        action="store_true",
        help="run the held-out sweep for taylor and mlp too (slower; default: in sample and "
        "block 1 only for them)",
    )
    p.add_argument(
        "--steps",
        type=_cli.positive_int,
        default=None,
        help="Levenberg–Marquardt steps per fit (library, default 8) or epochs (published, "
        "default 251)",
    )
    p.add_argument(
        "--l1",
        type=_cli.non_negative_float,
        default=None,
        help="L1 penalty of the Taylor families (library default 1e-3; published: 1e-2 "
        "scaled per fly as its padded mean implies)",
    )
    p.add_argument(
        "--weight-bound",
        type=_cli.positive_float,
        default=None,
        help="clip the weights of every family at this bound (default: only taylor, at 100)",
    )
    args = p.parse_args(argv)
    for name, value in PROTOCOLS[args.protocol].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.quick:
        small = tuple(f for f in args.families if f in ("covariance", "forgetting"))
        args.families = small or ("covariance",)
        args.resamples, args.steps, args.fractions = 2, min(args.steps, 4), ()
    _cli.check_fly_data(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    _cli.needs_pandas("drosophila.py")
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax.random as jr
    import numpy as np
    import optax

    import metaplastic as mp

    data = mp.flies.load_drosophila(args.data)
    if args.quick:
        data = data.select(list(range(min(3, len(data)))))
    key = jr.key(args.seed)
    published = args.protocol == "published"
    common = dict(
        reward_signal=args.reward_signal,
        resamples=args.resamples,
        marginal=args.marginal,
        input_variance=args.input_variance,
        noise=args.noise,
        init_scale=args.init_scale,
        evaluation_samples=args.evaluation_samples,
        l1=mp.flies.padded_l1(data) if args.l1 == "padded" else args.l1,
        key=key,  # the same key: the same draws and initial weights for every family
        progress=not args.no_progress,
    )
    if published:
        # One Adam step per training sample, as the original loop: `steps` epochs.
        common.update(
            solver=mp.Optax(optax.adam(1e-3)), steps=args.steps * args.resamples, batch_size=1
        )
    else:
        common.update(steps=args.steps)
    swept = [f for f in args.families if f in SWEEP_FAMILIES or args.sweep_all]
    groups = [
        ([f for f in swept if f != "taylor"], args.fractions),
        ([f for f in args.families if f not in swept and f != "taylor"], ()),
        (
            ["taylor"] if "taylor" in args.families else [],
            args.fractions if "taylor" in swept else (),
        ),
    ]
    fits = {}
    for families, fractions in groups:
        if not families:
            continue
        bound = args.weight_bound
        if bound is None and families == ["taylor"]:
            # Without a bound a candidate 81-term rule overflows the weights within a fit.
            bound = args.taylor_weight_bound
        fits.update(
            mp.flies.fit_families(data, families, fractions=fractions, weight_bound=bound, **common)
        )
    fits = {f: fits[f] for f in args.families}
    # What a constant acceptance rate per fly earns against the same p = 0.5 reference.
    base = mp.flies.base_rate_scores(data, args.fractions)
    fit_seconds = time.perf_counter() - start

    with_rej = ~np.asarray([f.accept_only for f in data.flies])
    summary = {"flies": len(data), "flies_with_rejections": int(with_rej.sum())}
    summary["reward_signal"] = args.reward_signal
    summary["protocol"] = args.protocol
    for name, fit in fits.items():
        m = fit.medians()
        summary[name] = {
            "median_in_sample": m["in_sample"],
            "median_block1": m["block1"],
            "median_held_out": {f"{f:g}": m[f"held_out_{f:g}"] for f in fit.fractions},
            "median_block1_held_out": {
                f"{f:g}": m[f"block1_held_out_{f:g}"] for f in fit.fractions
            },
            "median_in_sample_with_rejections": float(np.median(fit.in_sample[with_rej])),
            "median_block1_with_rejections": float(np.median(fit.block1[with_rej])),
            "max_weight": float(np.max(fit.max_weight)),
            "median_max_weight": float(np.median(fit.max_weight)),
        }
    comparisons = _comparisons(mp, fits, with_rej)
    for name, term in (("forgetting", "w"), ("forgetting_y", "y")):
        if name not in fits or "covariance" not in fits:
            continue
        forget = fits[name]
        c = forget.coefficients[term]
        summary[f"{name}_vs_covariance"] = comparisons[f"{name}_vs_covariance"]
        summary[f"median_{term}"] = float(np.median(c))
        summary[f"median_{term}_with_rejections"] = float(np.median(c[with_rej]))
        summary[f"{term}_negative_with_rejections"] = int(np.sum(c[with_rej] < 0))
        summary[f"median_{term}_block1_with_rejections"] = float(
            np.median(forget.block1_coefficients[term][with_rej])
        )
    summary["base_rate"] = {
        "median_in_sample": float(np.median(base["in_sample"])),
        "median_block1": float(np.median(base["block1"])),
        "median_block1_with_rejections": float(np.median(base["block1"][with_rej])),
        "median_block1_held_out_with_rejections": {
            f"{f:g}": float(np.median(v[with_rej]))
            for f, v in zip(args.fractions, base["block1_held_out"])
        },
    }
    for name, fit in fits.items():
        summary[name]["median_block1_held_out_with_rejections"] = {
            f"{f:g}": float(np.median(v[with_rej]))
            for f, v in zip(fit.fractions, fit.block1_held_out)
        }
    comparisons["vs_base_rate"] = _against_base_rate(mp, fits, base, with_rej)
    summary["fit_seconds"] = fit_seconds

    with mp.runs.create_run(args.out, name="drosophila", config=vars(args)) as run:
        for name, fit in fits.items():
            for key_, value in fit.medians().items():
                run.log(family=name, score=key_, median=value, seconds=fit.seconds)
        run.write_json("comparisons.json", comparisons)
        run.write_csv("flies.csv", _fly_table(data, fits, base, args.fractions))
        try:
            _figures(mp, run, fits, base, with_rej)
        except ImportError as err:  # matplotlib is optional
            print(f"no figures: {err}", file=sys.stderr)
        summary["run"] = str(run.path)
        summary["seconds"] = time.perf_counter() - start
        run.finish(summary)
    _cli.print_json(_headline(summary, fits))
    return summary


def _comparisons(mp, fits, with_rej):
    """Paired comparisons of every family against covariance (and forgetting's in detail):
    in sample, block 1 and each held-out fraction; all flies and flies with rejections."""
    out = {}
    if "covariance" not in fits:
        return out
    base = fits["covariance"]
    for name, fit in fits.items():
        if name == "covariance":
            continue
        rows = {}
        views = {
            "all": (base, fit),
            "with_rejections": (base.select(with_rej), fit.select(with_rej)),
        }
        for view, (a, b) in views.items():
            rows[f"in_sample/{view}"] = mp.flies.compare_families(a, b, "in_sample").as_dict()
            rows[f"block1/{view}"] = mp.flies.compare_families(a, b, "block1").as_dict()
            for f in set(a.fractions) & set(b.fractions):
                for score in ("held_out", "block1_held_out"):
                    rows[f"{score}_{f:g}/{view}"] = mp.flies.compare_families(
                        a, b, score, fraction=f
                    ).as_dict()
        out[f"{name}_vs_covariance"] = rows
    return out


def _against_base_rate(mp, fits, base, with_rej):
    """Each family against the constant-rate baseline, flies with rejections: in sample on
    block 1 and on each held-out split of block 1."""
    out = {}
    for name, fit in fits.items():
        sel = fit.select(with_rej)
        rows = {"block1": mp.flies.compare_scores(base["block1"][with_rej], sel.block1).as_dict()}
        for i, f in enumerate(fit.fractions):
            rows[f"block1_held_out_{f:g}"] = mp.flies.compare_scores(
                base["block1_held_out"][i][with_rej], sel.block1_held_out[i]
            ).as_dict()
        out[name] = rows
    return out


def _fly_table(data, fits, base, fractions):
    """flies.csv as a DataFrame, one row per fly: its counts and base rates, then every
    family's `FlyFits.to_dataframe()` (its columns behind `family:`; the 81-term rule only
    its 10 terms of largest median magnitude on block 1), floats to 6 significant digits."""
    import numpy as np
    import pandas as pd

    info = {f.name: f for f in data.flies}
    counts = pd.DataFrame(
        [
            {
                "fly": name,
                "accept_only": info[name].accept_only,
                "presentations": info[name].n_presentations,
                "trials": info[name].n_trials,
                "rejections": info[name].n_rejections,
                "rejections_block1": info[name].rejections_per_block[0],
                "rewards": info[name].n_rewards,
            }
            for name in data.names
        ]
    )
    rates = {"in_sample": base["in_sample"], "block1": base["block1"]}
    for f, v, b in zip(fractions, base["held_out"], base["block1_held_out"]):
        rates[f"held_out_{f:g}"] = v
        rates[f"block1_held_out_{f:g}"] = b
    rates = {k: np.asarray(v, np.float64) for k, v in rates.items()}
    tables = [counts, pd.DataFrame(rates).add_prefix("base_rate:")]
    keep_taylor = set()
    if "taylor" in fits:
        c = fits["taylor"].block1_coefficients
        keep_taylor = set(sorted(c, key=lambda t: -abs(float(np.median(c[t]))))[:10])
    for family, fit in fits.items():
        table = fit.to_dataframe()
        if table["fly"].tolist() != list(data.names):  # the tables are joined row by row
            raise SystemExit(f"the {family} fits are not in the flies' order")
        dropped = ["fly", "accept_only"]
        if family == "taylor":
            dropped += [
                c for c in table if "coef_" in c and c.split("coef_", 1)[1] not in keep_taylor
            ]
        tables.append(table.drop(columns=dropped).add_prefix(f"{family}:"))
    table = pd.concat(tables, axis=1)
    for column in table:
        if table[column].dtype.kind == "f":
            table[column] = [f"{v:.6g}" for v in table[column]]
    return table


def _figures(mp, run, fits, base, with_rej):
    import numpy as np

    names = list(fits)
    n_rej = int(with_rej.sum())
    # Per-fly deviance, all trials and block 1, every family side by side.
    for score, label in (("in_sample", "all trials"), ("block1", "block 1 only")):
        fig = mp.plot.deviance_comparison(
            {"base rate": base[score], **{n: getattr(fits[n], score) for n in names}},
            ylabel="% deviance explained (in sample)",
            title=f"Per-fly deviance vs no plasticity, {label} ({len(with_rej)} flies)",
        )
        run.save_figure(fig, f"deviance_{score}.png")
    # With vs without the forgetting term, flies with rejections only.
    if "covariance" in fits and "forgetting" in fits:
        cov, fgt = fits["covariance"].select(with_rej), fits["forgetting"].select(with_rej)
        others = [("forgetting", fgt)]
        if "forgetting_y" in fits:
            others.append(("forgetting_y", fits["forgetting_y"].select(with_rej)))
        scores = {"covariance\nin sample": cov.block1}
        scores.update({f"{n}\nin sample": f.block1 for n, f in others})
        if cov.fractions:
            f = cov.fractions[0]
            i = cov.fractions.index(f)
            scores[f"covariance\nheld out ({f:g})"] = cov.block1_held_out[i]
            for n, o in others:
                scores[f"{n}\nheld out ({f:g})"] = o.block1_held_out[i]
        fig = mp.plot.deviance_comparison(
            scores,
            ylabel="% deviance explained",
            title=f"Block 1, the {n_rej} flies with rejections: with vs without w (or y)",
        )
        run.save_figure(fig, "forgetting_vs_covariance.png")
        fig = mp.plot.coefficient_distributions(
            fgt.block1_coefficients,
            terms=list(fgt.block1_coefficients),
            title=f"Forgetting family fitted on block 1, {n_rej} flies with rejections",
        )
        run.save_figure(fig, "coefficients_forgetting_block1.png")
        fig = mp.plot.coefficient_distributions(
            fgt.coefficients,
            terms=list(fgt.coefficients),
            title=f"Forgetting family fitted on all trials, {n_rej} flies with rejections",
        )
        run.save_figure(fig, "coefficients_forgetting_all.png")
    if "taylor" in fits:
        t = fits["taylor"].select(with_rej)
        fig = mp.plot.coefficient_distributions(
            t.block1_coefficients,
            top=10,
            title=f"81-term Taylor rule on block 1: the 10 largest median terms ({n_rej} flies)",
        )
        run.save_figure(fig, "coefficients_taylor_block1.png")
    swept = {n: f for n, f in fits.items() if f.fractions}
    if swept:
        fractions = next(iter(swept.values())).fractions
        fig, axes = _two_axes()
        mp.plot.held_out_curve(
            fractions,
            {"base rate": base["held_out"], **{n: f.held_out for n, f in swept.items()}},
            title="All trials (the held-out tail is accept-only)",
            ax=axes[0],
        )
        mp.plot.held_out_curve(
            fractions,
            {
                "base rate": base["block1_held_out"][:, with_rej],
                **{n: f.select(with_rej).block1_held_out for n, f in swept.items()},
            },
            xlabel="fraction of block 1 fitted",
            title=f"Within block 1, {n_rej} flies with rejections",
            ax=axes[1],
        )
        run.save_figure(fig, "held_out_curve.png")
    del np


def _two_axes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    return fig, fig.subplots(1, 2)


def _headline(summary, fits):
    """The last line: per-family medians, the forgetting comparison, the median w."""
    out = {}
    for name in fits:
        s = summary[name]
        held = s["median_held_out"]
        out[name] = {
            "in_sample": round(s["median_in_sample"], 2),
            "held_out": {k: round(v, 2) for k, v in held.items()} if held else None,
            "block1": round(s["median_block1"], 2),
            "block1_held_out": {k: round(v, 2) for k, v in s["median_block1_held_out"].items()}
            or None,
        }
    for name, term in (("forgetting", "w"), ("forgetting_y", "y")):
        comp = summary.get(f"{name}_vs_covariance")
        if not comp:
            continue
        pick = lambda k, comp=comp: {
            "improved": comp[k]["n_improved"],
            "of": comp[k]["n"],
            "p": comp[k]["p_value"],
        }
        improves = {"in_sample": pick("in_sample/all")}
        improves["block1_with_rejections"] = pick("block1/with_rejections")
        f = fits[name].fractions
        if f:
            improves[f"held_out_{f[0]:g}"] = pick(f"held_out_{f[0]:g}/all")
            improves[f"block1_held_out_{f[0]:g}_with_rejections"] = pick(
                f"block1_held_out_{f[0]:g}/with_rejections"
            )
        out[f"{name}_improves"] = improves
        out[f"median_{term}"] = summary[f"median_{term}"]
        out[f"median_{term}_with_rejections"] = summary[f"median_{term}_with_rejections"]
    out["seconds"] = round(summary["seconds"], 1)
    out["run"] = summary["run"]
    return out


if __name__ == "__main__":
    main()
