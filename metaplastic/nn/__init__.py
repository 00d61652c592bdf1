"""Plastic and fixed layers and readouts."""

from ._plastic import ACTIVATIONS as ACTIVATIONS
from ._plastic import FixedDense as FixedDense
from ._plastic import PlasticDense as PlasticDense
from ._readout import ActivityReadout as ActivityReadout
