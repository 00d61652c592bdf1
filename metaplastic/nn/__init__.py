"""Plastic and fixed layers, readouts and networks."""

from ._mushroom_body import MushroomBody as MushroomBody
from ._mushroom_body import OdourEncoding as OdourEncoding
from ._plastic import ACTIVATIONS as ACTIVATIONS
from ._plastic import FixedDense as FixedDense
from ._plastic import PlasticDense as PlasticDense
from ._readout import ActivityReadout as ActivityReadout
