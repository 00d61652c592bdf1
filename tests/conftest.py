import atexit
import os
import shutil
import sys
import tempfile

import jax
import pytest


# The example scripts and the benchmark CLI cache compiled programs in the user's cache folder
# by default; the tests' runs of them (subprocesses inherit this variable) use a folder of
# their own, removed at the end, and never write into the user's home.
_CACHE = tempfile.mkdtemp(prefix="metaplastic-test-jax-cache-")
os.environ["METAPLASTIC_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


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
