"""The command-line plumbing the example scripts share: one parser builder with the common
flags, one parser for list-valued flags, the run folder, and the JSON last line.

The scripts run as `python examples/NAME.py`, so this folder is on `sys.path` and they
import it as `import _cli`. It imports nothing heavy at module level, so that `--help`
answers at once.

- `parser(__doc__, ...)`: an `argparse.ArgumentParser` whose description is the script's
  docstring, with `--out` (the folder in which the run folder is created, default `out`),
  `--seed`, `--no-progress`, `--compile-cache DIR` and `--no-compile-cache`, and opt-in
  `--resume RUN_FOLDER` and `--quick`.
- `compile_cache(args)`: turn on JAX's persistent compilation cache as the flags say (by
  default in the user cache folder, through `metaplastic.runs.enable_compile_cache`), so
  that a second run of a script loads its compiled programs instead of compiling them.
- `list_of(float)`: the `type=` of every list-valued flag: comma-separated values, as in
  `--fractions 0.5,0.7`. A bad item is a clean argparse error (exit status 2) that names
  the flag and the item.
- `positive_int`, `positive_float`, `non_negative_float`, `fraction`: the `type=` of
  counts, rates, penalties and noise levels, and fractions in (0, 1]: an out-of-range value
  is an argparse error (exit status 2) naming the flag, not a traceback from deep inside a
  fit.
- `open_run(args, name)`: the run folder named by `--resume` (refused if its recorded
  flags differ from these, but for `--out`, `--resume`, `--no-progress` and the script's
  own `may_differ`), or a new one under `--out`. With `--resume`, the parser has already
  taken every flag not given on the command line from the folder's `config.json`.
- `--help` shows every flag's default.
- `recovery_options(p, seeds=...)`: the flags of a simulated rule-recovery experiment.
- `fly_data_option(p)`: `--data`, the folder of the real flies' recordings.
- `needs_pandas(script)`: stop at once, saying how to install it, when pandas (which writes
  the script's tables) is missing, instead of after the script's fits.
- `print_json(summary)`: the last line of every script, one JSON object.
- `finish(run, summary)`: the end of a script: the run folder named in the summary, the
  summary written to it and printed as the last line.
"""

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and every flag's default in its help (unless the
    help already names it), also for flags without a help text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        shown = (
            action.option_strings
            and default is not argparse.SUPPRESS
            and default is not None
            and not isinstance(default, bool)
            and "default" not in text.lower()
        )
        if not shown:
            return text
        value = comma(default) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {value})".strip()


class ExampleParser(argparse.ArgumentParser):
    """An `ArgumentParser` that, with `--resume RUN_FOLDER`, takes every flag not given on
    the command line from the run folder's recorded configuration (`config.json`), so that
    a resume needs no flag but `--resume`; flags given explicitly still win (and a
    difference from the record is refused by `open_run`)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        default = action.default
        if not action.help and action.option_strings and default not in (None, False):
            if default is not argparse.SUPPRESS and not isinstance(default, bool):
                value = comma(default) if isinstance(default, (list, tuple)) else default
                action.help = f"default: {value}".replace("%", "%%")
        return action

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        folder = getattr(ns, "resume", None)
        recorded = recorded_config(folder) if folder else None
        if recorded:
            given = self._explicit(args)
            for key, value in recorded.items():
                if key in given or key in RESUME_MAY_DIFFER or not hasattr(ns, key):
                    continue
                if isinstance(getattr(ns, key), tuple) and isinstance(value, list):
                    value = tuple(value)
                setattr(ns, key, value)
        return ns

    def _explicit(self, args: Any) -> set[str]:
        """The destinations of the flags given on the command line."""
        saved = [(action, action.default) for action in self._actions]
        try:
            for action, _ in saved:
                action.default = argparse.SUPPRESS
            given, _ = super().parse_known_args(args)
        finally:
            for action, default in saved:
                action.default = default
        return set(vars(given))


def recorded_config(folder: str) -> dict[str, Any] | None:
    """The configuration recorded in a run folder's `config.json`, or `None` when there is
    none to read (`open_run` then says what is wrong with the folder)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    config = record.get("config") if isinstance(record, dict) else None
    return config if isinstance(config, dict) else None


def parser(
    doc: str | None,
    *,
    seed: bool = True,
    progress: bool = True,
    resume: str | None = None,
    quick: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of an example script, with the flags every script spells the same way.

    **Arguments:**

    - `doc`: the script's docstring, shown as is by `--help`.
    - `seed`: add `--seed` (int, default 0), the key of the script's random draws.
    - `progress`: add `--no-progress`, for scripts whose fits show a progress bar.
    - `resume`: if given, add `--resume RUN_FOLDER` (default `None`) with this help text.
    - `quick`: if given, add `--quick` with this help text.

    **Returns:** the parser; the script adds its own flags and calls `parse_args`.
    """
    p = ExampleParser(description=doc, formatter_class=HelpFormatter)
    p.add_argument(
        "--out", default="out", help="folder in which the run folder is created (default: out)"
    )
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help=f"JAX persistent compilation cache folder (default: {CACHE_FOLDER})",
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every program afresh: read and write no compilation cache",
    )
    if resume is not None:
        p.add_argument("--resume", metavar="RUN_FOLDER", default=None, help=resume)
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    return p


# Where compiled programs are cached by default, as `metaplastic.runs.default_compile_cache_dir`
# finds it (named here without importing JAX, so that `--help` answers at once).
CACHE_FOLDER = (
    "$METAPLASTIC_CACHE_DIR, else $JAX_COMPILATION_CACHE_DIR, else "
    "$XDG_CACHE_HOME/metaplastic/jax, else ~/.cache/metaplastic/jax"
)


def compile_cache(args: argparse.Namespace) -> str | None:
    """Turn on JAX's persistent compilation cache in the folder of `--compile-cache` (default:
    the user cache folder), or turn it off with `--no-compile-cache` (or `--compile-cache
    none`). Call it before anything is compiled.

    **Returns:** the absolute cache folder, or `None` when the cache is off.
    """
    import metaplastic as mp

    folder = getattr(args, "compile_cache", None)
    if getattr(args, "no_compile_cache", False) or folder == "none":
        mp.runs.disable_compile_cache()
        return None
    return str(mp.runs.enable_compile_cache(folder))


def positive_int(text: str) -> int:
    """An integer >= 1 (a count: seeds, steps, trajectories, sizes)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0 (a penalty, a noise level, a rate)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (a learning rate, a clipping norm)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A float in (0, 1] (a recorded or held-out fraction)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


def list_of(
    item: Callable[[str], Any],
    *,
    choices: Iterable[Any] | None = None,
    allow_empty: bool = False,
) -> Callable[[str], tuple]:
    """The `type=` of a list-valued flag: comma-separated items, each converted by `item`.

    Spaces around items and empty items are ignored (`"0.5, 0.7,"` is `(0.5, 0.7)`). A bad
    item raises `argparse.ArgumentTypeError`, which argparse reports as
    `argument --flag: ...` and exit status 2.

    **Arguments:**

    - `item`: the conversion of one item (`float`, `int`, `str`, ...).
    - `choices`: if given, the allowed items.
    - `allow_empty`: whether no items at all is a valid value.

    **Returns:** a function from the flag's string to a tuple of items.
    """
    allowed = None if choices is None else tuple(choices)
    name = getattr(item, "__name__", repr(item)).replace("_", " ")

    def parse(text: str) -> tuple:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                value = item(part)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                raise argparse.ArgumentTypeError(
                    f"bad item {part!r} in {text!r} (comma-separated {name} values expected): {err}"
                ) from None
            if allowed is not None and value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"bad item {part!r} in {text!r}: choose from {', '.join(map(str, allowed))}"
                )
            values.append(value)
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError(f"no items in {text!r}: give comma-separated values")
        return tuple(values)

    parse.__name__ = f"list of {name}"
    return parse


# The real fly recordings, next to the repository (never copied into it).
FLY_DATA = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "drosophila"
    )
)


def fly_data_option(p: argparse.ArgumentParser) -> None:
    """`--data`: the folder of the flies' `.mat` files (default `FLY_DATA`)."""
    p.add_argument(
        "--data",
        default=FLY_DATA,
        help="folder of Fly*.mat files (default: ../shared/data/drosophila from the repo root)",
    )


def check_fly_data(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error unless `--data` is a folder (the scripts that read the real flies)."""
    if not os.path.isdir(args.data):
        p.error(
            f"the Drosophila data folder {args.data!r} does not exist; pass --data with the "
            "folder of Fly*.mat files (see ../shared/data/drosophila/README.md)."
        )


def recovery_options(p: argparse.ArgumentParser, *, seeds: int) -> None:
    """The flags of a simulated rule-recovery experiment, shared by `reward_rule.py` and
    `rule_sweep.py`: `--seeds`, `--n-train`, `--n-test`, `--trials-per-block`."""
    p.add_argument(
        "--seeds", type=positive_int, default=seeds, help="fits per rule family (vmapped)"
    )
    p.add_argument(
        "--n-train", type=positive_int, default=18, help="training trajectories per seed"
    )
    p.add_argument("--n-test", type=positive_int, default=7, help="held-out trajectories per seed")
    p.add_argument("--trials-per-block", type=positive_int, default=80)


def needs_pandas(script: str) -> None:
    """Exit with a message naming the extra if pandas, which writes the tables of `script`,
    is not installed (it comes with the `plot` extra, which the README's example command
    installs)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"{script} writes its tables with pandas, which is not installed: "
            "pip install -e '.[plot]' (or pip install pandas)."
        ) from None


def comma(values: Iterable[Any]) -> str:
    """A list flag's value as it is typed: `comma((0.5, 0.7))` is `"0.5,0.7"`."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# Flags that may differ between a run and its resume: where the run folder is created (the
# resumed folder is given by --resume itself), whether a progress bar is shown, and where
# compiled programs are cached. Every other flag is a setting of the results and must be the
# recorded one.
RESUME_MAY_DIFFER = ("out", "resume", "no_progress", "compile_cache", "no_compile_cache")


def open_run(
    args: argparse.Namespace,
    name: str,
    *,
    config: dict[str, Any] | None = None,
    may_differ: Iterable[str] = (),
) -> Any:
    """The run folder of this invocation: a new one named `name` under `--out`, whose
    configuration is `config` (default: the parsed flags); or, with `--resume`, the given
    folder, reopened by `metaplastic.runs.open_run`. A resume whose configuration differs
    from the recorded one, other than in `RESUME_MAY_DIFFER` and `may_differ`, stops the
    script with an error that names each differing flag and both values (exit status 2)."""
    import metaplastic as mp

    if config is None:
        config = vars(args)
    if getattr(args, "resume", None):
        try:
            return mp.runs.open_run(args.resume, config, ignore=(*RESUME_MAY_DIFFER, *may_differ))
        except mp.MetaplasticError as err:
            print(f"error: --resume: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    return mp.runs.create_run(args.out, name=name, config=config)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/JAX scalars and arrays become numbers and lists, tuples
    lists, paths strings, and non-finite floats `None` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy and JAX scalars and arrays
        return jsonable(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def print_json(summary: dict[str, Any]) -> None:
    """Print `summary` as one line of JSON: the last line of every example script."""
    print(json.dumps(jsonable(summary), allow_nan=False), flush=True)


def finish(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The end of a script: name the run folder in `summary`, write it as the run's
    `summary.json` and print it as the JSON last line. Returns `summary`."""
    summary["run"] = str(run.path)
    run.finish(summary)
    print_json(summary)
    return summary


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) confidence interval of a binomial proportion `k / n`, as
    scipy computes it (scipy is an optional dependency: the "test" and "data" extras)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)
