"""The model zoo's pieces: layers (fixed, plastic, recurrent, chains of them), the readout
heads that say how a network was recorded, and the `Model` that joins the two.

A network is any `AbstractLayer`: a module with a state and a step `state, pre, reward →
post, state`. A head is any `AbstractHead`: an observation model with its likelihood.
Writing one subclass of either adds a layer or a head; `metaplastic.simulate_network`
simulates any layer and `metaplastic.losses.RecordingLoss` fits any `Model`.
"""

from ._heads import AbstractHead as AbstractHead
from ._heads import AbstractLinearHead as AbstractLinearHead
from ._heads import BernoulliHead as BernoulliHead
from ._heads import CalciumHead as CalciumHead
from ._heads import GaussianHead as GaussianHead
from ._heads import Model as Model
from ._heads import PoissonHead as PoissonHead
from ._layer import AbstractLayer as AbstractLayer
from ._layer import Chain as Chain
from ._layer import layer_rules as layer_rules
from ._plastic import ACTIVATIONS as ACTIVATIONS
from ._plastic import FixedDense as FixedDense
from ._plastic import PlasticDense as PlasticDense
from ._plastic import PlasticState as PlasticState
from ._plastic import plastic_update as plastic_update
from ._plastic import state_from_weights as state_from_weights
from ._plastic import weights_of as weights_of
from ._readout import ActivityReadout as ActivityReadout
from ._recurrent import PlasticRecurrent as PlasticRecurrent
from ._recurrent import RecurrentState as RecurrentState


__all__ = [
    "ACTIVATIONS",
    "AbstractHead",
    "AbstractLayer",
    "AbstractLinearHead",
    "ActivityReadout",
    "BernoulliHead",
    "CalciumHead",
    "Chain",
    "FixedDense",
    "GaussianHead",
    "Model",
    "PlasticDense",
    "PlasticRecurrent",
    "PlasticState",
    "PoissonHead",
    "RecurrentState",
    "layer_rules",
    "plastic_update",
    "state_from_weights",
    "weights_of",
]
