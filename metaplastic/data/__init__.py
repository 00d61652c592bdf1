"""Datasets (padded, masked PyTrees) and loaders for real data."""

from ._activity import ActivityDataset as ActivityDataset
from ._choices import ChoiceDataset as ChoiceDataset
from ._choices import expected_reward as expected_reward
from ._packed import PackedChoiceDataset as PackedChoiceDataset
