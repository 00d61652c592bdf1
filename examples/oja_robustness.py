"""How robust is the recovery of Oja's rule to measurement noise and to partial recordings?

The paper's robustness grid: measurement noise × recorded fraction, several seeds per cell.
Each cell fits a 27-coefficient Taylor rule (Levenberg–Marquardt, float64) with its seeds
vmapped into one ensemble fit; every run is scored on held-out trajectories.

The noise level is relative: a level σ adds Gaussian noise of standard deviation
σ × std(recorded activity) to every recorded value, once per dataset.

    python examples/oja_robustness.py                 # 6 × 6 grid, 3 seeds, 20 → 50 layer
    python examples/oja_robustness.py --quick         # a 2 × 2 corner of the grid
    python examples/oja_robustness.py --noises 0,0.5 --fractions 1,0.7   # a chosen grid
    python examples/oja_robustness.py --resume out/oja_robustness-...     # finish a grid

Every finished cell is written at once to `oja_robustness.csv` in the run folder (from a
pandas DataFrame: pip install -e ".[plot]" installs pandas with matplotlib);
`--resume RUN_FOLDER` keeps the cells already there and fits the others. A resume must
repeat the flags of the run (grid, seeds, sizes, steps): it stops with an error
naming any flag that differs, but for `--out` and `--no-progress` (and `--quick`, whose
grid is compared as such).
"""

import csv
import os
import time

import _cli


NOISES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def parse_args(argv=None):
    p = _cli.parser(
        __doc__,
        seed=False,  # --seeds runs the seeds 0, 1, ... of every cell
        resume="the run folder of an interrupted grid: keep its finished cells",
        quick="only the corners noise {0, 1} × fraction {1, 0.5}",
    )
    p.add_argument(
        "--noises",
        type=_cli.list_of(_cli.non_negative_float),
        default=NOISES,
        help="comma-separated noise levels, × std of the recorded activity "
        f"(default: {_cli.comma(NOISES)})",
    )
    p.add_argument(
        "--fractions",
        type=_cli.list_of(_cli.fraction),
        default=FRACTIONS,
        help=f"comma-separated recorded fractions (default: {_cli.comma(FRACTIONS)})",
    )
    p.add_argument("--seeds", type=_cli.positive_int, default=3, help="seeds per cell (0, 1, ...)")
    p.add_argument("--n-in", type=_cli.positive_int, default=20)
    p.add_argument("--n-out", type=_cli.positive_int, default=50)
    p.add_argument("--length", type=_cli.positive_int, default=50)
    p.add_argument("--n-train", type=_cli.positive_int, default=50)
    p.add_argument("--n-test", type=_cli.positive_int, default=10)
    p.add_argument("--batch-size", type=_cli.positive_int, default=5)
    p.add_argument(
        "--steps", type=_cli.positive_int, default=20, help="Levenberg–Marquardt steps per fit"
    )
    p.add_argument(
        "--l2", type=_cli.non_negative_float, default=0.0, help="ridge penalty on the coefficients"
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _cli.needs_pandas("oja_robustness.py")
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import pandas as pd

    import metaplastic as mp

    if args.quick:
        args.noises, args.fractions = (0.0, 1.0), (1.0, 0.5)
    truth = mp.rules.oja(("x", "y", "w"))
    teacher = mp.nn.PlasticDense(truth, eta=1.0)
    n_in, n_out, length = args.n_in, args.n_out, args.length

    def make_data(seed, noise, fraction):
        k_x, k_w, k_obs = jr.split(jr.fold_in(jr.key(seed), 1), 3)
        x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=args.n_train, key=k_x)
        w0 = 0.01 * jr.normal(k_w, (args.n_train, n_out, n_in))
        clean, _ = mp.generate_activity(teacher, x, w0, key=k_obs)
        scale = float(jnp.std(clean.activity))
        readout = mp.nn.ActivityReadout(recorded_fraction=fraction, noise_std=noise * scale)
        data, _ = mp.generate_activity(teacher, x, w0, readout=readout, key=k_obs)
        return data

    held_x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=args.n_test, key=jr.key(10_000))
    held_w0 = 0.01 * jr.normal(jr.key(10_001), (args.n_test, n_out, n_in))
    seeds = list(range(args.seeds))
    run = _cli.open_run(args, "oja_robustness", may_differ=("quick",))
    path = str(run.file("oja_robustness.csv"))
    rows = _read_rows(path) if os.path.exists(path) else []
    done = {(r["noise"], r["recorded_fraction"]) for r in rows}
    for noise in args.noises:
        for fraction in args.fractions:
            if (noise, fraction) in done:
                continue
            datasets = [make_data(s, noise, fraction) for s in seeds]
            data = jax.tree.map(lambda *xs: jnp.stack(xs), *datasets)
            students = eqx.filter_vmap(
                lambda k: mp.nn.PlasticDense(mp.TaylorRule.random(("x", "y", "w"), key=k), eta=1.0)
            )(jnp.stack([jr.fold_in(jr.key(s), 2) for s in seeds]))
            result = mp.fit(
                students,
                data,
                mp.losses.ActivityMSE(),
                solver=mp.LevenbergMarquardt(chunks=args.batch_size),
                steps=args.steps,
                batch_size=args.batch_size,
                ensemble=True,
                penalty=mp.losses.L2(args.l2),
                progress=not args.no_progress,
            )
            for i, seed in enumerate(seeds):
                member = jax.tree.map(lambda a, i=i: a[i] if eqx.is_array(a) else a, result.model)
                scores = mp.metrics.compare_layers(teacher, member, held_w0, held_x)
                rule = member.rule
                others = max(abs(v) for t, v in rule.terms() if t not in ("x*y", "y^2*w"))
                rows.append(
                    {
                        "noise": noise,
                        "recorded_fraction": fraction,
                        "seed": seed,
                        "r2_weights": float(np.median(scores["r2_weights"])),
                        "r2_activity": float(np.median(scores["r2_activity"])),
                        "coef_xy": rule.coefficient("x*y"),
                        "coef_y2w": rule.coefficient("y^2*w"),
                        "oja_error": max(
                            abs(rule.coefficient("x*y") - 1), abs(rule.coefficient("y^2*w") + 1)
                        ),
                        "max_other": others,
                        "rule": rule.to_expression(tol=0.02),
                    }
                )
            cell = rows[-len(seeds) :]
            print(
                f"noise {noise:.1f} fraction {fraction:.1f}: median R² weights "
                f"{np.median([r['r2_weights'] for r in cell]):.4f}, Oja error "
                f"{np.median([r['oja_error'] for r in cell]):.3g}",
                flush=True,
            )
            # After every cell, so that an interrupted grid can --resume.
            run.write_csv("oja_robustness.csv", pd.DataFrame(rows))

    def grid(field):
        return [
            [
                float(
                    np.median(
                        [
                            r[field]
                            for r in rows
                            if r["noise"] == nz and r["recorded_fraction"] == fr
                        ]
                    )
                )
                for fr in args.fractions
            ]
            for nz in args.noises
        ]

    r2_grid, err_grid = grid("r2_weights"), grid("oja_error")
    try:
        _heatmaps(run, args, r2_grid, err_grid)
    except ImportError:
        pass
    summary = {
        "noises": args.noises,
        "recorded_fractions": args.fractions,
        "seeds": args.seeds,
        "network": f"{n_in} -> {n_out}",
        "l2": args.l2,
        "median_r2_weights": r2_grid,
        "median_oja_error": err_grid,
        "csv": path,
        "run": str(run.path),
        "seconds": time.perf_counter() - start,
    }
    run.finish(summary)
    _cli.print_json(summary)
    return summary


def _read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k == "seed":
                r[k] = int(v)
            elif k != "rule":
                r[k] = float(v)
    return rows


def _heatmaps(run, args, r2_grid, err_grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    r2 = np.asarray(r2_grid)
    err = np.maximum(np.asarray(err_grid), 1e-16)
    panels = [
        (
            axes[0],
            r2,
            "median R² of weights (held out)",
            "viridis",
            Normalize(r2.min(), 1.0),
            "{:.4f}",
        ),
        (
            axes[1],
            err,
            "median Oja coefficient error",
            "magma_r",
            LogNorm(err.min(), err.max()),
            "{:.2g}",
        ),
    ]
    for ax, values, title, cmap, norm, fmt in panels:
        im = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(args.fractions)), [f"{f:g}" for f in args.fractions])
        ax.set_yticks(range(len(args.noises)), [f"{n:g}" for n in args.noises])
        ax.set(xlabel="recorded fraction", ylabel="noise (× activity std)", title=title)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                rgba = im.cmap(norm(v))
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(
                    j,
                    i,
                    fmt.format(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if dark else "k",
                )
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    run.save_figure(fig, "oja_robustness.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
