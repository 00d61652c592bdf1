"""What drives a network: stimuli, and reward protocols."""

from ._gaussian import gaussian_stimuli as gaussian_stimuli
from ._rewards import delayed_rewards as delayed_rewards


__all__ = ["delayed_rewards", "gaussian_stimuli"]
