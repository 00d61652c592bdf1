"""metaplastic: infer synaptic plasticity rules from neural activity and behaviour."""

from . import behaviour as behaviour
from . import data as data
from . import flies as flies
from . import losses as losses
from . import metrics as metrics
from . import nn as nn
from . import plot as plot
from . import rules as rules
from . import runs as runs
from . import sharding as sharding
from . import tasks as tasks
from ._bootstrap import Bootstrap as Bootstrap
from ._bootstrap import bootstrap as bootstrap
from ._compare import Comparison as Comparison
from ._compare import compare_models as compare_models
from ._errors import CheckpointError as CheckpointError
from ._errors import FitDivergedError as FitDivergedError
from ._errors import MetaplasticError as MetaplasticError
from ._errors import MissingDependencyError as MissingDependencyError
from ._fit import fit as fit
from ._fit import load_checkpoint as load_checkpoint
from ._fit import rule_filter_spec as rule_filter_spec
from ._fit import stack_models as stack_models
from ._jacobian import AbstractDifferentiation as AbstractDifferentiation
from ._jacobian import Automatic as Automatic
from ._jacobian import ForwardMode as ForwardMode
from ._jacobian import ReverseMode as ReverseMode
from ._jacobian import TaylorReverse as TaylorReverse
from ._laplace import Identifiability as Identifiability
from ._laplace import Posterior as Posterior
from ._laplace import Profile as Profile
from ._laplace import laplace as laplace
from ._laplace import profile as profile
from ._record import FitResult as FitResult
from ._record import History as History
from ._simulate import AbstractEnvironment as AbstractEnvironment
from ._simulate import Simulation as Simulation
from ._simulate import Trajectory as Trajectory
from ._simulate import checkpointing as checkpointing
from ._simulate import generate_activity as generate_activity
from ._simulate import generate_recordings as generate_recordings
from ._simulate import simulate as simulate
from ._simulate import simulate_dataset as simulate_dataset
from ._simulate import simulate_network as simulate_network
from ._simulate import simulate_recordings as simulate_recordings
from ._solver import AbstractSolver as AbstractSolver
from ._solver import LevenbergMarquardt as LevenbergMarquardt
from ._solver import Objective as Objective
from ._solver import Optax as Optax
from ._sparse import Selection as Selection
from ._sparse import Stability as Stability
from ._sparse import stability_selection as stability_selection
from ._sparse import threshold_fit as threshold_fit
from .rules import AbstractRule as AbstractRule
from .rules import BCMRule as BCMRule
from .rules import MLPRule as MLPRule
from .rules import TaylorRule as TaylorRule
from .rules import TraceRule as TraceRule


# The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = [
    "AbstractDifferentiation",
    "AbstractEnvironment",
    "AbstractRule",
    "BCMRule",
    "AbstractSolver",
    "Automatic",
    "Bootstrap",
    "CheckpointError",
    "Comparison",
    "FitDivergedError",
    "FitResult",
    "ForwardMode",
    "History",
    "Identifiability",
    "LevenbergMarquardt",
    "MLPRule",
    "MetaplasticError",
    "MissingDependencyError",
    "Objective",
    "Optax",
    "Posterior",
    "Profile",
    "ReverseMode",
    "Selection",
    "Simulation",
    "Stability",
    "TaylorReverse",
    "TaylorRule",
    "TraceRule",
    "Trajectory",
    "__version__",
    "behaviour",
    "bootstrap",
    "checkpointing",
    "compare_models",
    "data",
    "fit",
    "flies",
    "generate_activity",
    "generate_recordings",
    "laplace",
    "load_checkpoint",
    "losses",
    "metrics",
    "nn",
    "plot",
    "profile",
    "rule_filter_spec",
    "rules",
    "runs",
    "sharding",
    "simulate",
    "simulate_dataset",
    "simulate_network",
    "simulate_recordings",
    "stability_selection",
    "stack_models",
    "tasks",
    "threshold_fit",
]
