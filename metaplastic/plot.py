"""Figures for plasticity-rule inference (matplotlib, the optional extra `metaplastic[plot]`).

Every function returns a `matplotlib.figure.Figure` (made without pyplot, so it is safe in
scripts, threads and on machines without a display) and, given `path=`, also saves it
atomically (the format follows the suffix). Without matplotlib installed they raise
`MissingDependencyError` (an `ImportError` and a `MetaplasticError`) that names
`pip install "metaplastic[plot]"`.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import ArrayLike, Float

from ._errors import MetaplasticError, require, validates_input
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


@validates_input
def coefficient_trajectories(
    history: Any,
    *,
    true_rule: TaylorRule | None = None,
    terms: Sequence[str] | None = None,
    top: int = 6,
    rule_index: int = 0,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Taylor coefficients over the steps of a fit, with the true values as dashed lines.

    **Arguments:**

    - `history`: a fit's `History` (`result.history`); ensembles draw one thin line per
      member and their median.
    - `true_rule`: the ground-truth `TaylorRule`, if known.
    - `terms`: the monomials to draw (default: the true rule's terms and the `top` largest
      fitted ones).
    - `rule_index`: which Taylor rule, if the model has several.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
    rules = _taylor_rules(getattr(history, "params", None))
    if not rules:
        raise MetaplasticError("The history holds no trained Taylor-rule coefficients to plot.")
    if not 0 <= rule_index < len(rules):
        raise MetaplasticError(f"rule_index {rule_index} is out of range ({len(rules)} rules).")
    rule = rules[rule_index]
    c = np.asarray(rule.coefficients, dtype=np.float64)
    k = len(rule.factors)
    steps = c.shape[0]
    per_member = c.reshape(steps, -1, *c.shape[c.ndim - k :])  # (steps, members, ...)
    if true_rule is not None and (
        true_rule.factors != rule.factors or true_rule.order != rule.order
    ):
        raise MetaplasticError(
            f"true_rule has factors {true_rule.factors}/order {true_rule.order}, the fitted "
            f"rule {rule.factors}/order {rule.order}."
        )
    lookup = {format_monomial(e, rule.factors): e for e in _terms_of(c, rule.factors)}
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
        label = format_monomial(exps, rule.factors)
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
    """A table given as a list of row dicts or a dict of columns, as a dict of columns."""
    if isinstance(table, Mapping):
        cols = {str(k): list(np.asarray(v).tolist()) for k, v in table.items()}
    elif isinstance(table, Sequence) and all(isinstance(r, Mapping) for r in table):
        names: list[str] = []
        for r in table:
            names += [str(k) for k in r if str(k) not in names]
        cols = {k: [r.get(k) for r in table] for k in names}
    else:
        raise MetaplasticError("A table must be a list of row dicts or a dict of columns.")
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

    - `table`: the sweep's results, a list of row dicts or a dict of columns; rows that
      share a cell (e.g. several seeds) are combined with `aggregate` (`"median"`,
      `"mean"`, `"min"` or `"max"`).
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


@validates_input
def coefficient_distributions(
    fits: Any,
    *,
    terms: Sequence[str] | None = None,
    top: int = 8,
    true_rule: TaylorRule | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Per-fly (per-fit) distributions of the fitted coefficients, one column per term.

    **Arguments:**

    - `fits`: a list of fitted `TaylorRule`s (one per fly), or a dict
      `{term: values per fly}`.
    - `terms`: which monomials to show (default: the `top` largest median magnitudes).
    - `true_rule`: draw the true values as short black bars.
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
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


@validates_input
def deviance_comparison(
    scores: Mapping[str, Any],
    *,
    ylabel: str = "% deviance explained",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Paired per-fly comparison of models: a bar for each model's mean, one point per fly,
    and a grey line joining each fly's points across models.

    **Arguments:**

    - `scores`: `{model name: one value per fly}`, every model scored on the same flies in
      the same order (e.g. percent deviance explained on held-out trials).
    - `path`: where to save the figure.

    **Returns:**

    The matplotlib `Figure`.
    """
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
      `fractions[i]` of each fly's trials.
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
