"""The library's own error types.

Every public entry point that takes user input (the rule, layer, readout and dataset
constructors, `simulate`, `generate_activity`, `fit`) checks that input
itself and raises `MetaplasticError`. Those entry points are marked `@validates_input`, which
the test run's runtime type checker (the jaxtyping import hook, with the checker of
`tests/jaxtyping_checker.py`) leaves alone: bad input gives the same clear
`MetaplasticError` with or without it, never a checker's or JAX's traceback. Unlike
`typing.no_type_check`, the mark keeps their signatures visible to static type checkers
(mypy, pyright). Their jaxtyping annotations document the expected shapes; the arrays they
store are checked against those shapes by the tests.
"""

from collections.abc import Callable
from typing import Any, TypeVar


__all__ = [
    "CheckpointError",
    "FitDivergedError",
    "MetaplasticError",
    "MissingDependencyError",
    "validates_input",
]

_F = TypeVar("_F", bound=Callable[..., Any])

# The `module.qualname` of every function marked with `validates_input`.
SELF_VALIDATING: set[str] = set()


def validates_input(fn: _F) -> _F:
    """Mark a public entry point that checks its own input and raises `MetaplasticError`
    (returns `fn` itself, its signature unchanged): a runtime type checker installed for the
    tests skips it, so that bad input gets the library's message, as without the checker."""
    SELF_VALIDATING.add(f"{fn.__module__}.{fn.__qualname__}")
    return fn


class MetaplasticError(ValueError):
    """Raised for invalid input to metaplastic: bad shapes, values, expressions or files.

    A subclass of `ValueError`, so `except ValueError` also catches it.
    """


class CheckpointError(MetaplasticError):
    """A checkpoint file is missing, corrupted, truncated or does not fit this fit; nothing
    of it was loaded."""


class FitDivergedError(MetaplasticError):
    """The loss or a trained parameter became NaN or infinite during a fit.

    **Attributes:**

    - `step`: the step (counting from 0, as the fit's callback does) in which it happened.
    - `quantity`: the first non-finite quantity, e.g. `"loss"` or `"parameter .rule.coefficients"`.
    - `member`: the ensemble member, or `None` for a single fit.
    - `result`: a `FitResult` holding the last finite model and the history up to it.
    - `checkpoint`: the checkpoint file holding that state, or `None` without checkpointing.
    """

    def __init__(
        self,
        message: str,
        *,
        step: int,
        quantity: str,
        member: int | None,
        result: Any,
        checkpoint: str | None = None,
    ):
        super().__init__(message)
        self.step = step
        self.quantity = quantity
        self.member = member
        self.result = result
        self.checkpoint = checkpoint

    @property
    def last_finite_model(self) -> Any:
        """The model after the last step whose loss and parameters were all finite."""
        return self.result.model


class MissingDependencyError(MetaplasticError, ImportError):
    """An optional dependency (an extra such as `metaplastic[plot]`) is not installed."""


def first_line(err: BaseException) -> str:
    """`"TypeName: first line of the message"`: an exception summed up in one line, for a
    `MetaplasticError` that wraps it with what the user should check."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise `MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}, which is not "
            f'installed. Install it with: pip install "metaplastic[{extra}]" (or pip install '
            f'-e ".[{extra}]" in a clone of the repository; pip install "metaplastic[all]" '
            "installs every optional dependency)"
        ) from err
