import atexit
import os
import shutil
import sys
import tempfile

import jax
import pytest

import metaplastic as mp


# The example scripts and the benchmark CLI cache compiled programs in the user's cache folder
# by default; the tests' runs of them (subprocesses inherit this variable) use a folder of
# their own, removed at the end, and never write into the user's home.
#
# The test processes themselves (pytest-xdist's workers inherit the folder from the process
# that starts them) cache their compiled programs there too: many tests compile the same
# programs (the same fit of the same model on data of the same shapes), and a program is
# compiled once per run instead of once per test. Nothing outlives the run.
# The tests check behaviour, not speed: their programs are compiled without LLVM's backend
# optimisations. Compiling dominates most tests, and this cuts the default run's CPU time by
# about a quarter (771 s to 587 s on 2 cores) with every result within its tolerance.
# Examples, benchmarks and users compile at the default level; the README's session, which
# spends its time running fits, does too (tests/test_readme.py). Subprocesses (the example
# scripts the tests run) inherit the flag.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

_CACHE = os.environ.get("METAPLASTIC_TEST_CACHE_DIR")
if _CACHE is None:
    _CACHE = tempfile.mkdtemp(prefix="metaplastic-test-jax-cache-")
    os.environ["METAPLASTIC_TEST_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["METAPLASTIC_CACHE_DIR"] = _CACHE
mp.runs.enable_compile_cache(_CACHE)


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


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` go first: pytest-xdist hands tests out in collection order, and a
    long test started last would keep one worker busy after the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
