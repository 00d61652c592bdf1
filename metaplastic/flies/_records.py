"""The loaded fly recordings: per-fly counts (`FlyInfo`) and the flies' choices with their
blocks (`DrosophilaData`), as `load_drosophila` returns them."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .._errors import MetaplasticError
from ..behaviour import ChoiceDataset


@dataclasses.dataclass(frozen=True)
class FlyInfo:
    """What one fly's file holds, counted over the whole file.

    - `name`: the file name without its suffix (`"Fly3"`); `path`: the file read.
    - `n_presentations`: odour presentations `P` (accepted and rejected).
    - `n_trials`: trials in the dataset: `n_accepted`, plus one when the file ends with
      rejections after its last acceptance (an incomplete final trial).
    - `n_accepted`: accepted presentations, `sum(Y) == len(R)`.
    - `n_rejections`: rejected presentations, `P - n_accepted`.
    - `n_rewards`: rewarded trials, `sum(R)`.
    - `trailing_rejections`: rejections after the last acceptance (0 for a complete file).
    - `max_presentations`: presentations in the fly's longest trial.
    - `n_blocks`: blocks spanned by the trials (`ceil(n_trials / block_size)`).
    - `rejections_per_block`, `trials_with_rejections_per_block`: per block, the rejections and
      the number of trials holding at least one rejection.
    - `accept_only_blocks`: blocks without any rejection.
    - `accept_only`: `True` when the file holds no rejection at all.
    """

    name: str
    path: str
    n_presentations: int
    n_trials: int
    n_accepted: int
    n_rejections: int
    n_rewards: int
    trailing_rejections: int
    max_presentations: int
    n_blocks: int
    rejections_per_block: tuple[int, ...]
    trials_with_rejections_per_block: tuple[int, ...]
    accept_only_blocks: int
    accept_only: bool

    @property
    def incomplete_final_trial(self) -> bool:
        """Whether the file ends with rejections that no acceptance completes."""
        return self.trailing_rejections > 0

    def as_row(self) -> dict:
        """The counts as a flat dictionary (per-block tuples joined with `/`), e.g. for a CSV."""
        row = dataclasses.asdict(self)
        for key in ("rejections_per_block", "trials_with_rejections_per_block"):
            row[key] = "/".join(str(v) for v in row[key])
        row["incomplete_final_trial"] = self.incomplete_final_trial
        return row


class DrosophilaData(eqx.Module):
    """Flies loaded by `load_drosophila`: their choices, their blocks and their counts.

    - `dataset`: a `ChoiceDataset` whose batch axis holds the flies (in the order of
      `flies`), with `inputs=None`, `rewards` the fly's `R` per trial and `expected_rewards`
      computed from the fly's own rewards.
    - `block`: the block of each trial (0, 1, 2, ...), `-1` on padded trials,
      `(batch, trials)`.
    - `flies`: one `FlyInfo` per fly, counted over the whole file (restricting the trials
      with `restrict_to_blocks` does not change them).
    - `block_size`, `window`: the trials per block and the `expected_reward` window used.
    """

    dataset: ChoiceDataset
    block: Int[Array, "batch trials"]
    flies: tuple[FlyInfo, ...] = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    window: int = eqx.field(static=True)

    def __check_init__(self):
        if self.block.shape != self.dataset.trial_mask.shape:
            raise MetaplasticError(
                f"block must have shape {self.dataset.trial_mask.shape}, got {self.block.shape}."
            )
        if len(self.flies) != len(self.dataset):
            raise MetaplasticError(
                f"{len(self.flies)} FlyInfo entries for a dataset of {len(self.dataset)} flies."
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The flies' names, in batch order."""
        return tuple(f.name for f in self.flies)

    def __len__(self) -> int:
        return len(self.flies)

    def to_dataframe(self) -> Any:
        """The flies' presentations as a pandas DataFrame (needs pandas), one row each in
        order: `subject`, `trial`, `block`, `odour` (0/1), `choice` (1 = accepted), `reward`
        (the trial's reward on its acceptance, NaN on rejections). `from_table` reads it
        back."""
        from ._table import drosophila_frame

        return drosophila_frame(self)

    def counts(self) -> list[dict]:
        """One row of counts per fly (`FlyInfo.as_row`), in batch order."""
        return [f.as_row() for f in self.flies]

    def select(self, flies: Sequence[int | str]) -> "DrosophilaData":
        """Keep only the given flies (by batch index or name), in the order given.

        **Arguments:**

        - `flies`: batch indices or fly names.

        **Returns:**

        A new `DrosophilaData` with `len(flies)` flies.
        """
        index = []
        for f in flies:
            if isinstance(f, str):
                if f not in self.names:
                    raise MetaplasticError(f"No fly named {f!r}; the flies are {self.names}.")
                index.append(self.names.index(f))
            elif isinstance(f, int | np.integer) and -len(self) <= f < len(self):
                index.append(int(f) % len(self))
            else:
                raise MetaplasticError(f"Fly index {f!r} is out of range for {len(self)} flies.")
        if not index:
            raise MetaplasticError("select() needs at least one fly.")
        idx = np.asarray(index)
        ds = self.dataset
        new = ChoiceDataset(
            odours=np.asarray(ds.odours)[idx],
            choices=np.asarray(ds.choices)[idx],
            presentation_mask=np.asarray(ds.presentation_mask)[idx],
            trial_mask=np.asarray(ds.trial_mask)[idx],
            rewards=np.asarray(ds.rewards)[idx],
            expected_rewards=np.asarray(ds.expected_rewards)[idx],
            inputs=None if ds.inputs is None else np.asarray(ds.inputs)[idx],
        )
        return DrosophilaData(
            dataset=new,
            block=jnp.asarray(np.asarray(self.block)[idx]),
            flies=tuple(self.flies[i] for i in index),
            block_size=self.block_size,
            window=self.window,
        )

    def without_accept_only(self) -> "DrosophilaData":
        """Drop the flies whose file holds no rejection at all (`FlyInfo.accept_only`)."""
        keep = [i for i, f in enumerate(self.flies) if not f.accept_only]
        if not keep:
            raise MetaplasticError(f"All {len(self)} flies are accept-only; none would remain.")
        return self.select(keep)

    def restrict_to_blocks(self, blocks: Sequence[int], *, crop: bool = True) -> "DrosophilaData":
        """Mask every trial outside the given blocks.

        Expected rewards are kept as computed from the whole history, since the fly
        experienced the earlier rewards whether or not a fit looks at them.

        **Arguments:**

        - `blocks`: the blocks to keep (0 = the first block).
        - `crop`: drop the trailing trials and presentations that are padding in every fly
          after masking (the masked content is the same, the arrays smaller).

        **Returns:**

        A new `DrosophilaData` with the same flies and `FlyInfo`.
        """
        blocks = tuple(int(b) for b in blocks)
        if not blocks:
            raise MetaplasticError("restrict_to_blocks() needs at least one block.")
        block = np.asarray(self.block)
        ds = self.dataset
        tm = np.asarray(ds.trial_mask) & np.isin(block, blocks)
        empty = ~tm.any(axis=1)
        if empty.any():
            raise MetaplasticError(
                f"Fly {self.names[int(np.argmax(empty))]} has no trial in blocks {blocks}."
            )
        pm = np.asarray(ds.presentation_mask) & tm[:, :, None]
        t_end = int(np.nonzero(tm.any(axis=0))[0][-1]) + 1 if crop else tm.shape[1]
        p_end = int(pm.sum(axis=2).max()) if crop else pm.shape[2]
        sl3 = (slice(None), slice(0, t_end), slice(0, p_end))
        new = ChoiceDataset(
            odours=np.asarray(ds.odours)[sl3],
            choices=np.asarray(ds.choices)[sl3],
            presentation_mask=pm[sl3],
            trial_mask=tm[:, :t_end],
            rewards=np.asarray(ds.rewards)[:, :t_end],
            expected_rewards=np.asarray(ds.expected_rewards)[:, :t_end],
            inputs=None if ds.inputs is None else np.asarray(ds.inputs)[sl3],
        )
        return DrosophilaData(
            dataset=new,
            block=jnp.asarray(np.where(tm, block, -1)[:, :t_end]),
            flies=self.flies,
            block_size=self.block_size,
            window=self.window,
        )

    def first_block(self, *, crop: bool = True) -> "DrosophilaData":
        """Keep only the first block (trials `0 .. block_size - 1`), where rejections were
        recorded for every fly that has any. Same as `restrict_to_blocks((0,))`."""
        return self.restrict_to_blocks((0,), crop=crop)
