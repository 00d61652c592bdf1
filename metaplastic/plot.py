"""Figures for plasticity-rule inference (matplotlib, the optional extra `metaplastic[plot]`).

Every function returns a `matplotlib.figure.Figure` (made without pyplot, so it is safe in
scripts, threads and on machines without a display) and, given `path=`, also saves it
atomically (the format follows the suffix). Tables and results may be given as the pandas
DataFrames of the results' `to_dataframe()` (pandas itself is not needed otherwise). Without matplotlib installed they raise
`MissingDependencyError` (an `ImportError` and a `MetaplasticError`) that names
`pip install "metaplastic[plot]"`.
"""

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import ArrayLike, Float

from ._errors import MetaplasticError, require, validates_input
from ._frames import is_dataframe
from ._io import atomic_open
from .rules import TaylorRule, format_monomial


__all__ = [
    "coefficient_distributions",
    "coefficient_trajectories",
    "deviance_comparison",
    "held_out_curve",
    "sweep_heatmap",
    "weight_trajectories",
]


def _figure(width: float, height: float, **subplots: Any) -> tuple[Any, Any]:
    figure_module = require("matplotlib.figure", "plot", "metaplastic.plot")
    fig = figure_module.Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


def _finish(fig: Any, path: str | os.PathLike | None) -> Any:
    if path is not None:
        path = Path(path)
        fmt = path.suffix[1:].lower() or "png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=150)
    return fig


def _colours(n: int) -> list[Any]:
    cm = require("matplotlib", "plot", "metaplastic.plot").colormaps
    cmap = cm["tab10"] if n <= 10 else cm["tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _taylor_rules(tree: Any) -> list[TaylorRule]:
    return [
        leaf
        for leaf in jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, TaylorRule))
        if isinstance(leaf, TaylorRule)
    ]


def _terms_of(rule_coefficients: np.ndarray, factors: tuple[str, ...]) -> list[tuple[int, ...]]:
    k = len(factors)
    return list(np.ndindex(*rule_coefficients.shape[rule_coefficients.ndim - k :]))


_COEFFICIENT_COLUMN = re.compile(r"^(.*)coefficients\[(\d+(?:, \d+)*)\]$")


def _history_coefficients(
    frame: Any, rule_index: int, factors: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The Taylor coefficients of a `History.to_dataframe()`, `(steps, members, *shape)`,
    and the rule's factors."""
    names = [str(c) for c in frame.columns]
    rules: dict[str, dict[tuple[int, ...], str]] = {}
    for name in names:
        match = _COEFFICIENT_COLUMN.match(name)
        if match:
            index = tuple(int(i) for i in match.group(2).split(", "))
            rules.setdefault(match.group(1), {})[index] = name
    if not rules or "step" not in names:
        raise MetaplasticError(
            "The table is not a History.to_dataframe() with Taylor-rule coefficients: it needs "
            f"a 'step' column and columns like '.rule.coefficients[1, 1, 0]'; it has {names}."
        )
    if not 0 <= rule_index < len(rules):
        raise MetaplasticError(f"rule_index {rule_index} is out of range ({len(rules)} rules).")
    columns = list(rules.values())[rule_index]
    shape = tuple(max(i[a] for i in columns) + 1 for a in range(len(next(iter(columns)))))
    if factors is None or len(factors) != len(shape):
        raise MetaplasticError(
            f"A DataFrame does not record the rule's factors: pass factors= with {len(shape)} "
            "names, e.g. factors=('x', 'y', 'w')."
        )
    if len(columns) != int(np.prod(shape)) or len(set(shape)) != 1:
        raise MetaplasticError(
            f"The table's coefficient columns do not fill a Taylor rule's tensor {shape}."
        )
    members = frame["member"].nunique() if "member" in names else 1
    if "member" in names:
        frame = frame.sort_values(["step", "member"], kind="stable")
    else:
        frame = frame.sort_values("step", kind="stable")
    if len(frame) % members:
        raise MetaplasticError(
            f"The table has {len(frame)} rows, not one per step for each of {members} members."
        )
    steps = len(frame) // members
    out = np.zeros((steps, members) + shape)
    for index, name in columns.items():
        values = _finite_array(f"column {name!r}", frame[name])
        out[(slice(None), slice(None)) + index] = values.reshape(steps, members)
    return out, tuple(str(f) for f in factors)


@validates_input
def coefficient_trajectories(
    history: Any,
    *,
    true_rule: TaylorRule | None = None,
    terms: Sequence[str] | None = None,
    top: int = 6,
    rule_index: int = 0,
    factors: Sequence[str] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Taylor coefficients over the steps of a fit, with the true values as dashed lines.

    **Arguments:**

    - `history`: a fit's `History` (`result.history`), or its `to_dataframe()` (one row per
      step, and member; a column per coefficient, `.rule.coefficients[1, 1, 0]`); ensembles
      draw one thin line per member and their median.
    - `true_rule`: the ground-truth `TaylorRule`, if known.
    - `terms`: the monomials to draw (default: the true rule's terms and the `top` largest
      fitted ones).
    - `rule_index`: which Taylor rule, if the model has several.
    - `factors`: the rule's factors, e.g. `("x", "y", "w")`: needed with a DataFrame, which
      does not record them (default: the true rule's).
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    if is_dataframe(history):
        if factors is None and true_rule is not None:
            factors = true_rule.factors
        per_member, factors = _history_coefficients(history, rule_index, factors)
        order = per_member.shape[-1] - 1
    else:
        rules = _taylor_rules(getattr(history, "params", None))
        if not rules:
            raise MetaplasticError("The history holds no trained Taylor-rule coefficients to plot.")
        if not 0 <= rule_index < len(rules):
            raise MetaplasticError(f"rule_index {rule_index} is out of range ({len(rules)} rules).")
        rule = rules[rule_index]
        factors, order = rule.factors, rule.order
        c = np.asarray(rule.coefficients, dtype=np.float64)
        k = len(factors)
        per_member = c.reshape(c.shape[0], -1, *c.shape[c.ndim - k :])  # (steps, members, ...)
    steps = per_member.shape[0]
    if true_rule is not None and (true_rule.factors != factors or true_rule.order != order):
        raise MetaplasticError(
            f"true_rule has factors {true_rule.factors}/order {true_rule.order}, the fitted "
            f"rule {factors}/order {order}."
        )
    lookup = {format_monomial(e, factors): e for e in _terms_of(per_member, factors)}
    if terms is None:
        final = np.abs(np.median(per_member[-1], axis=0))
        chosen = sorted(lookup.values(), key=lambda e: -final[e])[:top]
        if true_rule is not None:
            truth = np.asarray(true_rule.coefficients)
            chosen = [e for e in lookup.values() if truth[e] != 0] + [
                e for e in chosen if truth[e] == 0
            ]
    else:
        unknown = [t for t in terms if t not in lookup]
        if unknown:
            raise MetaplasticError(
                f"Unknown terms {unknown}; this rule's monomials look like {list(lookup)[:6]}."
            )
        chosen = [lookup[t] for t in terms]
    fig, ax = _figure(7.0, 4.2)
    x = np.arange(1, steps + 1)
    members = per_member.shape[1]
    truth = None if true_rule is None else np.asarray(true_rule.coefficients, dtype=np.float64)
    for colour, exps in zip(_colours(len(chosen)), chosen):
        label = format_monomial(exps, factors)
        if truth is not None:
            label += f" (true {truth[exps]:.3g})"
        series = per_member[(slice(None), slice(None)) + exps]  # (steps, members)
        if members > 1:
            ax.plot(x, series, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(x, np.median(series, axis=1), color=colour, linewidth=2.0, label=label)
        else:
            ax.plot(x, series[:, 0], color=colour, linewidth=2.0, label=label)
        if truth is not None and truth[exps] != 0:
            ax.axhline(float(truth[exps]), color=colour, linestyle="--", linewidth=1.2)
    ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("coefficient")
    if steps == 1:
        ax.set_xlim(0.5, 1.5)
    ax.set_title(
        title
        or "Rule coefficients during the fit" + (" (dashed: true values)" if true_rule else "")
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="term")
    return _finish(fig, path)


@validates_input
def weight_trajectories(
    true_weights: Float[ArrayLike, "time n_out n_in"],
    fitted_weights: Float[ArrayLike, "time n_out n_in"],
    *,
    synapses: int = 6,
    seed: int = 0,
    xlabel: str = "time step",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """True against fitted weight trajectories of one simulated trajectory.

    Left: a few synapses over time (solid: true, dashed: fitted). Right: every weight at
    every step, fitted against true, with the identity line and R².

    **Arguments:**

    - `true_weights`, `fitted_weights`: `(time, n_out, n_in)` (or `(time, n)`), e.g.
      `simulate(layer, w0, x, return_weights=True).weights`.
    - `synapses`: how many synapses to draw on the left (chosen at random with `seed`).
    - `xlabel`: the label of the time axis (e.g. `"trial"` for behaviour).
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    a = _finite_array("true_weights", true_weights)
    b = _finite_array("fitted_weights", fitted_weights)
    if a.shape != b.shape or a.ndim < 2 or a.shape[0] < 1:
        raise MetaplasticError(
            "true_weights and fitted_weights must share a shape (time, ...), got "
            f"{a.shape} and {b.shape}."
        )
    t = a.shape[0]
    a2, b2 = a.reshape(t, -1), b.reshape(t, -1)
    rng = np.random.default_rng(seed)
    count = max(1, min(int(synapses), a2.shape[1]))
    pick = np.sort(rng.choice(a2.shape[1], count, replace=False))
    fig, (left, right) = _figure(10.0, 4.0, ncols=2, width_ratios=[1.6, 1.0])
    steps = np.arange(1, t + 1)
    for colour, j in zip(_colours(count), pick):
        left.plot(steps, a2[:, j], color=colour, linewidth=1.6, alpha=0.9)
        left.plot(steps, b2[:, j], color=colour, linewidth=1.6, linestyle="--", alpha=0.9)
    left.plot([], [], color="0.3", label="true")
    left.plot([], [], color="0.3", linestyle="--", label="fitted")
    left.legend(frameon=False)
    left.set_xlabel(xlabel)
    left.set_ylabel("weight")
    left.set_title(f"{count} synapses")
    ss_res = float(np.sum((a2 - b2) ** 2))
    ss_tot = float(np.sum((a2 - a2.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    right.scatter(a2.ravel(), b2.ravel(), s=4, alpha=0.3, color="tab:blue", linewidths=0)
    lo, hi = float(min(a2.min(), b2.min())), float(max(a2.max(), b2.max()))
    right.plot([lo, hi], [lo, hi], color="0.2", linewidth=1.0)
    right.set_xlabel("true weight")
    right.set_ylabel("fitted weight")
    right.set_title(f"all weights, R² = {r2:.3f}")
    right.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title or "Weight trajectories: true vs fitted rule")
    return _finish(fig, path)


def _finite_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MetaplasticError(f"{name} must be an array of numbers: {err}") from None
    if not np.all(np.isfinite(arr)):
        raise MetaplasticError(f"{name} holds NaN or Inf values.")
    return arr


def _columns(table: Any) -> dict[str, list[Any]]:
    """A table given as a pandas DataFrame, a list of row dicts or a dict of columns, as a
    dict of columns."""
    if is_dataframe(table):
        cols = {str(k): table[k].tolist() for k in table.columns}
    elif isinstance(table, Mapping):
        cols = {str(k): list(np.asarray(v).tolist()) for k, v in table.items()}
    elif isinstance(table, Sequence) and all(isinstance(r, Mapping) for r in table):
        names: list[str] = []
        for r in table:
            names += [str(k) for k in r if str(k) not in names]
        cols = {k: [r.get(k) for r in table] for k in names}
    else:
        raise MetaplasticError(
            "A table must be a pandas DataFrame, a list of row dicts or a dict of columns."
        )
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise MetaplasticError(f"The table's columns have different lengths {sorted(lengths)}.")
    return cols


@validates_input
def sweep_heatmap(
    table: Any,
    *,
    row: str = "noise_std",
    column: str = "recorded_fraction",
    value: str = "r2_weights",
    aggregate: str = "median",
    fmt: str = ".2f",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """A heatmap of a sweep, e.g. recovery R² over noise × recorded fraction.

    **Arguments:**

    - `table`: the sweep's results, one row per run: a pandas DataFrame (e.g. a sweep's CSV
      read by `pandas.read_csv`, or a result's `to_dataframe()`), a list of row dicts or a
      dict of columns; rows that share a cell (e.g. several seeds) are combined with
      `aggregate` (`"median"`, `"mean"`, `"min"` or `"max"`).
    - `row`, `column`, `value`: the column names for the y axis, x axis and colour.
    - `fmt`: the format of the number written in each cell.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    cols = _columns(table)
    for name in (row, column, value):
        if name not in cols:
            raise MetaplasticError(f"The table has no column {name!r}; it has {sorted(cols)}.")
    reducers = {"median": np.median, "mean": np.mean, "min": np.min, "max": np.max}
    if aggregate not in reducers:
        raise MetaplasticError(f"aggregate must be one of {sorted(reducers)}, got {aggregate!r}.")
    values = np.asarray(cols[value], dtype=np.float64)
    rows_u = sorted(set(cols[row]))
    cols_u = sorted(set(cols[column]))
    grid = np.full((len(rows_u), len(cols_u)), np.nan)
    counts = np.zeros_like(grid, dtype=int)
    for i, rv in enumerate(rows_u):
        for j, cv in enumerate(cols_u):
            sel = [
                v
                for v, a, b in zip(values, cols[row], cols[column])
                if a == rv and b == cv and np.isfinite(v)
            ]
            counts[i, j] = len(sel)
            if sel:
                grid[i, j] = reducers[aggregate](sel)
    fig, ax = _figure(1.2 + 1.1 * len(cols_u), 1.0 + 0.75 * len(rows_u))
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    lo, hi = image.get_clim()
    for i in range(len(rows_u)):
        for j in range(len(cols_u)):
            if np.isfinite(grid[i, j]):
                light = (grid[i, j] - lo) / (hi - lo) < 0.5 if hi > lo else True
                ax.text(
                    j,
                    i,
                    format(grid[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if light else "black",
                )
            else:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.5")
    ax.set_xticks(range(len(cols_u)), [f"{c:g}" if isinstance(c, float) else c for c in cols_u])
    ax.set_yticks(range(len(rows_u)), [f"{r:g}" if isinstance(r, float) else r for r in rows_u])
    ax.set_xlabel(column.replace("_", " "))
    ax.set_ylabel(row.replace("_", " "))
    repeats = sorted(set(counts[counts > 0].tolist()))
    note = f" ({aggregate} of {repeats[0]})" if len(repeats) == 1 and repeats[0] > 1 else ""
    ax.set_title(title or f"{value.replace('_', ' ')}{note}")
    fig.colorbar(image, ax=ax, label=value.replace("_", " "))
    return _finish(fig, path)


def _coefficients_of_frame(frame: Any, prefix: str) -> dict[str, np.ndarray]:
    """`{term: values}` of a DataFrame with `term` and `estimate` columns (one row per fit and
    term) or with one column per term named `prefix + term` (one row per fit)."""
    names = [str(c) for c in frame.columns]
    if "term" in names and "estimate" in names:
        if "family" in names and frame["family"].nunique() > 1:
            raise MetaplasticError(
                "The table holds several families "
                f"{sorted(frame['family'].unique())}: select one, e.g. "
                "frame[frame['family'] == 'covariance']."
            )
        terms = list(dict.fromkeys(frame["term"].tolist()))
        return {t: frame.loc[frame["term"] == t, "estimate"].to_numpy() for t in terms}
    wide = {n[len(prefix) :]: frame[n].to_numpy() for n in names if n.startswith(prefix)}
    if not prefix or not wide:
        raise MetaplasticError(
            "The table needs 'term' and 'estimate' columns (one row per fit and term) or "
            f"coefficient columns named {prefix!r} + term (one row per fit); it has {names}."
        )
    return wide


@validates_input
def coefficient_distributions(
    fits: Any,
    *,
    terms: Sequence[str] | None = None,
    top: int = 8,
    true_rule: TaylorRule | None = None,
    prefix: str = "coef_",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Per-fly (per-fit) distributions of the fitted coefficients, one column per term.

    **Arguments:**

    - `fits`: a list of fitted `TaylorRule`s (one per fly), a dict `{term: values per fly}`,
      or a pandas DataFrame: one row per fly with a column per term named `prefix + term`
      (`FlyFits.to_dataframe()`: `coef_x*r`, or `block1_coef_x*r` with
      `prefix="block1_coef_"`), or one row per fit and term with columns `term` and
      `estimate` (the `to_dataframe()` of an ensemble's `Posterior` or `Selection`, or of
      one family of `FlyIntervals`).
    - `terms`: which monomials to show (default: the `top` largest median magnitudes).
    - `true_rule`: draw the true values as short black bars.
    - `prefix`: the start of the coefficient columns of a wide DataFrame.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    if is_dataframe(fits):
        fits = _coefficients_of_frame(fits, prefix)
    if isinstance(fits, Mapping):
        table = {str(k): _finite_array(f"values of {k!r}", v).ravel() for k, v in fits.items()}
        sizes = {len(v) for v in table.values()}
        if not table or 0 in sizes:
            raise MetaplasticError("coefficient_distributions needs at least one value per term.")
    else:
        rules = list(fits) if isinstance(fits, Sequence) else []
        if not rules or not all(isinstance(r, TaylorRule) for r in rules):
            raise MetaplasticError(
                "coefficient_distributions takes a list of TaylorRules or a dict of values."
            )
        first = rules[0]
        if any(r.factors != first.factors or r.order != first.order for r in rules):
            raise MetaplasticError("All rules must share their factors and order.")
        stacked = np.stack([np.asarray(r.coefficients, dtype=np.float64) for r in rules])
        table = {
            format_monomial(e, first.factors): stacked[(slice(None),) + e]
            for e in np.ndindex(*first.coefficients.shape)
        }
    if terms is None:
        names = sorted(table, key=lambda t: -abs(float(np.median(table[t]))))[:top]
    else:
        missing = [t for t in terms if t not in table]
        if missing:
            raise MetaplasticError(f"Unknown terms {missing}; known: {sorted(table)[:8]}...")
        names = list(terms)
    truth = None
    if true_rule is not None:
        truth = {
            format_monomial(e, true_rule.factors): float(np.asarray(true_rule.coefficients)[e])
            for e in np.ndindex(*true_rule.coefficients.shape)
        }
    fig, ax = _figure(1.4 + 0.9 * len(names), 4.0)
    rng = np.random.default_rng(0)
    for i, (name, colour) in enumerate(zip(names, _colours(len(names)))):
        v = table[name]
        jitter = rng.uniform(-0.18, 0.18, len(v))
        ax.scatter(i + jitter, v, s=18, color=colour, alpha=0.75, linewidths=0)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        ax.plot([i - 0.3, i + 0.3], [med, med], color=colour, linewidth=2.5)
        ax.plot([i, i], [q1, q3], color=colour, linewidth=1.0)
        if truth is not None and name in truth:
            ax.plot([i - 0.35, i + 0.35], [truth[name]] * 2, color="black", linewidth=1.2, ls="--")
    ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("coefficient")
    n = len(next(iter(table.values())))
    ax.set_title(title or f"Fitted coefficients across {n} fits (bar: median, line: IQR)")
    return _finish(fig, path)


def _column_of(frame: Any, column: str | None, what: str) -> np.ndarray:
    names = [str(c) for c in frame.columns]
    if column is None or column not in names:
        given = "no column= given" if column is None else f"no column {column!r}"
        raise MetaplasticError(f"{what}: {given}; the table has columns {names}.")
    return frame[column].to_numpy()


def _scores_by_model(scores: Any, column: str | None) -> Any:
    """`{model: scores}` of the forms `deviance_comparison` accepts; other input unchanged."""
    if is_dataframe(scores):
        names = [str(c) for c in scores.columns]
        if "model" not in names:  # one column per model
            return {name: scores[c].to_numpy() for name, c in zip(names, scores.columns)}
        pair = next((c for c in ("fly", "member") if c in names), None)
        if pair is None:
            raise MetaplasticError(
                "A table with a 'model' column needs a 'fly' or 'member' column to pair the "
                f"models' scores; it has {names}."
            )
        values = _column_of(scores, column, "scores")
        wide: dict[str, dict[Any, Any]] = {}
        for model, who, v in zip(scores["model"].tolist(), scores[pair].tolist(), values):
            wide.setdefault(str(model), {})[who] = v
        flies = list(dict.fromkeys(scores[pair].tolist()))
        missing = {m: [f for f in flies if f not in v] for m, v in wide.items()}
        missing = {m: f for m, f in missing.items() if f}
        if missing:
            raise MetaplasticError(f"scores: models without a score for some {pair}: {missing}.")
        return {m: np.asarray([v[f] for f in flies]) for m, v in wide.items()}
    if isinstance(scores, Mapping) and any(is_dataframe(v) for v in scores.values()):
        out: dict[Any, Any] = {}
        first: tuple[Any, list[Any]] | None = None  # the first table with flies, and them
        for name, v in scores.items():
            if not is_dataframe(v):
                out[name] = v
                continue
            out[name] = _column_of(v, column, f"scores[{name!r}]")
            if "fly" not in v.columns:
                continue
            flies = v["fly"].tolist()
            if first is None:
                first = (name, flies)
            elif flies != first[1]:
                raise MetaplasticError(
                    f"scores[{name!r}] and scores[{first[0]!r}] list different flies (or the "
                    "same in another order); the comparison pairs them row by row."
                )
        return out
    return scores


@validates_input
def deviance_comparison(
    scores: Any,
    *,
    column: str | None = None,
    ylabel: str = "% deviance explained",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Paired per-fly comparison of models: a bar for each model's mean, one point per fly,
    and a grey line joining each fly's points across models.

    **Arguments:**

    - `scores`: every model scored on the same flies in the same order (e.g. percent
      deviance explained on held-out trials), as
        - `{model name: one value per fly}`;
        - `{model name: DataFrame}` with the scores in `column`, e.g. each family's
          `FlyFits.to_dataframe()` with `column="in_sample"` (their `fly` columns must
          agree);
        - a DataFrame with one column per model and one row per fly;
        - or a DataFrame with one row per model and fly (or member): a `model` column, the
          scores in `column`, and the fly in `fly` or `member`, e.g.
          `Comparison.to_dataframe()` of an ensemble with `column="held_out"`.
    - `column`: the column of the scores in the DataFrames.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    scores = _scores_by_model(scores, column)
    if not isinstance(scores, Mapping) or not scores:
        raise MetaplasticError("scores must be a non-empty dict {model: values per fly}.")
    names = [str(k) for k in scores]
    values = [_finite_array(f"scores[{k!r}]", v).ravel() for k, v in scores.items()]
    sizes = {len(v) for v in values}
    if len(sizes) != 1 or 0 in sizes:
        raise MetaplasticError(
            f"Every model needs one score per fly, the same flies for all; got sizes {sizes}."
        )
    matrix = np.stack(values, axis=1)  # (flies, models)
    flies = matrix.shape[0]
    fig, ax = _figure(1.6 + 1.3 * len(names), 4.2)
    x = np.arange(len(names))
    colours = _colours(len(names))
    ax.bar(x, matrix.mean(axis=0), color=colours, alpha=0.35, width=0.6, zorder=1)
    for fly in range(flies):
        ax.plot(x, matrix[fly], color="0.55", linewidth=0.7, alpha=0.7, zorder=2)
    for j in range(len(names)):
        ax.scatter(np.full(flies, x[j]), matrix[:, j], s=16, color=colours[j], zorder=3)
        ax.annotate(
            f"mean {matrix[:, j].mean():.3g}",
            (x[j], matrix[:, j].max()),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.axhline(0.0, color="0.4", linewidth=0.6, zorder=0)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.1 * (hi - lo))  # room for the labels above the points
    longest = max(len(line) for n in names for line in n.splitlines())
    ax.set_xticks(x, names, rotation=20 if longest > 10 else 0, ha="center")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"Per-fly comparison ({flies} flies; bar: mean)")
    return _finish(fig, path)


@validates_input
def held_out_curve(
    fractions: Sequence[float],
    scores: Mapping[str, Any],
    *,
    column: str | None = None,
    xlabel: str = "fraction of trials fitted",
    ylabel: str = "% deviance explained (held out)",
    title: str | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Held-out score against the fraction of trials the fit saw: per model, the median
    over flies with its interquartile range.

    **Arguments:**

    - `fractions`: the training fractions, `(F,)`.
    - `scores`: `{model name: (F, flies) array}`, row `i` scored after fitting on the first
      `fractions[i]` of each fly's trials; or `{model name: DataFrame}` with one row per fly
      and the scores of fraction `f` in the column `f"{column}_{f:g}"`, e.g. each family's
      `FlyFits.to_dataframe()` with `column="held_out"` (`held_out_0.5`, ...) or
      `column="block1_held_out"`.
    - `column`: the start of the score columns in the DataFrames.
    - `ax`: draw into this matplotlib axes instead of a new figure.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    f = _finite_array("fractions", fractions).ravel()
    if f.size == 0:
        raise MetaplasticError("held_out_curve needs at least one fraction.")
    if not isinstance(scores, Mapping) or not scores:
        raise MetaplasticError("scores must be a non-empty dict {model: (fractions, flies)}.")

    def of_frame(name: str, frame: Any) -> np.ndarray:
        what = f"scores[{name!r}]"
        if column is None:
            raise MetaplasticError(
                f"{what} is a table: give column=, e.g. column='held_out' for its columns "
                "held_out_<fraction>."
            )
        return np.stack([_column_of(frame, f"{column}_{x:g}", what) for x in f])

    scores = {name: of_frame(name, v) if is_dataframe(v) else v for name, v in scores.items()}
    if ax is None:
        fig, ax = _figure(5.0, 3.8)
    else:
        fig = ax.figure
    for (name, values), colour in zip(scores.items(), _colours(len(scores))):
        v = _finite_array(f"scores[{name!r}]", values)
        if v.ndim != 2 or v.shape[0] != f.size or v.shape[1] == 0:
            raise MetaplasticError(
                f"scores[{name!r}] must have shape ({f.size}, flies), got {v.shape}."
            )
        q1, med, q3 = np.percentile(v, [25, 50, 75], axis=1)
        ax.fill_between(f, q1, q3, color=colour, alpha=0.2, linewidth=0)
        ax.plot(f, med, marker="o", color=colour, label=str(name))
    ax.axhline(0.0, color="0.4", linewidth=0.6, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    n = _finite_array("values", next(iter(scores.values()))).shape[1]
    ax.set_title(title or f"Held-out deviance (median and IQR over {n} flies)")
    return _finish(fig, path)
