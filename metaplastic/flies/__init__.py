"""The real-fly analyses: load the recordings, fit families of rules to every fly (all flies
and train/test splits in one vmapped fit per family), and compare the families across flies.

- the recordings: `load_drosophila`, `save_drosophila` (simulated flies in their format),
  `from_table` (one row per presentation, e.g. a pandas DataFrame), `save_nwb`/`load_nwb`
  (one NWB file per fly), `DrosophilaData`, `FlyInfo`;
- rule families: `FAMILIES`, `MEMORY_FAMILIES`, `FAMILY_TERMS`, `family_rule`;
- per-fly fits: `fit_families`, `FlyFits`, `padded_l1`, `presentation_masks`,
  `base_rate_scores`;
- comparisons: `compare_families`, `compare_scores`, `PairedComparison`;
- per-fly uncertainty: `rule_intervals`, `FlyIntervals`, `PopulationSummary`.
"""

from ._compare import PairedComparison as PairedComparison
from ._compare import compare_families as compare_families
from ._compare import compare_scores as compare_scores
from ._families import FAMILIES as FAMILIES
from ._families import FAMILY_TERMS as FAMILY_TERMS
from ._families import MEMORY_FAMILIES as MEMORY_FAMILIES
from ._families import family_rule as family_rule
from ._fits import fit_families as fit_families
from ._fits import padded_l1 as padded_l1
from ._intervals import FlyIntervals as FlyIntervals
from ._intervals import PopulationSummary as PopulationSummary
from ._intervals import rule_intervals as rule_intervals
from ._loader import load_drosophila as load_drosophila
from ._loader import save_drosophila as save_drosophila
from ._nwb import load_nwb as load_nwb
from ._nwb import save_nwb as save_nwb
from ._records import DrosophilaData as DrosophilaData
from ._records import FlyInfo as FlyInfo
from ._results import FlyFits as FlyFits
from ._splits import base_rate_scores as base_rate_scores
from ._splits import presentation_masks as presentation_masks
from ._table import from_table as from_table


__all__ = [
    "PairedComparison",
    "compare_families",
    "compare_scores",
    "FAMILIES",
    "MEMORY_FAMILIES",
    "FAMILY_TERMS",
    "family_rule",
    "fit_families",
    "padded_l1",
    "FlyIntervals",
    "PopulationSummary",
    "rule_intervals",
    "load_drosophila",
    "save_drosophila",
    "load_nwb",
    "save_nwb",
    "DrosophilaData",
    "FlyInfo",
    "FlyFits",
    "base_rate_scores",
    "presentation_masks",
    "from_table",
]
