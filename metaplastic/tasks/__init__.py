"""What drives a network: stimuli."""

from ._gaussian import gaussian_stimuli as gaussian_stimuli


__all__ = [
    "gaussian_stimuli",
]
