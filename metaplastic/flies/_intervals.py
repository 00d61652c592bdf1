"""How sure is each fly's rule? Per-fly Laplace intervals of the small families' terms, their
population summary across flies, and the per-fly comparison of the families by AIC, BIC and
the Laplace evidence.

Every family is fitted to every fly in one vmapped `metaplastic.fit` (one ensemble member per
fly), by default on the likelihood marginal over `draws` draws of the unobserved odour
encoding noise (`metaplastic.behaviour.NoisyChoices`); `metaplastic.laplace` turns each fly's
Fisher information into a Gaussian posterior of its free terms, and `metaplastic.compare_models`
scores the fitted families on the same draws. No penalty: the estimates are maximum
likelihood, and the prior `N(0, prior_std²)` per free term enters only the evidence.

Unlike `fit_families`, all flies share one odour split (odour A drives the first input unit)
and one initial weight matrix: `laplace` and `compare_models` take the network as one model
whose rule alone differs between flies.
"""

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Bool, Float

from .._compare import compare_models
from .._errors import MetaplasticError, require, validates_input
from .._fit import fit
from .._frames import frame
from .._laplace import Posterior, laplace
from .._solver import LevenbergMarquardt
from ..behaviour import (
    DEFAULT_INPUT_VARIANCE,
    REWARD_SIGNALS,
    TAYLOR_STUDENT_SCALE,
    ChoiceBCE,
    MushroomBody,
    NoisyChoices,
    OdourEncoding,
    PackedChoiceDataset,
    stack_members,
)
from ..rules import TaylorRule
from ._families import FAMILY_TERMS, SMALL_FACTORS
from ._records import DrosophilaData


TRIALS = ("block1", "all")


@dataclasses.dataclass(frozen=True)
class PopulationSummary:
    """One term of one family summarised over flies (`FlyIntervals.population`).

    - `flies`: flies summarised (those with a finite, positive std).
    - `excludes_zero`, `positive`, `negative`: flies whose interval excludes 0, of which
      above and below it ("the interval excludes 0 in k/n flies").
    - `median`: median estimate over flies.
    - `mean`, `se`, `low`, `high`: the precision-weighted (inverse-variance, fixed-effect)
      mean of the flies' estimates, its standard error and `level` interval: the common
      value if every fly had the same coefficient.
    - `q`, `df`, `p_heterogeneity`: Cochran's Q (`Σ wᵢ (θᵢ − mean)²`, `wᵢ = 1/stdᵢ²`), its
      degrees of freedom `flies − 1` and the chi-square p-value of "every fly has the same
      coefficient" (`nan` without scipy or with one fly).
    - `i2`: the share of the spread between flies beyond their own uncertainty,
      `max(0, (Q − df)/Q)`.
    - `tau`: the DerSimonian–Laird standard deviation of the coefficient between flies.
    - `random_mean`, `random_se`, `random_low`, `random_high`: the random-effects mean
      (weights `1/(stdᵢ² + τ²)`), its standard error and `level` interval: the population
      mean when flies differ.
    """

    flies: int
    excludes_zero: int
    positive: int
    negative: int
    median: float
    mean: float
    se: float
    low: float
    high: float
    q: float
    df: int
    p_heterogeneity: float
    i2: float
    tau: float
    random_mean: float
    random_se: float
    random_low: float
    random_high: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FlyIntervals:
    """Per-fly Laplace intervals of rule families fitted to the same flies
    (`rule_intervals`).

    - `families`: the families fitted; `terms`: `{family: its free terms}`.
    - `names`: the flies, in batch order; `accept_only`: whether the fly's file holds no
      rejection, `(flies,)`.
    - `trials`: `"block1"` or `"all"`; `level`: of the intervals; `draws`, `marginal`,
      `input_variance`: how the unobserved input noise entered the likelihood.
    - `estimate`, `std`, `low`, `high`: `{family: (flies, terms)}`, columns in the order of
      `terms[family]`.
    - `log_likelihood`, `aic`, `bic`, `log_evidence`: `{family: (flies,)}` from
      `metaplastic.compare_models` (`k` = free terms, `n` = valid presentations, evidence
      with the prior `N(0, prior_std²)` per free term).
    - `n_obs`: valid presentations per fly, `(flies,)`.
    - `last_change`: `{family: (flies,)}`, the change of the fit objective (mean negative
      log-likelihood per presentation) in the last step: how far from converged.
    - `posteriors`: `{family: metaplastic.Posterior}` of the ensemble (correlations,
      identifiability).
    - `prior_std`, `seconds`.
    """

    families: tuple[str, ...]
    terms: dict[str, tuple[str, ...]]
    names: tuple[str, ...]
    accept_only: np.ndarray
    trials: str
    level: float
    draws: int
    marginal: bool
    input_variance: float
    estimate: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    log_likelihood: dict[str, np.ndarray]
    aic: dict[str, np.ndarray]
    bic: dict[str, np.ndarray]
    log_evidence: dict[str, np.ndarray]
    n_obs: np.ndarray
    last_change: dict[str, np.ndarray]
    posteriors: dict[str, Posterior]
    prior_std: float
    seconds: float

    def __len__(self) -> int:
        return len(self.names)

    def _column(self, family: str, term: str) -> int:
        if family not in self.families:
            raise MetaplasticError(f"family {family!r} was not fitted (have {self.families}).")
        if term not in self.terms[family]:
            raise MetaplasticError(
                f"the {family} family has no term {term!r}, hence no interval for it "
                f"(its terms: {self.terms[family]})."
            )
        return self.terms[family].index(term)

    def interval(
        self, family: str, term: str
    ) -> tuple[
        Float[np.ndarray, " flies"], Float[np.ndarray, " flies"], Float[np.ndarray, " flies"]
    ]:
        """`(estimate, low, high)` of one term per fly.

        **Arguments:**

        - `family`, `term`: a fitted family and one of its free terms (a term the family
          does not have raises `MetaplasticError`: it has no interval).

        **Returns:**

        Three `(flies,)` arrays.
        """
        i = self._column(family, term)
        return self.estimate[family][:, i], self.low[family][:, i], self.high[family][:, i]

    def excludes_zero(self, family: str, term: str) -> Bool[np.ndarray, " flies"]:
        """Whether each fly's interval of `term` excludes 0, `(flies,)`."""
        _, low, high = self.interval(family, term)
        return (low > 0) | (high < 0)

    @validates_input
    def select(self, keep: Sequence[bool] | np.ndarray) -> "FlyIntervals":
        """Keep the flies where `keep` is true (a boolean per fly), e.g.
        `intervals.select(~intervals.accept_only)`. The posteriors are kept whole."""
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(self),):
            raise MetaplasticError(f"keep must be {len(self)} booleans, got {keep.shape}.")
        if not keep.any():
            raise MetaplasticError("select() would keep no fly.")
        cut = lambda d: {k: v[keep] for k, v in d.items()}
        return dataclasses.replace(
            self,
            names=tuple(n for n, k in zip(self.names, keep) if k),
            accept_only=self.accept_only[keep],
            estimate=cut(self.estimate),
            std=cut(self.std),
            low=cut(self.low),
            high=cut(self.high),
            log_likelihood=cut(self.log_likelihood),
            aic=cut(self.aic),
            bic=cut(self.bic),
            log_evidence=cut(self.log_evidence),
            n_obs=self.n_obs[keep],
            last_change=cut(self.last_change),
        )

    def population(self, family: str, term: str) -> PopulationSummary:
        """Summarise one term over the flies: how many intervals exclude 0 (and on which
        side), the precision-weighted mean, Cochran's Q test of heterogeneity and the
        random-effects mean (see `PopulationSummary`). The p-value needs scipy
        (`pip install "metaplastic[data]"`).

        **Arguments:**

        - `family`, `term`: a fitted family and one of its free terms.

        **Returns:**

        A `PopulationSummary`.
        """
        est, low, high = self.interval(family, term)
        std = self.std[family][:, self._column(family, term)]
        ok = np.isfinite(est) & np.isfinite(std) & (std > 0)
        if not ok.any():
            raise MetaplasticError(f"no fly has a finite, positive std of {term!r} ({family}).")
        est, std, low, high = est[ok], std[ok], low[ok], high[ok]
        z = _normal_quantile(self.level)
        w = 1.0 / std**2
        mean = float(np.sum(w * est) / np.sum(w))
        se = float(1.0 / math.sqrt(np.sum(w)))
        k = int(est.size)
        q = float(np.sum(w * (est - mean) ** 2))
        df = k - 1
        p = float("nan")
        if df > 0:
            try:
                stats = require("scipy.stats", "data", "Cochran's Q test")
                p = float(stats.chi2.sf(q, df))
            except ImportError:
                pass
        i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
        denom = float(np.sum(w) - np.sum(w**2) / np.sum(w))
        tau2 = max(0.0, (q - df) / denom) if denom > 0 else 0.0
        wr = 1.0 / (std**2 + tau2)
        r_mean = float(np.sum(wr * est) / np.sum(wr))
        r_se = float(1.0 / math.sqrt(np.sum(wr)))
        return PopulationSummary(
            flies=k,
            excludes_zero=int(np.sum((low > 0) | (high < 0))),
            positive=int(np.sum(low > 0)),
            negative=int(np.sum(high < 0)),
            median=float(np.median(est)),
            mean=mean,
            se=se,
            low=mean - z * se,
            high=mean + z * se,
            q=q,
            df=df,
            p_heterogeneity=p,
            i2=i2,
            tau=math.sqrt(tau2),
            random_mean=r_mean,
            random_se=r_se,
            random_low=r_mean - z * r_se,
            random_high=r_mean + z * r_se,
        )

    def compare(self, a: str = "covariance", b: str = "forgetting") -> dict:
        """Family `b` against family `a`, fly by fly and summed over flies.

        **Arguments:**

        - `a`, `b`: two fitted families.

        **Returns:**

        A dict: per fly (`(flies,)` arrays) `delta_log_evidence` (`b − a`; positive favours
        `b`), `delta_aic` and `delta_bic` (`b − a`; negative favours `b`); over flies the
        summed differences (`total_*`: the sum of per-fly log evidences is the log evidence
        of "every fly has its own rule of this family"), and per criterion the number of
        flies favouring `b` (`flies_for_b_*`) out of `flies`.
        """
        for f in (a, b):
            if f not in self.families:
                raise MetaplasticError(f"family {f!r} was not fitted (have {self.families}).")
        d_ev = self.log_evidence[b] - self.log_evidence[a]
        d_aic = self.aic[b] - self.aic[a]
        d_bic = self.bic[b] - self.bic[a]
        return {
            "a": a,
            "b": b,
            "flies": len(self),
            "delta_log_evidence": d_ev,
            "delta_aic": d_aic,
            "delta_bic": d_bic,
            "total_delta_log_evidence": float(np.sum(d_ev)),
            "total_delta_aic": float(np.sum(d_aic)),
            "total_delta_bic": float(np.sum(d_bic)),
            "flies_for_b_evidence": int(np.sum(d_ev > 0)),
            "flies_for_b_aic": int(np.sum(d_aic < 0)),
            "flies_for_b_bic": int(np.sum(d_bic < 0)),
        }

    def rows(self) -> list[dict]:
        """One row per (family, fly, term): `family`, `fly`, `accept_only`, `term`,
        `estimate`, `std`, `low`, `high`, `excludes_zero`, and the fly's `log_evidence`,
        `aic`, `bic` for that family (for a CSV)."""
        out = []
        for family in self.families:
            for i, fly in enumerate(self.names):
                for j, term in enumerate(self.terms[family]):
                    lo, hi = float(self.low[family][i, j]), float(self.high[family][i, j])
                    out.append(
                        {
                            "family": family,
                            "fly": fly,
                            "accept_only": bool(self.accept_only[i]),
                            "term": term,
                            "estimate": float(self.estimate[family][i, j]),
                            "std": float(self.std[family][i, j]),
                            "low": lo,
                            "high": hi,
                            "excludes_zero": bool(lo > 0 or hi < 0),
                            "log_evidence": float(self.log_evidence[family][i]),
                            "aic": float(self.aic[family][i]),
                            "bic": float(self.bic[family][i]),
                        }
                    )
        return out

    def to_dataframe(self) -> Any:
        """`rows()` as a pandas DataFrame (needs pandas)."""
        return frame(self.rows())


def _normal_quantile(level: float) -> float:
    """The two-sided standard normal quantile of `level` (1.96 for 0.95)."""
    return float(jax.scipy.stats.norm.ppf(0.5 + 0.5 * level))


def _coefficient(rules: TaylorRule, term: str) -> np.ndarray:
    """The coefficient of `term` in every member of a stacked `TaylorRule`, `(members,)`."""
    e = (0,) * len(rules.factors) if term == "1" else rules.monomial(term)
    return np.asarray(rules.coefficients, dtype=np.float64)[(slice(None),) + e]


@validates_input
def rule_intervals(
    data: DrosophilaData,
    families: Sequence[str] = ("covariance", "forgetting"),
    *,
    trials: Literal["block1", "all"] = "block1",
    draws: int = 8,
    marginal: bool = True,
    level: float = 0.95,
    reward_signal: Literal["prediction_error", "reward"] = "prediction_error",
    n_in: int = 2,
    hidden: int = 10,
    input_variance: float = DEFAULT_INPUT_VARIANCE,
    init_std: float = 0.01,
    steps: int = 20,
    prior_std: float = 1.0,
    key: jax.Array,
    progress: bool = True,
) -> FlyIntervals:
    """Fit each small rule family to each fly and give every free term of every fly a
    Laplace interval; score the families fly by fly by AIC, BIC and the Laplace evidence.

    **Arguments:**

    - `data`: the flies (`load_drosophila`; e.g. `.without_accept_only()`, whose
      likelihood has a finite optimum).
    - `families`: small families, from `FAMILY_TERMS` (`"covariance"`: `1, r, x, x*r`;
      `"forgetting"`: the same plus `w`; `"forgetting_y"`: plus `y`).
    - `trials`: `"block1"` (the first block only, where this conversion of the data has its
      rejections) or `"all"`.
    - `draws`: draws of the unobserved odour-encoding noise per fly.
    - `marginal`: fit the likelihood averaged over the draws (`NoisyChoices`); `False`
      replays one fresh draw as if it were the fly's input (needs `draws=1`; a misspecified
      likelihood, see `examples/results/uncertainty.md`).
    - `level`: of the intervals (0.95: estimate ± 1.96 std).
    - `reward_signal`, `n_in`, `hidden`, `input_variance`, `init_std`: the network (as for
      `fit_families`).
    - `steps`: Levenberg–Marquardt (Fisher scoring) steps.
    - `prior_std`: the prior standard deviation of every free term in the evidence.
    - `key`: the noise draws, the initial weights and the initial rules (the families share
      the draws and the weights).
    - `progress`: show a progress bar for each family's fit (`False` to silence them).

    **Returns:**

    A `FlyIntervals`.
    """
    if not isinstance(data, DrosophilaData):
        raise MetaplasticError(f"data must be a DrosophilaData, got {type(data).__name__}.")
    families = (families,) if isinstance(families, str) else tuple(families)
    bad = [f for f in families if f not in FAMILY_TERMS]
    if bad or not families or len(set(families)) != len(families):
        raise MetaplasticError(
            f"families must be distinct names from {tuple(FAMILY_TERMS)}, got {families}."
        )
    if trials not in TRIALS:
        raise MetaplasticError(f"trials must be one of {TRIALS}, got {trials!r}.")
    for name, value in (("draws", draws), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MetaplasticError(f"{name} must be a positive integer, got {value!r}.")
    if not isinstance(marginal, bool):
        raise MetaplasticError(f"marginal must be True or False, got {marginal!r}.")
    if not marginal and draws != 1:
        raise MetaplasticError(
            "marginal=False replays one fresh draw of the input noise as the fly's input; "
            f"pass draws=1 (got draws={draws}: separate draws are not independent recordings)."
        )
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise MetaplasticError(f"level must be a number between 0 and 1, got {level!r}.")
    if reward_signal not in REWARD_SIGNALS:
        raise MetaplasticError(
            f"reward_signal must be one of {REWARD_SIGNALS}, got {reward_signal!r}."
        )
    for name, value in (("input_variance", input_variance), ("init_std", init_std)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise MetaplasticError(f"{name} must be a non-negative number, got {value!r}.")
    if isinstance(prior_std, bool) or not isinstance(prior_std, int | float) or prior_std <= 0:
        raise MetaplasticError(f"prior_std must be a positive number, got {prior_std!r}.")
    start = time.perf_counter()
    if trials == "block1":
        data = data.first_block()
    flies = len(data)
    shown = np.asarray(data.dataset.presentation_mask)
    rejections = np.sum(shown & (np.asarray(data.dataset.choices) == 0), axis=(1, 2))
    never = [f.name for f, n in zip(data.flies, rejections) if n == 0]
    if never:
        warnings.warn(
            f"{len(never)} of {flies} flies never reject an odour in these trials "
            f"({', '.join(never)}): a likelihood of acceptances only has no finite optimum, so "
            "their estimates, intervals and evidence mean nothing; fit "
            "data.without_accept_only() (or select(~intervals.accept_only)).",
            stacklevel=2,
        )
    k_noise, k_net, k_rule = jr.split(key, 3)
    encoding = OdourEncoding(n_in, variance=float(input_variance))
    noisy = NoisyChoices.from_choices(data.dataset, encoding, draws, key=k_noise)
    if marginal:
        # One member per fly: one trajectory whose draws are averaged in its likelihood.
        member_data = stack_members(noisy, flies)
    else:
        # One member per fly: the single draw replayed as if it were the fly's input.
        single: PackedChoiceDataset = jax.tree.map(lambda a: a[:, 0], noisy.packed)
        member_data = stack_members(single, flies)
    template = TaylorRule.zeros(SMALL_FACTORS, order=1)
    network = MushroomBody(
        template,
        n_in=n_in,
        hidden=hidden,
        reward_signal=reward_signal,
        init_std=float(init_std),
        key=k_net,
    )
    loss = ChoiceBCE()
    solver = LevenbergMarquardt()
    fitted, estimate, std, low, high, change, posteriors = {}, {}, {}, {}, {}, {}, {}
    z = _normal_quantile(level)
    for family in families:
        terms = FAMILY_TERMS[family]
        mask = template.mask(list(terms))
        noise = TAYLOR_STUDENT_SCALE * jr.normal(k_rule, (flies,) + template.coefficients.shape)
        coefficients = jnp.asarray(noise * mask, template.coefficients.dtype)
        rule = TaylorRule(template.coefficients, SMALL_FACTORS, trainable=mask)
        rule = eqx.tree_at(lambda r: r.coefficients, rule, coefficients)
        result = fit(
            network.with_rule(rule),
            member_data,
            loss,
            solver=solver,
            steps=steps,
            ensemble=True,
            progress=progress,
        )
        model = result.model
        post = laplace(model, member_data, loss, ensemble=True)
        # Conditional on the determined subspace, as the intervals were defined before the
        # posterior marked undetermined terms unbounded (drosophila.md's numbers).
        sd = post.std(conditional=True)
        cols = lambda m, terms=terms: np.stack([_coefficient(m.rule, t) for t in terms], axis=1)
        estimate[family] = cols(model)
        std[family] = cols(sd)
        # `Posterior.interval`, from the float64 copies (the same numbers).
        low[family] = estimate[family] - z * std[family]
        high[family] = estimate[family] + z * std[family]
        loss_history = np.asarray(result.history.loss, dtype=np.float64)
        change[family] = (
            np.abs(loss_history[-1] - loss_history[-2])
            if loss_history.shape[0] > 1
            else np.full(flies, np.nan)
        )
        fitted[family] = model
        posteriors[family] = post
    comparison = compare_models(
        fitted, member_data, loss, refit=False, ensemble=True, prior_std=float(prior_std)
    )
    column = lambda a, i: np.asarray(a, dtype=np.float64)[:, i]
    scores = {
        name: {f: column(getattr(comparison, name), i) for i, f in enumerate(families)}
        for name in ("log_likelihood", "aic", "bic", "log_evidence")
    }
    return FlyIntervals(
        families=families,
        terms={f: tuple(FAMILY_TERMS[f]) for f in families},
        names=data.names,
        accept_only=np.asarray([f.accept_only for f in data.flies]),
        trials=trials,
        level=float(level),
        draws=draws,
        marginal=marginal,
        input_variance=float(input_variance),
        estimate=estimate,
        std=std,
        low=low,
        high=high,
        n_obs=np.asarray(comparison.n_obs, dtype=np.int64).reshape(flies),
        last_change=change,
        posteriors=posteriors,
        prior_std=float(prior_std),
        seconds=time.perf_counter() - start,
        **scores,
    )
