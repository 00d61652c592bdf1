"""Per-fly plasticity rules of 18 real Drosophila in the two-odour operant task.

Every fly gets its own rule, fitted to its own choices, from four families:

- covariance: Δw = θ₀ + θ_r·r + θ_x·x + θ_xr·x·r
- forgetting: the same plus θ_w·w (a weight-dependent, forgetting term)
- taylor:     all 81 terms of x, y, w, r up to second order, with L1
- mlp:        a small per-synapse MLP of x, y, w, r

with r = R − E[R] (or r = R with --reward-signal reward). All flies are fitted at once
(one vmapped Gauss–Newton fit per family; covariance and forgetting share one), on several
re-draws of the noisy odour encoding per fly. Each fit is scored by the percent deviance it
explains relative to the same network without plasticity: in sample (fit and score on all
trials), held out (fit on the first fraction of each fly's trials, score on the rest), and
restricted to block 1, the only block with recorded rejections. The families are compared
fly by fly (flies improved, Wilcoxon signed-rank p-value).

    python examples/drosophila.py                      # ../shared/data/drosophila
    python examples/drosophila.py --data DIR --out out
    python examples/drosophila.py --reward-signal reward
    python examples/drosophila.py --families covariance,forgetting --resamples 4

Writes a run folder under --out (config.json, metrics.csv, summary.json, flies.csv,
figures) and prints a JSON summary as its last line.
"""

import os
import sys
import time

import _cli


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "drosophila"))
SWEEP_FAMILIES = ("covariance", "forgetting")
FAMILIES = ("covariance", "forgetting", "taylor", "mlp")
FRACTIONS = (0.5, 0.6, 0.7, 0.8)


def parse_args(argv=None):
    p = _cli.parser(__doc__, progress=False)
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="folder of Fly*.mat files (default: ../shared/data/drosophila from the repo root)",
    )
    p.add_argument(
        "--families",
        type=_cli.list_of(str, choices=FAMILIES),
        default=FAMILIES,
        help=f"comma-separated families to fit (default: {_cli.comma(FAMILIES)})",
    )
    p.add_argument(
        "--reward-signal",
        choices=("prediction_error", "reward"),
        default="prediction_error",
        help="r = R − E[R] (prediction_error) or r = R (reward)",
    )
    p.add_argument(
        "--resamples", type=_cli.positive_int, default=2, help="encoding re-draws per fly"
    )
    p.add_argument(
        "--fractions",
        type=_cli.list_of(_cli.fraction, allow_empty=True),
        default=FRACTIONS,
        help="comma-separated training fractions of the held-out sweep (covariance and "
        f"forgetting; default: {_cli.comma(FRACTIONS)}; '' for none)",
    )
    p.add_argument(
        "--sweep-all",
        action="store_true",
        help="run the held-out sweep for taylor and mlp too (slower; default: in sample and "
        "block 1 only for them)",
    )
    p.add_argument(
        "--steps", type=_cli.positive_int, default=8, help="Levenberg–Marquardt steps per fit"
    )
    p.add_argument(
        "--l1", type=_cli.non_negative_float, default=1e-3, help="L1 penalty of the taylor family"
    )
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        p.error(
            f"the Drosophila data folder {args.data!r} does not exist; pass --data with the "
            "folder of Fly*.mat files (see ../shared/data/drosophila/README.md)."
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    data = mp.flies.load_drosophila(args.data)
    key = jr.key(args.seed)
    common = dict(
        reward_signal=args.reward_signal,
        resamples=args.resamples,
        steps=args.steps,
        l1=args.l1,
        key=key,  # the same key: the same encoding, network and noise for every family
    )
    swept = [f for f in args.families if f in SWEEP_FAMILIES or args.sweep_all]
    rest = [f for f in args.families if f not in swept]
    fits = {}
    if swept:
        fits.update(mp.flies.fit_families(data, swept, fractions=args.fractions, **common))
    if rest:
        fits.update(mp.flies.fit_families(data, rest, fractions=(), **common))
    fits = {f: fits[f] for f in args.families}
    # What a constant acceptance rate per fly earns against the same p = 0.5 reference.
    base = mp.flies.base_rate_scores(data, args.fractions)
    fit_seconds = time.perf_counter() - start

    with_rej = ~np.asarray([f.accept_only for f in data.flies])
    summary = {"flies": len(data), "flies_with_rejections": int(with_rej.sum())}
    summary["reward_signal"] = args.reward_signal
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
        }
    comparisons = _comparisons(mp, fits, with_rej)
    if "forgetting" in fits and "covariance" in fits:
        forget = fits["forgetting"]
        w = forget.coefficients["w"]
        summary["forgetting_vs_covariance"] = comparisons["forgetting_vs_covariance"]
        summary["median_w"] = float(np.median(w))
        summary["median_w_with_rejections"] = float(np.median(w[with_rej]))
        summary["median_w_block1_with_rejections"] = float(
            np.median(forget.block1_coefficients["w"][with_rej])
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
        run.write_csv("flies.csv", _fly_rows(data, fits, base, args.fractions))
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


def _fly_rows(data, fits, base, fractions):
    """One row per fly for flies.csv: counts, base rates and every family's scores and
    coefficients, floats to 6 significant digits."""
    import numpy as np

    info = {f.name: f for f in data.flies}
    # The 81-term rule keeps only its 10 terms of largest median magnitude (block 1 fits).
    keep_taylor = set()
    if "taylor" in fits:
        c = fits["taylor"].block1_coefficients
        keep_taylor = set(sorted(c, key=lambda t: -abs(float(np.median(c[t]))))[:10])
    rows = []
    for i, name in enumerate(data.names):
        fly = info[name]
        row = {
            "fly": name,
            "accept_only": fly.accept_only,
            "presentations": fly.n_presentations,
            "trials": fly.n_trials,
            "rejections": fly.n_rejections,
            "rejections_block1": fly.rejections_per_block[0],
            "rewards": fly.n_rewards,
            "base_rate:in_sample": float(base["in_sample"][i]),
            "base_rate:block1": float(base["block1"][i]),
        }
        for f, v, b in zip(fractions, base["held_out"], base["block1_held_out"]):
            row[f"base_rate:held_out_{f:g}"] = float(v[i])
            row[f"base_rate:block1_held_out_{f:g}"] = float(b[i])
        for family, fit in fits.items():
            for k, v in fit.rows()[i].items():
                term = k.split("coef_", 1)[1] if "coef_" in k else None
                if k in ("fly", "accept_only") or (
                    family == "taylor" and term is not None and term not in keep_taylor
                ):
                    continue
                row[f"{family}:{k}"] = v
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return rows


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
        scores = {"covariance\nin sample": cov.block1, "forgetting\nin sample": fgt.block1}
        if cov.fractions:
            f = cov.fractions[0]
            i = cov.fractions.index(f)
            scores[f"covariance\nheld out ({f:g})"] = cov.block1_held_out[i]
            scores[f"forgetting\nheld out ({f:g})"] = fgt.block1_held_out[i]
        fig = mp.plot.deviance_comparison(
            scores,
            ylabel="% deviance explained",
            title=f"Block 1, the {n_rej} flies with rejections: with vs without w",
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
    comp = summary.get("forgetting_vs_covariance")
    if comp:
        pick = lambda k: {
            "improved": comp[k]["n_improved"],
            "of": comp[k]["n"],
            "p": comp[k]["p_value"],
        }
        out["forgetting_improves"] = {"in_sample": pick("in_sample/all")}
        out["forgetting_improves"]["block1_with_rejections"] = pick("block1/with_rejections")
        f = fits["forgetting"].fractions
        if f:
            out["forgetting_improves"][f"held_out_{f[0]:g}"] = pick(f"held_out_{f[0]:g}/all")
            out["forgetting_improves"][f"block1_held_out_{f[0]:g}_with_rejections"] = pick(
                f"block1_held_out_{f[0]:g}/with_rejections"
            )
        out["median_w"] = summary["median_w"]
        out["median_w_with_rejections"] = summary["median_w_with_rejections"]
    out["seconds"] = round(summary["seconds"], 1)
    out["run"] = summary["run"]
    return out


if __name__ == "__main__":
    main()
