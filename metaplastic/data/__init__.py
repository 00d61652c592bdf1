"""Datasets (padded, masked PyTrees) and loaders for real data."""

from ._activity import ActivityDataset as ActivityDataset
from ._choices import ChoiceDataset as ChoiceDataset
from ._choices import expected_reward as expected_reward
from ._drosophila import DrosophilaData as DrosophilaData
from ._drosophila import FlyInfo as FlyInfo
from ._drosophila import load_drosophila as load_drosophila
from ._packed import PackedChoiceDataset as PackedChoiceDataset
