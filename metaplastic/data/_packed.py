import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import MetaplasticError
from ._choices import ChoiceDataset


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
                "metaplastic.encode_odours(data, encoding, key=...)."
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
