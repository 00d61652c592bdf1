"""What drives a network: stimuli and tasks."""

from ._gaussian import gaussian_stimuli as gaussian_stimuli
from ._operant import OperantTask as OperantTask
from ._operant import TaskState as TaskState
from ._operant import bait as bait
from ._operant import collect_reward as collect_reward
