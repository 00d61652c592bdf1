"""Shared jaxtyping aliases."""

from typing import TypeAlias

from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


Scalar: TypeAlias = Float[Array, ""]
Pre: TypeAlias = Float[Array, " n_in"]
Post: TypeAlias = Float[Array, " n_out"]
Weight: TypeAlias = Float[Array, "n_out n_in"]
Key: TypeAlias = PRNGKeyArray

__all__ = ["Array", "Bool", "Float", "Int", "Key", "Post", "Pre", "Scalar", "Weight"]
