"""Paired comparisons of per-fly scores (Wilcoxon signed-rank)."""

import dataclasses
from typing import Literal

import numpy as np
from jaxtyping import Array, Float

from .._errors import MetaplasticError, require, validates_input
from ._results import FlyFits


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """A paired comparison of two sets of per-fly scores (`compare_scores`).

    - `n`: flies compared; `n_improved`: flies where `b > a`; `n_worse`: where `b < a`.
    - `median_difference`: median of `b − a`.
    - `statistic`, `p_value`: the two-sided Wilcoxon signed-rank test of `b − a`
      (`scipy.stats.wilcoxon`; zero differences are dropped, and the p-value is NaN when
      no difference is non-zero).
    """

    n: int
    n_improved: int
    n_worse: int
    median_difference: float
    statistic: float
    p_value: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@validates_input
def compare_scores(
    a: Float[np.ndarray, " flies"] | Float[Array, " flies"],
    b: Float[np.ndarray, " flies"] | Float[Array, " flies"],
) -> PairedComparison:
    """Compare paired per-fly scores of two models: how many flies `b` improves on `a` and
    the Wilcoxon signed-rank p-value of the differences.

    Needs scipy (`pip install "metaplastic[data]"`).

    **Arguments:**

    - `a`, `b`: one score per fly, the same flies in the same order, `(flies,)`.

    **Returns:**

    A `PairedComparison`.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise MetaplasticError(
            f"compare_scores needs two equal-length 1-D score arrays, got {a.shape} and {b.shape}."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MetaplasticError("compare_scores got a non-finite score.")
    stats = require("scipy.stats", "data", "The Wilcoxon signed-rank test")
    d = b - a
    if np.any(d != 0):
        test = stats.wilcoxon(b, a)
        statistic, p_value = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_value = float("nan"), float("nan")
    return PairedComparison(
        n=int(d.size),
        n_improved=int((d > 0).sum()),
        n_worse=int((d < 0).sum()),
        median_difference=float(np.median(d)),
        statistic=statistic,
        p_value=p_value,
    )


@validates_input
def compare_families(
    a: FlyFits,
    b: FlyFits,
    score: Literal["in_sample", "held_out", "block1", "block1_held_out"] = "in_sample",
    *,
    fraction: float | None = None,
) -> PairedComparison:
    """Paired comparison of two families fitted to the same flies (`b` against `a`).

    **Arguments:**

    - `a`, `b`: `FlyFits` of the same flies.
    - `score`: which score to compare.
    - `fraction`: for the held-out scores, the training fraction (default the first).

    **Returns:**

    A `PairedComparison` (`n_improved`: flies where `b` scores higher).
    """
    if a.names != b.names:
        raise MetaplasticError("The two fits hold different flies; compare the same flies.")
    if score in ("in_sample", "block1"):
        return compare_scores(getattr(a, score), getattr(b, score))
    if score not in ("held_out", "block1_held_out"):
        raise MetaplasticError(f"Unknown score {score!r}.")
    if not a.fractions or not b.fractions:
        raise MetaplasticError(
            f"No held-out split was fitted (fractions=()); cannot compare {score!r}."
        )
    f = a.fractions[0] if fraction is None else float(fraction)
    if f not in a.fractions or f not in b.fractions:
        raise MetaplasticError(f"fraction {f} was not fitted (have {a.fractions}).")
    return compare_scores(
        getattr(a, score)[a.fractions.index(f)], getattr(b, score)[b.fractions.index(f)]
    )
