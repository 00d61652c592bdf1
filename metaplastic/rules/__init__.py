"""Plasticity rules: Taylor-series and MLP rules, rules with memory (eligibility traces, BCM),
expressions, and a library of known rules."""

from ._abstract import AbstractMemorylessRule as AbstractMemorylessRule
from ._abstract import AbstractRule as AbstractRule
from ._expression import FACTORS as FACTORS
from ._expression import format_expression as format_expression
from ._expression import format_monomial as format_monomial
from ._expression import parse_expression as parse_expression
from ._library import from_expression as from_expression
from ._library import hebbian as hebbian
from ._library import oja as oja
from ._library import reward_modulated as reward_modulated
from ._library import with_decay as with_decay
from ._library import zero_like as zero_like
from ._memory import BCMRule as BCMRule
from ._memory import TraceRule as TraceRule
from ._mlp import MLPRule as MLPRule
from ._taylor import TaylorRule as TaylorRule
from ._taylor import powers as powers


__all__ = [
    "AbstractMemorylessRule",
    "AbstractRule",
    "FACTORS",
    "MLPRule",
    "TaylorRule",
    "format_expression",
    "format_monomial",
    "from_expression",
    "hebbian",
    "oja",
    "parse_expression",
    "powers",
    "reward_modulated",
    "with_decay",
    "zero_like",
]
