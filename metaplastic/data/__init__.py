"""Datasets of recorded neural activity (padded, masked PyTrees)."""

from ._activity import ActivityDataset as ActivityDataset
