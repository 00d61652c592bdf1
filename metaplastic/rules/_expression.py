"""Parsing and printing of polynomial plasticity-rule expressions such as `x*y - y^2*w`."""

import math
import re
from typing import Any

import numpy as np

from .._errors import MetaplasticError, validates_input


# The factors a rule may depend on, in canonical order: presynaptic activity, postsynaptic
# activity, the weight, the reward signal. Taylor evaluation contracts them in this order.
FACTORS = ("x", "y", "w", "r")
"""The factors of a rule, in their default order: presynaptic activity `x`, postsynaptic
activity `y`, the weight `w` and the reward signal `r`."""
_FACTOR_NAMES = {
    "x": "presynaptic activity",
    "y": "postsynaptic activity",
    "w": "weight",
    "r": "reward",
}

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>\*\*|\^|\*|\+|-))"
)

Monomial = tuple[int, ...]


def as_factors(factors: Any) -> tuple[str, ...]:
    """`factors` as a checked tuple: a tuple or list of distinct known factor names."""
    if isinstance(factors, list):
        factors = tuple(factors)
    check_factors(factors)
    return factors


def check_order(order: Any) -> int:
    """`order` as an int, or `MetaplasticError` unless it is a non-negative integer."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise MetaplasticError(f"`order` must be a non-negative integer, got {order!r}.")
    return int(order)


@validates_input
def check_factors(factors: tuple[str, ...]) -> None:
    """Raise `MetaplasticError` unless `factors` is a non-empty tuple of distinct known factors."""
    if not isinstance(factors, tuple) or len(factors) == 0:
        raise MetaplasticError(
            f"`factors` must be a non-empty tuple of names such as ('x', 'y', 'w'), got "
            f"{factors!r}."
        )
    for f in factors:
        if f not in FACTORS:
            raise MetaplasticError(
                f"Unknown factor {f!r} in factors={factors!r}; known factors are "
                + ", ".join(f"{k!r} ({v})" for k, v in _FACTOR_NAMES.items())
                + "."
            )
    if len(set(factors)) != len(factors):
        raise MetaplasticError(f"Repeated factor in factors={factors!r}.")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None or m.end() == pos:
            bad = stripped[pos:].lstrip()[:1]
            raise MetaplasticError(
                f"Cannot parse rule expression {text!r}: unexpected character {bad!r} at "
                f"position {pos}. Use numbers, factor names, '*', '^' or '**', '+' and '-'."
            )
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


@validates_input
def parse_expression(text: str, factors: tuple[str, ...], order: int) -> dict[Monomial, float]:
    """Parse a polynomial expression into a map from exponent tuples to coefficients.

    **Arguments:**

    - `text`: e.g. `"x*y - y^2*w"` or `"-0.05*w + x**2*r"`.
    - `factors`: the factor names; the exponent tuples follow this order.
    - `order`: the largest exponent allowed for any one factor.

    **Returns:**

    A dict `{(a, b, ...): coefficient}`; repeated monomials are summed.
    """
    factors = as_factors(factors)
    order = check_order(order)
    if not isinstance(text, str):
        raise MetaplasticError(f"A rule expression must be a string, got {type(text).__name__}.")
    tokens = _tokenize(text)
    if not tokens:
        raise MetaplasticError("Empty rule expression; write '0' for the zero rule.")
    index = {f: i for i, f in enumerate(factors)}
    terms: dict[Monomial, float] = {}
    i = 0

    def error(msg: str) -> MetaplasticError:
        return MetaplasticError(f"Cannot parse rule expression {text!r}: {msg}")

    def peek() -> tuple[str, str] | None:
        return tokens[i] if i < len(tokens) else None

    first = True
    while i < len(tokens):
        sign = 1.0
        tok = peek()
        if tok is not None and tok[0] == "op" and tok[1] in "+-":
            sign = -1.0 if tok[1] == "-" else 1.0
            i += 1
        elif not first:
            raise error(f"expected '+' or '-' between terms, got {tok[1]!r}.")  # type: ignore[index]
        first = False
        coef = sign
        exps = [0] * len(factors)
        expect_factor = True
        while True:
            tok = peek()
            if expect_factor:
                if tok is None:
                    raise error("the expression ends where a factor was expected.")
                kind, value = tok
                i += 1
                if kind == "number":
                    coef *= float(value)
                elif kind == "name":
                    if value not in index:
                        if value in FACTORS:
                            raise error(
                                f"factor {value!r} is not among this rule's factors {factors!r}."
                            )
                        raise error(
                            f"unknown factor {value!r}; this rule's factors are {factors!r}."
                        )
                    power = 1
                    nxt = peek()
                    if nxt is not None and nxt[0] == "op" and nxt[1] in ("^", "**"):
                        i += 1
                        num = peek()
                        if num is None or num[0] != "number" or not num[1].isdigit():
                            raise error(
                                f"the exponent of {value!r} must be a non-negative integer."
                            )
                        power = int(num[1])
                        i += 1
                    exps[index[value]] += power
                else:
                    raise error(f"unexpected operator {value!r}.")
                expect_factor = False
            else:
                if tok is not None and tok[0] == "op" and tok[1] == "*":
                    i += 1
                    expect_factor = True
                    continue
                if tok is not None and tok[0] == "op" and tok[1] in ("^", "**"):
                    raise error("only factor names can be raised to a power.")
                if tok is not None and tok[0] != "op":
                    raise error(f"missing '*' before {tok[1]!r}.")
                break
        for f, e in zip(factors, exps):
            if e > order:
                raise error(f"exponent {e} of {f!r} is above the rule's order {order}.")
        if not math.isfinite(coef):
            raise error("coefficients must be finite.")
        key = tuple(exps)
        terms[key] = terms.get(key, 0.0) + coef
    return terms


def format_monomial(exps: Monomial, factors: tuple[str, ...]) -> str:
    """Print one monomial, e.g. `(0, 2, 1)` with factors `("x", "y", "w")` → `y^2*w`."""
    parts = [f if e == 1 else f"{f}^{e}" for f, e in zip(factors, exps) if e > 0]
    return "*".join(parts) if parts else "1"


def format_expression(terms: dict[Monomial, float], factors: tuple[str, ...]) -> str:
    """Print a polynomial canonically: monomials in descending lexicographic order of their
    exponents (in `factors` order), the constant last; unit coefficients are omitted and a
    negative coefficient is written as a subtraction.
    """
    items = sorted(
        ((k, v) for k, v in terms.items() if v != 0.0), key=lambda kv: kv[0], reverse=True
    )
    if not items:
        return "0"
    out = []
    for n, (exps, value) in enumerate(items):
        mono = format_monomial(exps, factors)
        mag = f"{abs(value):.6g}"
        if mono == "1":
            body = mag
        elif mag == "1":
            body = mono
        else:
            body = f"{mag}*{mono}"
        if n == 0:
            out.append(("-" if value < 0 else "") + body)
        else:
            out.append((" - " if value < 0 else " + ") + body)
    return "".join(out)
