"""Datasets of recorded neural activity (padded, masked PyTrees), and a reader of them from
tables (`from_table`)."""

from ._activity import ActivityDataset as ActivityDataset
from ._recording import RecordingDataset as RecordingDataset
from ._table import from_table as from_table


__all__ = ["ActivityDataset", "RecordingDataset", "from_table"]
