"""The train/test splits of a fly's trials (in sample, held out, block 1), the presentations
they select, and what a constant acceptance rate scores on them."""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool

from ..behaviour import (
    PackedChoiceDataset,
)
from ._records import DrosophilaData


def trial_splits(
    data: DrosophilaData, fractions: tuple[float, ...]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The configurations of `fit_families`: their names (`all`, `held_out_<f>`, `block1`,
    `block1_held_out_<f>`) and the trial masks `(configs, flies, trials)` each fits on and is
    scored on."""
    tm = np.asarray(data.dataset.trial_mask)
    first = np.asarray(data.block) == 0
    n_trials = tm.sum(axis=1)
    n_first = first.sum(axis=1)
    t = np.arange(tm.shape[1])[None, :]
    names, fit_on, score_on = ["all"], [tm], [tm]
    for f in fractions:
        cut = np.floor(f * n_trials).astype(int)[:, None]
        names.append(f"held_out_{f:g}")
        fit_on.append(tm & (t < cut))
        score_on.append(tm & (t >= cut))
    names.append("block1")
    fit_on.append(first)
    score_on.append(first)
    start = np.argmax(first, axis=1)[:, None]
    for f in fractions:
        cut = start + np.floor(f * n_first).astype(int)[:, None]
        names.append(f"block1_held_out_{f:g}")
        fit_on.append(first & (t < cut))
        score_on.append(first & (t >= cut))
    return names, np.stack(fit_on), np.stack(score_on)


def presentation_masks(
    packed: PackedChoiceDataset, trials: Bool[np.ndarray, "*batch trials"]
) -> Bool[np.ndarray, "*batch n"]:
    """The packed presentations that lie in the given trials: `True` where the presentation
    is valid and its trial is selected.

    **Arguments:**

    - `packed`: a `PackedChoiceDataset`, `(*batch, n, ...)`.
    - `trials`: which trials to keep, `(*batch, trials)`.

    **Returns:**

    A boolean array `(*batch, n)`.
    """
    index = np.asarray(packed.trial_index)
    trials = np.asarray(trials)
    picked = np.take_along_axis(trials, index, axis=-1)
    return np.asarray(packed.presentation_mask) & picked


def base_rate_scores(
    data: DrosophilaData, fractions: Sequence[float] = (0.5, 0.6, 0.7, 0.8)
) -> dict[str, np.ndarray]:
    """The percent deviance explained by a constant acceptance probability per fly (the
    fraction of presentations it accepted on the fitted trials), against `p = 0.5`, on the
    same train/test splits as `fit_families`.

    No plasticity is involved: this is how much of a rule's score a fly's base rate alone
    earns, since the no-plasticity null of `fit_families` starts at `p(accept) ≈ 0.5` and
    stays there. (The null's logits are `≈ 0` but not exactly, since its initial weights are
    small random numbers; here the reference is exactly `0.5`.)

    **Arguments:**

    - `data`: the flies.
    - `fractions`: the training fractions of the held-out splits.

    **Returns:**

    `{"in_sample": (flies,), "held_out": (F, flies), "block1": (flies,),
    "block1_held_out": (F, flies)}`, like the fields of `FlyFits`.
    """
    fractions = tuple(float(f) for f in fractions)
    names, fit_on, score_on = trial_splits(data, fractions)
    pm = np.asarray(data.dataset.presentation_mask)
    ch = np.asarray(data.dataset.choices)
    n_f = len(fractions)
    dev = np.zeros((len(names), len(data)))
    for c in range(len(names)):
        for i in range(len(data)):
            fit = pm[i] & fit_on[c, i][:, None]
            score = pm[i] & score_on[c, i][:, None]
            # A smoothed rate (add one acceptance and one rejection), so that a held-out
            # rejection after an accept-only stretch has a finite cost.
            p = (ch[i][fit].sum() + 1.0) / (fit.sum() + 2.0)
            k, n = ch[i][score].sum(), score.sum()
            ll = k * np.log(p) + (n - k) * np.log1p(-p)
            ll0 = n * np.log(0.5)
            dev[c, i] = 100.0 * (ll - ll0) / -ll0
    i_block1 = names.index("block1")
    return {
        "in_sample": dev[0],
        "held_out": dev[1 : 1 + n_f].reshape(n_f, len(data)),
        "block1": dev[i_block1],
        "block1_held_out": dev[i_block1 + 1 :].reshape(n_f, len(data)),
    }
