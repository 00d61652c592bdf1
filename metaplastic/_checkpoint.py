"""Checkpoint files: one file holding a JSON header and the leaves of a PyTree.

Layout: a magic line, the header's length in bytes on its own line, the header (UTF-8 JSON),
then the leaves as written by `eqx.tree_serialise_leaves`. The header records the SHA-256 and
length of the leaves and the path, shape and dtype of every leaf, so a truncated, corrupted or
mismatched file is refused before anything is deserialised. Header and leaves live in one file
written atomically (temporary file, then `os.replace`), so they can never be out of step.
"""

import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PyTree

from ._errors import CheckpointError
from ._io import atomic_write_bytes
from ._multihost import host_array, read_on_main_process


FORMAT = "metaplastic-checkpoint"
FORMAT_VERSION = 1
MAGIC = b"METAPLASTIC-CHECKPOINT\n"
_MAX_HEADER = 64 * 2**20


def versions() -> dict[str, str]:
    """The versions of metaplastic and of the libraries that decide its numbers."""
    import optax

    import metaplastic

    return {
        "metaplastic": metaplastic.__version__,
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "equinox": eqx.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
    }


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover - jaxlib always ships with jax
        return "unknown"


def _saved(leaf: Any) -> bool:
    # The leaves that `eqx.default_serialise_filter_spec` writes.
    return isinstance(leaf, (jax.Array, np.ndarray)) or eqx.is_array_like(leaf)


def leaf_signature(tree: PyTree) -> list[list]:
    """`[path, shape, dtype]` of every leaf that is serialised, in order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if _saved(leaf):
            shape = tuple(np.shape(leaf))
            dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
            out.append([jax.tree_util.keystr(path), list(shape), str(dtype)])
    return out


def structure_digest(tree: PyTree) -> str:
    """A digest of the tree structure, static fields included (object addresses removed)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(jax.tree.structure(tree)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_digest(tree: PyTree) -> str:
    """A digest of the paths, shapes, dtypes and bytes of every array leaf (the whole array,
    gathered from the other processes where it is split over several)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not eqx.is_array(leaf):
            continue
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(host_array(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _storable(tree: PyTree) -> PyTree:
    """Typed PRNG keys (e.g. in optax.add_noise's state) as their raw key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _restore_keys(loaded: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(
        lambda new, old: (
            jax.random.wrap_key_data(new, impl=jax.random.key_impl(old)) if _is_key(old) else new
        ),
        loaded,
        like,
    )


def write_checkpoint(path: str | os.PathLike, state: PyTree, header: dict[str, Any]) -> None:
    """Write `state` and `header` atomically to `path`."""
    state = _storable(state)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, state)
    payload = buf.getvalue()
    header = dict(header)
    header.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        versions=versions(),
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        leaves=leaf_signature(state),
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    head = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    atomic_write_bytes(path, MAGIC + f"{len(head)}\n".encode() + head + payload)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """Read and verify a checkpoint file: its magic, header, length and checksum. With
    several processes, process 0 reads it and hands the bytes to the others.

    **Returns:**

    `(header, payload)`; raises `CheckpointError` on anything wrong.
    """
    path = Path(path)
    try:
        blob = read_on_main_process(path)
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint at {path}.") from None
    except OSError as err:
        raise CheckpointError(f"Cannot read checkpoint {path}: {err}.") from err
    return parse_checkpoint(path, blob)


def parse_checkpoint(path: str | os.PathLike, blob: bytes) -> tuple[dict[str, Any], bytes]:
    """Verify the bytes `blob` of the checkpoint file `path` (as `read_checkpoint`)."""
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a metaplastic checkpoint (wrong magic bytes).")
    rest = blob[len(MAGIC) :]
    newline = rest.find(b"\n", 0, 24)
    try:
        n_head = int(rest[:newline]) if newline > 0 else -1
    except ValueError:
        n_head = -1
    if not 0 < n_head <= _MAX_HEADER or len(rest) < newline + 1 + n_head:
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupted (bad header length).")
    try:
        header = json.loads(rest[newline + 1 : newline + 1 + n_head].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"Checkpoint {path} has a corrupted header: {err}.") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metaplastic checkpoint (unknown header).")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {header.get('format_version')!r}; this "
            f"version of metaplastic reads version {FORMAT_VERSION}."
        )
    payload = rest[newline + 1 + n_head :]
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupted: {len(payload)} bytes of data, the "
            f"header promises {header.get('payload_bytes')}."
        )
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"Checkpoint {path} is corrupted: its checksum does not match.")
    return header, payload


def describe_mismatch(saved: list[list], expected: list[list]) -> str | None:
    """Where two leaf signatures first differ, in words, or `None` if they agree."""
    for i, (a, b) in enumerate(zip(saved, expected)):
        if list(a) != list(b):
            return (
                f"leaf {i} is {a[0]} {tuple(a[1])} {a[2]} in the checkpoint but "
                f"{b[0]} {tuple(b[1])} {b[2]} here"
            )
    if len(saved) != len(expected):
        return f"the checkpoint holds {len(saved)} arrays, this fit {len(expected)}"
    return None


def load_state(
    path: str | os.PathLike, header: dict, payload: bytes, like: PyTree, *, prefix: bool = False
) -> PyTree:
    """Deserialise a verified payload into the structure of `like`; refuse it (raising
    `CheckpointError`) unless every leaf has the expected path, shape and dtype. With
    `prefix=True`, `like` describes only the first leaves of the file."""
    original, like = like, _storable(like)
    expected = leaf_signature(like)
    saved = header.get("leaves")
    if not isinstance(saved, list):
        raise CheckpointError(f"Checkpoint {path} has no leaf table in its header.")
    problem = describe_mismatch(saved[: len(expected)] if prefix else saved, expected)
    if problem is not None:
        raise CheckpointError(f"Checkpoint {path} does not fit this model or optimizer: {problem}.")
    f = io.BytesIO(payload)
    try:
        state = eqx.tree_deserialise_leaves(f, like)
    except Exception as err:  # a verified payload that still cannot be read is corrupted
        raise CheckpointError(f"Checkpoint {path} cannot be read: {err}.") from err
    if (not prefix and f.tell() != len(payload)) or leaf_signature(state) != expected:
        raise CheckpointError(f"Checkpoint {path} holds data this fit does not expect.")
    return _restore_keys(state, original)
