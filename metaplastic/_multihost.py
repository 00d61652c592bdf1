"""The host side of a fit spread over several processes (`jax.distributed`): which process
writes files, host copies of arrays that live on other processes' devices, and what process 0
reads handed to every process.

Everything here goes through `jax.experimental.multihost_utils`; in one process every helper
is the plain single-process operation (no collective, no copy beyond `np.asarray`). The
helpers that communicate are collectives: every process must call them at the same point of
the same program, as it does the jitted steps of a fit.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jaxtyping import PyTree


def is_main_process() -> bool:
    """Whether this process writes the files of a fit or a run (process 0)."""
    return jax.process_index() == 0


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _spans_other_processes(x: Any) -> bool:
    # A replicated array has a whole copy here; only a split one needs the other processes.
    return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def gather(tree: PyTree) -> PyTree:
    """`tree` with every array that is split over several processes' devices replaced by its
    whole value as a numpy array (a collective); every other leaf is left as it is."""

    def one(x):
        if not _spans_other_processes(x):
            return x
        if _is_key(x):
            data = multihost_utils.process_allgather(jax.random.key_data(x), tiled=True)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def host_array(x: Any) -> np.ndarray:
    """The whole value of one array as a numpy array, gathered from the other processes if
    it is split over them (a collective in that case)."""
    return np.asarray(gather(x))


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """`jax.device_put(x, sharding)`, also for PRNG keys placed on devices of several
    processes (which `device_put` refuses): every process passes the same value."""
    if _is_key(x) and not sharding.is_fully_addressable:
        data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def broadcast_bytes(blob: bytes | None, *, code: int = -1) -> bytes | int:
    """Process 0's `blob` on every process (a collective). Where process 0 has no blob, every
    process gets the negative integer `code` process 0 passed instead."""
    if jax.process_count() == 1:
        return code if blob is None else blob
    main = is_main_process()
    n = np.array([code if blob is None else len(blob)] if main else [0], np.int32)
    n = int(multihost_utils.broadcast_one_to_all(n)[0])
    if n < 0:
        return n
    buf = np.frombuffer(blob, np.uint8) if main else np.zeros(n, np.uint8)
    if n == 0:
        return b""
    return np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes()


def read_on_main_process(path: str | Path) -> bytes:
    """The bytes of the file `path` as process 0 reads them, on every process (a collective
    when there are several), so that a file on process 0's disk alone is enough.

    **Raises:** `FileNotFoundError` or `OSError` on every process alike."""
    path = Path(path)
    if jax.process_count() == 1:
        return path.read_bytes()
    blob, code = None, -1
    if is_main_process():
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            code = -1
        except OSError:
            code = -2
    out = broadcast_bytes(blob, code=code)
    if out == -1:
        raise FileNotFoundError(f"No file {path} on process 0.")
    if isinstance(out, int):
        raise OSError(f"Process 0 cannot read {path}.")
    return out
