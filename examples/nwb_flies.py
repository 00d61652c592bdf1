"""The 18 real flies through NWB files: convert the per-fly `.mat` recordings into NWB files
(one per fly: a trials table with one row per odour presentation — odour, choice, reward,
trial, block — and the fly as the file's subject), read them back, and run the family
comparison of `examples/drosophila.py` from them and from the `.mat` files with the same key.

Every number reported by the comparison (per-fly scores and coefficients, paired
comparisons) from the NWB files is compared with the same number from the `.mat` files;
`max_abs_diff_vs_mat` in the JSON last line is the largest difference (0 when the NWB path
loses nothing). The NWB files are written into the run folder (`nwb/`), and each family's
per-fly fits from them as `<family>_flies.csv` (`FlyFits.to_dataframe()`).

    python examples/nwb_flies.py                     # covariance and forgetting, all 18 flies
    python examples/nwb_flies.py --families covariance --fractions 0.5

Needs pynwb and pandas: pip install -e ".[nwb]".
"""

import time

import _cli


FAMILIES = ("covariance", "forgetting", "forgetting_y", "taylor", "mlp")


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="the first 3 flies, no held-out sweep: a check")
    _cli.fly_data_option(p)
    p.add_argument(
        "--families",
        type=_cli.list_of(str, choices=FAMILIES),
        default=("covariance", "forgetting"),
        help="rule families to fit, comma-separated (default: covariance,forgetting)",
    )
    p.add_argument(
        "--fractions",
        type=_cli.list_of(float),
        default=(0.5,),
        help="training fractions of the held-out sweep (default: 0.5)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.fractions = ()
    return args


def _first_files(folder, n):
    """The first `n` `.mat` files of `folder` in the loader's order (Fly2 before Fly10)."""
    import re
    from pathlib import Path

    number = lambda p: [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]
    files = [p for p in Path(folder).glob("*.mat") if not p.name.startswith(".")]
    return sorted(files, key=number)[:n]


def _numbers(fits, comparisons):
    """Every reported number, by name: the per-fly rows and the paired comparisons."""
    out = {}
    for family, fit in fits.items():
        for row in fit.rows():
            for key, value in row.items():
                if isinstance(value, float | int) and not isinstance(value, bool):
                    out[f"{family}/{row['fly']}/{key}"] = float(value)
    for name, comparison in comparisons.items():
        for key, value in comparison.as_dict().items():
            out[f"{name}/{key}"] = float(value)
    return out


def main(argv=None):
    args = parse_args(argv)
    _cli.compile_cache(args)
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    start = time.perf_counter()
    run = _cli.open_run(args, "nwb_flies")
    # --quick loads the first 3 files alone (not a selection of all 18), so that they are
    # padded to their own longest trial, as their NWB files are when read back.
    mat = mp.flies.load_drosophila(_first_files(args.data, 3) if args.quick else args.data)
    t0 = time.perf_counter()
    paths = mp.flies.save_nwb(mat, run.path / "nwb")
    t1 = time.perf_counter()
    nwb = mp.flies.load_nwb(run.path / "nwb")
    t2 = time.perf_counter()
    print(f"{len(paths)} NWB files written in {t1 - t0:.1f} s and read in {t2 - t1:.1f} s")

    numbers = {}
    for source, data in (("mat", mat), ("nwb", nwb)):
        fits = mp.flies.fit_families(
            data,
            args.families,
            fractions=args.fractions,
            key=jr.key(args.seed),
            progress=not args.no_progress,
        )
        comparisons = {}
        base = fits[args.families[0]]
        for family in args.families[1:]:
            for score in ("in_sample", "block1"):
                comparisons[f"{family}_vs_{args.families[0]}/{score}"] = mp.flies.compare_families(
                    base, fits[family], score
                )
        numbers[source] = _numbers(fits, comparisons)
        if source == "nwb":
            for family, fit in fits.items():
                run.write_csv(f"{family}_flies.csv", fit.to_dataframe())
    if numbers["mat"].keys() != numbers["nwb"].keys():
        raise SystemExit("the two paths reported different quantities")
    diffs = [
        abs(numbers["mat"][k] - numbers["nwb"][k])
        for k in numbers["mat"]
        if not (np.isnan(numbers["mat"][k]) and np.isnan(numbers["nwb"][k]))
    ]
    summary = {
        "flies": len(nwb),
        "nwb_files": len(paths),
        "families": list(args.families),
        "numbers_compared": len(numbers["mat"]),
        "max_abs_diff_vs_mat": float(max(diffs)),
        "nwb_write_s": round(t1 - t0, 2),
        "nwb_read_s": round(t2 - t1, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(
        f"{summary['numbers_compared']} numbers from the NWB files against the .mat files: "
        f"largest difference {summary['max_abs_diff_vs_mat']:.3g}"
    )
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
