"""The recorded behaviour of the choice experiment: padded and packed choice datasets and the
reward expectation."""

import typing

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from .._errors import MetaplasticError, validates_input
from .._random import host_rng
from .._types import Key
from .._validate import finite_where, mask_array, real_array
from ._network import OdourEncoding


class ChoiceDataset(eqx.Module):
    """Behaviour in a trial-based choice task, padded to common sizes and masked.

    A *trial* is a run of odour presentations ended by one acceptance (or by the cap on
    presentations). Axes: `batch` (animals or simulated trajectories), `trials`,
    `presentations` (within a trial).

    - `odours`: odour identity of each presentation (0 = A, 1 = B), `(batch, trials, presentations)`.
    - `choices`: 1.0 = accepted, 0.0 = rejected, same shape.
    - `presentation_mask`: `True` on real (non-padded) presentations, same shape.
    - `trial_mask`: `True` on real trials, `(batch, trials)`.
    - `rewards`: the reward `R` (0/1) received on each trial's accepted presentation (0 when
      the trial has none), `(batch, trials)`.
    - `expected_rewards`: the reward expectation `E[R]` before each trial's reward,
      `(batch, trials)`.
    - `inputs`: the encoded input of every presentation, `(batch, trials, presentations, n_in)`,
      or `None` until an encoding is applied.
    """

    odours: Int[Array, "batch trials presentations"]
    choices: Float[Array, "batch trials presentations"]
    presentation_mask: Bool[Array, "batch trials presentations"]
    trial_mask: Bool[Array, "batch trials"]
    rewards: Float[Array, "batch trials"]
    expected_rewards: Float[Array, "batch trials"]
    inputs: Float[Array, "batch trials presentations n_in"] | None

    @validates_input
    def __init__(
        self,
        odours: Int[ArrayLike, "batch trials presentations"],
        choices: Float[ArrayLike, "batch trials presentations"],
        presentation_mask: Bool[ArrayLike, "batch trials presentations"],
        trial_mask: Bool[ArrayLike, "batch trials"],
        rewards: Float[ArrayLike, "batch trials"],
        expected_rewards: Float[ArrayLike, "batch trials"],
        inputs: Float[ArrayLike, "batch trials presentations n_in"] | None = None,
    ):
        od = real_array("odours", odours)
        ch = real_array("choices", choices).astype(np.float64)
        pm = mask_array("presentation_mask", presentation_mask)
        tm = mask_array("trial_mask", trial_mask)
        rw = real_array("rewards", rewards).astype(np.float64)
        er = real_array("expected_rewards", expected_rewards).astype(np.float64)
        if od.ndim != 3:
            raise MetaplasticError(
                f"odours must have shape (batch, trials, presentations), got {od.shape}."
            )
        b, t, p = od.shape
        if b == 0 or t == 0 or p == 0:
            raise MetaplasticError(f"The choice dataset is empty (shape {od.shape}).")
        for name, arr, shape in [
            ("choices", ch, (b, t, p)),
            ("presentation_mask", pm, (b, t, p)),
            ("trial_mask", tm, (b, t)),
            ("rewards", rw, (b, t)),
            ("expected_rewards", er, (b, t)),
        ]:
            if arr.shape != shape:
                raise MetaplasticError(f"{name} must have shape {shape}, got {arr.shape}.")
        for name, arr in [("presentation_mask", pm), ("trial_mask", tm)]:
            if arr.dtype != bool:
                raise MetaplasticError(f"{name} must be boolean, got {arr.dtype}.")
        if not np.issubdtype(od.dtype, np.integer):
            raise MetaplasticError(f"odours must be integers (0 = A, 1 = B), got {od.dtype}.")
        pm = pm & tm[:, :, None]
        finite_where("choices", ch, pm, ("trajectory", "trial", "presentation"))
        finite_where("rewards", rw, tm, ("trajectory", "trial"))
        finite_where("expected_rewards", er, tm, ("trajectory", "trial"))
        bad = pm & ~np.isin(ch, (0.0, 1.0))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise MetaplasticError(f"choices must be 0 or 1; found {ch[where]} at index {where}.")
        bad = pm & ~np.isin(od, (0, 1))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise MetaplasticError(f"odours must be 0 or 1; found {od[where]} at index {where}.")
        empty = tm & ~pm.any(axis=2)
        if empty.any():
            where = tuple(int(i) for i in np.argwhere(empty)[0])
            raise MetaplasticError(f"Trial {where} is marked valid but has no valid presentation.")
        if not tm.any(axis=1).all():
            raise MetaplasticError(
                f"Trajectory {int(np.argmin(tm.any(axis=1)))} has no valid trial."
            )
        accepts = (ch * pm).sum(axis=2)
        if (accepts > 1).any():
            where = tuple(int(i) for i in np.argwhere(accepts > 1)[0])
            raise MetaplasticError(f"Trial {where} has more than one accepted presentation.")
        if inputs is not None:
            x = real_array("inputs", inputs)
            if x.ndim != 4 or x.shape[:3] != (b, t, p):
                raise MetaplasticError(
                    f"inputs must have shape ({b}, {t}, {p}, n_in), got {x.shape}."
                )
            finite_where(
                "inputs",
                x,
                np.broadcast_to(pm[..., None], x.shape),
                ("trajectory", "trial", "presentation", "input"),
            )
            inputs = jnp.asarray(np.where(pm[..., None], x, 0.0).astype(x.dtype))
        # Invalid entries are zeroed so that nothing in the padding can reach a loss.
        self.odours = jnp.asarray(np.where(pm, od, 0).astype(np.int32))
        self.choices = jnp.asarray(np.where(pm, ch, 0.0), dtype=jnp.result_type(float))
        self.presentation_mask = jnp.asarray(pm)
        self.trial_mask = jnp.asarray(tm)
        self.rewards = jnp.asarray(np.where(tm, rw, 0.0), dtype=jnp.result_type(float))
        self.expected_rewards = jnp.asarray(np.where(tm, er, 0.0), dtype=jnp.result_type(float))
        self.inputs = inputs

    @property
    def accepted(self) -> Bool[Array, "batch trials presentations"]:
        """`True` at each trial's accepted presentation."""
        return (self.choices > 0.5) & self.presentation_mask

    def __len__(self) -> int:
        return self.odours.shape[0]


def expected_reward(
    rewards: Float[ArrayLike, "*batch trials"], window: int = 10
) -> Float[Array, "*batch trials"]:
    """The reward expectation before each trial: the mean of the previous `window` rewards,
    with the history before the first trial filled with zeros (so `E[R]` starts at 0).

    `E[R]_t = (R_{t-window} + ... + R_{t-1}) / window`.
    """
    if not isinstance(window, int) or window < 1:
        raise MetaplasticError(f"window must be a positive integer, got {window!r}.")
    r = jnp.asarray(rewards)
    padded = jnp.concatenate([jnp.zeros(r.shape[:-1] + (window,), r.dtype), r], axis=-1)
    csum = jnp.cumsum(padded, axis=-1)
    csum = jnp.concatenate([jnp.zeros(r.shape[:-1] + (1,), r.dtype), csum], axis=-1)
    # Trial t (0-based) sees padded[t : t + window], i.e. rewards t-window .. t-1.
    n = r.shape[-1]
    return (csum[..., window : window + n] - csum[..., :n]) / window


class PackedChoiceDataset(eqx.Module):
    """A `ChoiceDataset` with the presentations of each trajectory packed end to end.

    Trials have very unequal numbers of presentations (most one or two, a few up to the cap),
    so the padded `(trials, presentations)` layout is mostly padding. Here the valid
    presentations of each trajectory are listed in order along one axis (padded only to the
    longest trajectory), each with the index of its trial, and each trial keeps the input of
    its accepted presentation (what the plasticity step needs). Build it with
    `PackedChoiceDataset.from_choices(data)`; leading axes (e.g. ensemble members) are kept.

    - `inputs`: `(*batch, n, n_in)`; `choices`: `(*batch, n)`; `presentation_mask`:
      `(*batch, n)`; `trial_index`: the trial of each presentation, `(*batch, n)`.
    - `accepted_inputs`: the input of each trial's accepted presentation (zeros if none),
      `(*batch, trials, n_in)`; `accepted`: whether the trial has one, `(*batch, trials)`.
    - `trial_mask`, `rewards`, `expected_rewards`: as in `ChoiceDataset`, `(*batch, trials)`.
    """

    inputs: Float[Array, "*batch n n_in"]
    choices: Float[Array, "*batch n"]
    presentation_mask: Bool[Array, "*batch n"]
    trial_index: Int[Array, "*batch n"]
    accepted_inputs: Float[Array, "*batch trials n_in"]
    accepted: Bool[Array, "*batch trials"]
    trial_mask: Bool[Array, "*batch trials"]
    rewards: Float[Array, "*batch trials"]
    expected_rewards: Float[Array, "*batch trials"]

    @classmethod
    def from_choices(cls, data: ChoiceDataset) -> "PackedChoiceDataset":
        """Pack a `ChoiceDataset` (which must have `inputs`); extra leading axes are kept."""
        if data.inputs is None:
            raise MetaplasticError(
                "Cannot pack a ChoiceDataset without inputs; encode the odours first with "
                "metaplastic.behaviour.encode_odours(data, encoding, key=...)."
            )
        pm = np.asarray(data.presentation_mask)
        lead, (t, p) = pm.shape[:-2], pm.shape[-2:]
        pm = pm.reshape(-1, t * p)
        x = np.asarray(data.inputs).reshape(pm.shape[0], t * p, -1)
        ch = np.asarray(data.choices).reshape(pm.shape)
        counts = pm.sum(axis=1)
        n = max(1, int(counts.max()))
        # A stable sort puts the valid entries first, in (trial, presentation) order.
        order = np.argsort(~pm, axis=1, kind="stable")[:, :n]
        valid = np.arange(n)[None, :] < counts[:, None]
        rows = np.arange(pm.shape[0])[:, None]
        x_packed = np.where(valid[..., None], x[rows, order], 0.0)
        ch_packed = np.where(valid, ch[rows, order], 0.0)
        trial = np.where(valid, order // p, 0).astype(np.int32)
        acc = np.asarray(data.accepted)
        acc_x = np.einsum("...tp,...tpi->...ti", acc.astype(x.dtype), np.asarray(data.inputs))
        return cls(
            inputs=jnp.asarray(x_packed.reshape(lead + (n, x.shape[-1]))),
            choices=jnp.asarray(ch_packed.reshape(lead + (n,))),
            presentation_mask=jnp.asarray(valid.reshape(lead + (n,))),
            trial_index=jnp.asarray(trial.reshape(lead + (n,))),
            accepted_inputs=jnp.asarray(acc_x),
            accepted=jnp.asarray(acc.any(axis=-1)),
            trial_mask=data.trial_mask,
            rewards=data.rewards,
            expected_rewards=data.expected_rewards,
        )

    def __len__(self) -> int:
        return self.choices.shape[0]


DEFAULT_DRAWS = 8
"""The default number of draws of the input noise in the marginal likelihood of choices
(`examples/results/reward_rule.md`: recovery at input variance 0.015 with 8 draws)."""


class NoisyChoices(eqx.Module):
    """Recorded choices with `draws` samples of the input noise the recording did not see.

    The odours an animal smelt are recorded, but not the noise of their neural encoding that
    drove each choice. `ChoiceBCE` on this dataset fits the *marginal* likelihood: the
    probability of every recorded choice is the average of `p(choice)` over the draws, each
    draw replaying the whole trajectory (weights included) with its own noise. Build it with
    `NoisyChoices.from_choices(data, encoding, draws, key=...)`.

    - `packed`: a `PackedChoiceDataset` whose arrays have leading axes `(batch, draws)`; the
      draws differ only in `inputs` and `accepted_inputs`.
    """

    packed: PackedChoiceDataset

    @classmethod
    def from_choices(
        cls, data: ChoiceDataset, encoding: OdourEncoding, draws: int, *, key: Key
    ) -> "NoisyChoices":
        """Encode the odours of `data` `draws` times with fresh noise from `encoding` (its
        means and variance) and pack every draw; the result has axes
        `(batch, draws, ...)` (split the batch into ensemble members with `stack_members`).
        The noise comes from a numpy generator seeded by `key` (see `metaplastic._random`)."""
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise MetaplasticError(f"draws must be a positive integer, got {draws!r}.")
        odours = np.asarray(data.odours)
        mask = np.asarray(data.presentation_mask)
        means = np.asarray(encoding.means)
        noise = host_rng(key).standard_normal((draws,) + odours.shape + (means.shape[1],))
        x = means[odours] + np.sqrt(encoding.variance) * noise
        x = np.where(mask[..., None], x, 0.0).astype(means.dtype)
        packs = [
            PackedChoiceDataset.from_choices(
                eqx.tree_at(lambda d: d.inputs, data, jnp.asarray(x[k]), is_leaf=_is_none)
            )
            for k in range(draws)
        ]
        stack = lambda *a: jnp.asarray(np.stack([np.asarray(b) for b in a], axis=1))
        return cls(jax.tree.map(stack, *packs))

    @property
    def draws(self) -> int:
        """The number of noise draws."""
        return self.packed.trial_mask.shape[-2]

    @property
    def choices(self) -> Float[Array, "*batch n"]:
        """The recorded choices (the same in every draw)."""
        return self.packed.choices[..., 0, :]

    @property
    def presentation_mask(self) -> Bool[Array, "*batch n"]:
        """The valid presentations (the same in every draw)."""
        return self.packed.presentation_mask[..., 0, :]

    def __len__(self) -> int:
        return self.packed.trial_mask.shape[0]


def _is_none(value: typing.Any) -> bool:
    return value is None


def marginal_logits(logits: Float[Array, "*shape"], axis: int) -> Float[Array, "*reduced"]:
    """The logit of the average probability over `axis`:
    `logit(mean_k σ(z_k)) = log mean_k σ(z_k) − log mean_k σ(−z_k)`, computed in log space
    (stable for confident predictions). The Bernoulli likelihood of these logits is the
    likelihood averaged over the draws along `axis`."""
    log_k = jnp.log(logits.shape[axis])
    log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=axis) - log_k
    log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=axis) - log_k
    return log_p - log_q
