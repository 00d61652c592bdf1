"""The choice objectives for `metaplastic.fit`: the Bernoulli likelihood of recorded choices,
alone or with a neural recording of the same presentations. Both have Gauss–Newton structure
(the Fisher information of the choices), so `LevenbergMarquardt` fits them."""

from typing import Literal

import equinox as eqx
from jaxtyping import Array, Bool, Float, PyTree

from .._errors import MetaplasticError
from ..losses import AbstractGaussNewtonLoss, Observations, loss_hint
from ._data import ChoiceDataset, NoisyChoices, PackedChoiceDataset
from ._generate import GeneratedBehaviour
from ._network import MushroomBody
from ._replay import choice_logits, replay


def _check_choice_model(loss: str, model: object) -> None:
    if not isinstance(model, MushroomBody):
        raise MetaplasticError(
            f"{loss} replays the choices of a metaplastic.behaviour.MushroomBody, got "
            f"{type(model).__name__}."
        )


class ChoiceBCE(AbstractGaussNewtonLoss):
    """Binary cross-entropy of the teacher-forced `p(accept)` against the recorded choices,
    averaged over every valid presentation of the batch (padded presentations and trials are
    excluded, not averaged in). Pass a `PackedChoiceDataset` for speed (and for the fast
    sensitivity Jacobian); a `ChoiceDataset` gives the same value. On `NoisyChoices`,
    `p(accept)` is the average over the draws of the unobserved input noise: the marginal
    likelihood of the choices (per presentation)."""

    def observe(self, model: PyTree, batch: PyTree) -> tuple[Observations, ...]:
        """**Arguments:** `model`, a `MushroomBody`; `batch`, a `ChoiceDataset`,
        `PackedChoiceDataset` or `NoisyChoices` (each refused with a clear error otherwise)."""
        if not isinstance(batch, (ChoiceDataset, PackedChoiceDataset, NoisyChoices)):
            raise MetaplasticError(
                "ChoiceBCE fits recorded choices (a ChoiceDataset, PackedChoiceDataset or "
                f"NoisyChoices of metaplastic.behaviour), got {type(batch).__name__}: "
                + loss_hint(batch)
            )
        _check_choice_model("ChoiceBCE", model)
        logits = choice_logits(model, batch)
        return (Observations(logits, batch.choices, batch.presentation_mask, "bernoulli"),)


class ChoiceActivityDataset(eqx.Module):
    """Choices plus a neural recording of the same presentations (for `ChoiceActivity`).

    - `choices`: the `ChoiceDataset` (with inputs).
    - `activity`: recorded activity, `(batch, trials, presentations, n)`.
    - `neuron_mask`: recorded neurons, `(batch, n)`.
    - `record`: `"hidden"` (the plastic layer) or `"output"` (the readout logit).
    """

    choices: ChoiceDataset
    activity: Float[Array, "batch trials presentations n"]
    neuron_mask: Bool[Array, "batch n"]
    record: str = eqx.field(static=True)

    @classmethod
    def from_generated(
        cls, generated: GeneratedBehaviour, record: Literal["hidden", "output"] = "hidden"
    ) -> "ChoiceActivityDataset":
        """Wrap a `GeneratedBehaviour` made with a `readout` (and the same `record`)."""
        if generated.activity is None or generated.neuron_mask is None:
            raise MetaplasticError("generate_behaviour was called without a readout.")
        return cls(generated.data, generated.activity, generated.neuron_mask, record)

    def __len__(self) -> int:
        return self.activity.shape[0]


class ChoiceActivity(AbstractGaussNewtonLoss):
    """`ChoiceBCE + activity_weight · MSE` of the recorded activity, the MSE over valid
    presentations and recorded neurons only, on a `ChoiceActivityDataset`."""

    activity_weight: float = eqx.field(static=True, default=1.0)

    def observe(self, model: PyTree, batch: PyTree) -> tuple[Observations, ...]:
        """**Arguments:** `model`, a `MushroomBody`; `batch`, a `ChoiceActivityDataset`
        (each refused with a clear error otherwise)."""
        if not isinstance(batch, ChoiceActivityDataset):
            raise MetaplasticError(
                "ChoiceActivity fits choices with a recording of the same presentations (a "
                f"metaplastic.behaviour.ChoiceActivityDataset), got {type(batch).__name__}: "
                + loss_hint(batch)
            )
        _check_choice_model("ChoiceActivity", model)
        choices = batch.choices
        rep = replay(model, choices)
        predicted = rep.hidden if batch.record == "hidden" else rep.logits[..., None]
        mask = choices.presentation_mask[..., None] & batch.neuron_mask[:, None, None, :]
        return (
            Observations(rep.logits, choices.choices, choices.presentation_mask, "bernoulli"),
            Observations(
                predicted, batch.activity, mask, "squared_error", weight=self.activity_weight
            ),
        )
