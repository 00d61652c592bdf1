"""What drives a network: stimuli and tasks."""

from ._gaussian import gaussian_stimuli as gaussian_stimuli
