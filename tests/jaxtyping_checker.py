"""The runtime type checker of the test run (pytest's `--jaxtyping-packages` in
pyproject.toml): beartype on every function of the package, except the public entry points
marked `metaplastic._errors.validates_input`, which check their own input and raise
`MetaplasticError` naming what is wrong; the test run must see that message, as a user does.

jaxtyping hands the checker stand-ins with the function's module and qualified name. The
import hook's decorator is the innermost one, so the mark is recorded only after the
stand-ins are made: the choice is made when they are first called.
"""

import functools
import sys
from collections.abc import Callable
from typing import Any

from beartype import beartype


def _marked(name: str) -> bool:
    errors = sys.modules.get("metaplastic._errors")
    return name in getattr(errors, "SELF_VALIDATING", ())


def beartype_unless_validated(fn: Callable[..., Any]) -> Callable[..., Any]:
    checked = beartype(fn)
    name = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def check(*args: Any, **kwargs: Any) -> Any:
        return (fn if _marked(name) else checked)(*args, **kwargs)

    return check
