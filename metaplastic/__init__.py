"""metaplastic: infer synaptic plasticity rules from neural activity and behaviour."""

from . import data as data
from . import losses as losses
from . import metrics as metrics
from . import nn as nn
from . import plot as plot
from . import rules as rules
from . import runs as runs
from . import sharding as sharding
from . import tasks as tasks
from ._behaviour import ChoiceActivityDataset as ChoiceActivityDataset
from ._behaviour import GeneratedBehaviour as GeneratedBehaviour
from ._behaviour import RecoveryData as RecoveryData
from ._behaviour import Replay as Replay
from ._behaviour import RuleRecovery as RuleRecovery
from ._behaviour import choice_activity_loss as choice_activity_loss
from ._behaviour import choice_bce as choice_bce
from ._behaviour import choice_jacobian as choice_jacobian
from ._behaviour import choice_log_likelihood as choice_log_likelihood
from ._behaviour import choice_logits as choice_logits
from ._behaviour import compare_behaviour as compare_behaviour
from ._behaviour import encode_odours as encode_odours
from ._behaviour import fit_behaviour as fit_behaviour
from ._behaviour import generate_behaviour as generate_behaviour
from ._behaviour import mlp_student as mlp_student
from ._behaviour import null_network as null_network
from ._behaviour import percent_deviance as percent_deviance
from ._behaviour import recover_rule as recover_rule
from ._behaviour import recovery_data as recovery_data
from ._behaviour import replay as replay
from ._behaviour import stack_members as stack_members
from ._behaviour import stack_rules as stack_rules
from ._behaviour import taylor_student as taylor_student
from ._errors import CheckpointError as CheckpointError
from ._errors import FitDivergedError as FitDivergedError
from ._errors import MetaplasticError as MetaplasticError
from ._errors import MissingDependencyError as MissingDependencyError
from ._fisher import fit_bernoulli_gauss_newton as fit_bernoulli_gauss_newton
from ._fit import FitResult as FitResult
from ._fit import History as History
from ._fit import fit as fit
from ._fit import load_checkpoint as load_checkpoint
from ._fit import rule_filter_spec as rule_filter_spec
from ._least_squares import fit_least_squares as fit_least_squares
from ._simulate import Simulation as Simulation
from ._simulate import generate_activity as generate_activity
from ._simulate import simulate as simulate
from ._simulate import simulate_dataset as simulate_dataset
from .rules import AbstractRule as AbstractRule
from .rules import MLPRule as MLPRule
from .rules import TaylorRule as TaylorRule


__version__ = "0.1.0"
