"""The per-fly fits of one rule family, with their scores and coefficients."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._errors import MetaplasticError
from .._frames import frame
from ..rules import AbstractRule


@dataclasses.dataclass(frozen=True)
class FlyFits:
    """Per-fly fits of one rule family (one entry of `fit_families`).

    - `family`, `reward_signal`: what was fitted.
    - `names`: the flies, in batch order; `accept_only`: whether the fly's file holds no
      rejection, `(flies,)`.
    - `fractions`: the training fractions of the held-out sweep, `(F,)`.
    - `in_sample`: percent deviance explained on all trials by the rule fitted on all trials,
      `(flies,)`.
    - `held_out`: percent deviance explained on the trials after the first `fractions[i]` of
      each fly's trials, by the rule fitted on those first trials, `(F, flies)`.
    - `block1`: fitted and scored on block 1 only, `(flies,)`.
    - `block1_held_out`: fitted on the first `fractions[i]` of block 1 and scored on the rest
      of block 1, `(F, flies)`.
    - `coefficients`: for Taylor families, `{term: (flies,)}` of the rule fitted on all
      trials (only the free terms); `None` for the MLP.
    - `block1_coefficients`: the same for the rules fitted on block 1.
    - `rules`: the rules fitted on all trials, arrays with a leading fly axis.
    - `objective`: the final objective of every fit on all trials, `(flies,)`.
    - `seconds`: wall time of the fit and the scoring (compilation included).
    - `max_weight`: the largest |weight| the rule fitted on all trials reaches in the
      scored replays, `(flies,)` (`None` if not recorded).
    """

    family: str
    reward_signal: str
    names: tuple[str, ...]
    accept_only: np.ndarray
    fractions: tuple[float, ...]
    in_sample: np.ndarray
    held_out: np.ndarray
    block1: np.ndarray
    block1_held_out: np.ndarray
    coefficients: dict[str, np.ndarray] | None
    block1_coefficients: dict[str, np.ndarray] | None
    rules: AbstractRule
    objective: np.ndarray
    seconds: float
    max_weight: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def select(self, keep: Sequence[bool] | np.ndarray) -> "FlyFits":
        """Keep the flies where `keep` is true (a boolean per fly), e.g.
        `fits.select(~fits.accept_only)`."""
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(self),):
            raise MetaplasticError(f"keep must be {len(self)} booleans, got {keep.shape}.")
        if not keep.any():
            raise MetaplasticError("select() would keep no fly.")
        idx = np.nonzero(keep)[0]
        coef = lambda c: None if c is None else {k: v[idx] for k, v in c.items()}
        return dataclasses.replace(
            self,
            names=tuple(self.names[i] for i in idx),
            accept_only=self.accept_only[idx],
            in_sample=self.in_sample[idx],
            held_out=self.held_out[:, idx],
            block1=self.block1[idx],
            block1_held_out=self.block1_held_out[:, idx],
            coefficients=coef(self.coefficients),
            block1_coefficients=coef(self.block1_coefficients),
            rules=jax.tree.map(lambda a: a[idx] if eqx.is_inexact_array(a) else a, self.rules),
            objective=self.objective[idx],
            max_weight=None if self.max_weight is None else self.max_weight[idx],
        )

    def without_accept_only(self) -> "FlyFits":
        """The flies whose file holds rejections."""
        return self.select(~self.accept_only)

    def medians(self) -> dict[str, float]:
        """Median over flies of every score (`held_out_0.5`, ... per fraction)."""
        out = {
            "in_sample": float(np.median(self.in_sample)),
            "block1": float(np.median(self.block1)),
        }
        for f, v, b in zip(self.fractions, self.held_out, self.block1_held_out):
            out[f"held_out_{f:g}"] = float(np.median(v))
            out[f"block1_held_out_{f:g}"] = float(np.median(b))
        return out

    def rows(self) -> list[dict]:
        """One row per fly: its scores and (Taylor families) its coefficients fitted on all
        trials (`coef_<term>`) and on block 1 (`block1_coef_<term>`)."""
        rows = []
        for i, name in enumerate(self.names):
            row = {
                "fly": name,
                "accept_only": bool(self.accept_only[i]),
                "in_sample": float(self.in_sample[i]),
                "block1": float(self.block1[i]),
            }
            if self.max_weight is not None:
                row["max_weight"] = float(self.max_weight[i])
            for f, v, b in zip(self.fractions, self.held_out, self.block1_held_out):
                row[f"held_out_{f:g}"] = float(v[i])
                row[f"block1_held_out_{f:g}"] = float(b[i])
            for k, v in (self.coefficients or {}).items():
                row[f"coef_{k}"] = float(v[i])
            for k, v in (self.block1_coefficients or {}).items():
                row[f"block1_coef_{k}"] = float(v[i])
            rows.append(row)
        return rows

    def to_dataframe(self) -> Any:
        """`rows()` as a pandas DataFrame (needs pandas)."""
        return frame(self.rows())
