"""The library's own error type."""


class MetaplasticError(ValueError):
    """Raised for invalid input to metaplastic: bad shapes, values, expressions or files.

    A subclass of `ValueError`, so `except ValueError` also catches it.
    """
