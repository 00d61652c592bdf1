import os
import sys

import jax
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROSOPHILA = os.path.join(os.path.dirname(ROOT), "shared", "data", "drosophila")


@pytest.fixture
def x64():
    """Run a test in float64."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def drosophila_dir():
    if not os.path.isdir(DROSOPHILA):
        pytest.skip(f"the real Drosophila data is not at {DROSOPHILA}")
    return DROSOPHILA


sys.path.insert(0, ROOT)
