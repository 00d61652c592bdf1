"""Datasets of recorded neural activity (padded, masked PyTrees)."""

from ._activity import ActivityDataset as ActivityDataset
from ._recording import RecordingDataset as RecordingDataset


__all__ = ["ActivityDataset", "RecordingDataset"]
