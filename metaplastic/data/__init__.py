"""Datasets of recorded neural activity (padded, masked PyTrees), and readers of them from
tables (`from_table`), NWB files (`from_nwb`) and pynapple objects (`from_pynapple`)."""

from ._activity import ActivityDataset as ActivityDataset
from ._nwb import from_nwb as from_nwb
from ._pynapple import from_pynapple as from_pynapple
from ._recording import RecordingDataset as RecordingDataset
from ._table import from_table as from_table


__all__ = ["ActivityDataset", "RecordingDataset", "from_nwb", "from_pynapple", "from_table"]
