"""Run records for examples and sweeps: one folder per run, every file written atomically.

```python
with metaplastic.runs.create_run("out", name="oja", config=vars(args)) as run:
    result = metaplastic.fit(..., checkpoint_dir=run.path / "checkpoint")
    run.log_history(result.history)
    run.save_figure(metaplastic.plot.coefficient_trajectories(result.history), "coefficients.png")
    run.finish({"loss": float(result.history.loss[-1])})
```

A run folder is named `<name>-<YYYYmmdd-HHMMSS>-<random suffix>` and created with an
exclusive `mkdir`, so concurrent runs never share one; inside it, `config.json` (the full
configuration with the library, JAX and Python versions and the backend), `metrics.csv` (one
row per step), `summary.json` and the figures. Every file is written whole to a
temporary file and renamed into place: a reader sees the previous version or the new one,
never a torn file, and nothing is ever appended to a shared file.

`open_run(path, config)` reopens a run folder to complete it (an interrupted sweep, a
checkpointed fit): it refuses, naming every differing key with both values, when the given
configuration is not the recorded one, so that one folder never mixes results of different
settings.

`enable_compile_cache()` turns on JAX's persistent compilation cache in a user cache folder
(`$METAPLASTIC_CACHE_DIR`, else `$XDG_CACHE_HOME/metaplastic/jax`, else
`~/.cache/metaplastic/jax`), so that a second run of the same script loads its compiled
programs from disk instead of compiling them again; `disable_compile_cache()` turns it off.
The example scripts and `python -m benchmarks` call it unless given `--no-compile-cache`.


With several processes (`jax.distributed`), every process calls the same functions with the
same arguments: process 0 creates the folder and writes every file, and the other processes
get a `Run` with the same path that writes nothing.
"""

import csv
import io
import json
import math
import os
import platform
import re
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._checkpoint import versions
from ._errors import MetaplasticError, validates_input
from ._frames import is_dataframe
from ._io import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    stale_temporaries_in,
    to_jsonable,
)
from ._multihost import broadcast_bytes, is_main_process
from ._progress import track as track


__all__ = [
    "Run",
    "create_run",
    "default_compile_cache_dir",
    "disable_compile_cache",
    "enable_compile_cache",
    "history_rows",
    "open_run",
    "read_metrics",
    "track",
]


def default_compile_cache_dir() -> Path:
    """The folder of JAX's persistent compilation cache when none is given:
    `$METAPLASTIC_CACHE_DIR` if set, else the folder JAX was already told to use
    (`$JAX_COMPILATION_CACHE_DIR` or `jax.config`), else `$XDG_CACHE_HOME/metaplastic/jax`,
    else `~/.cache/metaplastic/jax`."""
    folder = os.environ.get("METAPLASTIC_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if folder:
        return Path(folder).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "metaplastic" / "jax"


def enable_compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in `path` (default
    `default_compile_cache_dir()`), for every program however quick to compile or small.

    Compiled programs are then written to the folder and loaded from it by later processes
    that compile the same program (same code, shapes, dtypes, JAX version and machine), which
    removes most of a script's start-up time on its second run. Call it before the first
    compilation; a later call with another folder switches to it. The folder is created.

    **Arguments:**

    - `path`: the cache folder; `None` for `default_compile_cache_dir()`.

    **Returns:** the absolute path of the folder in use.
    """
    folder = Path(path).expanduser() if path is not None else default_compile_cache_dir()
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # JAX's defaults skip programs compiled in under 1 s; cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous and os.path.abspath(previous) != str(folder):
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()  # the cache object of the old folder is built once
    return folder


def disable_compile_cache() -> None:
    """Turn JAX's persistent compilation cache off for this process (nothing is read from or
    written to any cache folder, even one set by `$JAX_COMPILATION_CACHE_DIR`)."""
    jax.config.update("jax_enable_compilation_cache", False)


def _environment() -> dict[str, Any]:
    try:
        devices = [str(d) for d in jax.devices()]
    except RuntimeError:  # pragma: no cover - no backend at all
        devices = []
    return {
        "versions": versions(),
        "backend": jax.default_backend(),
        "devices": devices,
        "x64": bool(jax.config.jax_enable_x64),
        "processes": jax.process_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "pid": os.getpid(),
    }


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else str(float(value))
    arr = np.asarray(value)
    if arr.ndim == 0 and arr.dtype.kind in "biuf":
        return _format(arr.item())
    return str(value)


class Run:
    """One run's folder. Make it with `create_run`; use it as a context manager so that a
    failure is recorded in `summary.json` too. With several processes only process 0's `Run`
    writes files (`run.writes`); the others return the same paths."""

    def __init__(self, path: Path, config: Mapping[str, Any]):
        self.path = Path(path)
        self.writes = is_main_process()
        self.config = dict(config)
        self.rows: list[dict[str, Any]] = []
        self._columns: list[str] = []
        self._start = time.perf_counter()
        self._last_flush = time.perf_counter()
        self.finished = False

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------ metrics
    @validates_input
    def log(self, **metrics: Any) -> None:
        """Add one row to `metrics.csv`, e.g. `run.log(step=3, loss=0.1)`. The file is
        rewritten atomically at most every 10 seconds, by `flush()` and by `finish()`."""
        for name in metrics:
            if name not in self._columns:
                self._columns.append(name)
        self.rows.append(dict(metrics))
        if time.perf_counter() - self._last_flush > 10.0:
            self.flush()

    @validates_input
    def log_history(self, history: Any, *, prefix: str = "") -> None:
        """Add one row per step of a fit's `History`: the loss and every Taylor coefficient
        (named by its monomial; ensembles get one column per member)."""
        for row in history_rows(history, prefix=prefix):
            self.log(**row)
        self.flush()

    def flush(self) -> None:
        """Write `metrics.csv` now (atomically)."""
        self.write_csv("metrics.csv", self.rows, self._columns)
        self._last_flush = time.perf_counter()

    @validates_input
    def write_csv(
        self,
        name: str,
        rows: Any,
        columns: Sequence[str] | None = None,
    ) -> Path:
        """Write a table into the run folder (atomically), one line per row.

        `rows` is a pandas DataFrame (e.g. a result's `to_dataframe()`), written by its
        `to_csv` without the index, or a sequence of row dicts (no pandas needed). The
        columns are `columns`, or the DataFrame's, or every key of the rows in order of
        first appearance. A missing value (`None`, or NaN in a DataFrame) is an empty cell;
        numbers are written in full (strings as given)."""
        if is_dataframe(rows):
            table = rows if columns is None else rows[list(columns)]
            text = table.to_csv(index=False, lineterminator="\n")
        else:
            if columns is None:
                columns = list(dict.fromkeys(k for row in rows for k in row))
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_format(row.get(c)) for c in columns])
            text = buf.getvalue()
        path = self.file(name)
        if self.writes:
            atomic_write_text(path, text)
        return path

    # ------------------------------------------------------------------ files
    @validates_input
    def file(self, name: str) -> Path:
        """The path of a file inside the run folder (no folders above it)."""
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise MetaplasticError(f"A run file needs a plain file name, got {name!r}.")
        return self.path / name

    @validates_input
    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON file into the run folder (atomically)."""
        path = self.file(name)
        if self.writes:
            atomic_write_json(path, obj)
        return path

    @validates_input
    def write_text(self, name: str, text: str) -> Path:
        """Write a text file (a report, a table) into the run folder (atomically)."""
        path = self.file(name)
        if self.writes:
            atomic_write_text(path, text)
        return path

    @validates_input
    def save_figure(self, figure: Any, name: str, **savefig_kwargs: Any) -> Path:
        """Save a matplotlib figure into the run folder (atomically); the format follows the
        name's suffix (default `.png`)."""
        path = self.file(name if Path(name).suffix else name + ".png")
        savefig_kwargs.setdefault("dpi", 150)
        savefig_kwargs.setdefault("bbox_inches", "tight")
        if self.writes:
            with atomic_open(path, "wb") as f:
                figure.savefig(f, format=path.suffix[1:], **savefig_kwargs)
        return path

    @validates_input
    def finish(self, summary: Mapping[str, Any] | None = None, *, status: str = "finished") -> Path:
        """Write `metrics.csv` and `summary.json` (the given values, the status and the
        seconds since the run started)."""
        if self.rows:
            self.flush()
        record = {
            "status": status,
            "seconds": time.perf_counter() - self._start,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "summary": to_jsonable(dict(summary or {})),
        }
        self.finished = True
        return self.write_json("summary.json", record)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed"
            self.finish({"error": f"{exc_type.__name__}: {exc}"}, status=status)
        elif not self.finished:
            self.finish()


@validates_input
def create_run(
    out_dir: str | os.PathLike = "out", name: str = "run", config: Mapping[str, Any] | None = None
) -> Run:
    """Create a new, unique run folder under `out_dir` and write its `config.json`. With
    several processes, process 0 creates it and every process gets its path.

    **Arguments:**

    - `out_dir`: the folder that holds run folders (created if needed).
    - `name`: a short name for the run (letters, digits, `.`, `_`, `-`).
    - `config`: the run's full configuration (JSON-able: numbers, strings, lists, dicts;
      numpy and JAX values are converted).

    **Returns:**

    A `Run`.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise MetaplasticError(
            f"A run name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}."
        )
    if config is not None and not isinstance(config, Mapping):
        raise MetaplasticError(f"config must be a mapping, got {type(config).__name__}.")
    out = Path(out_dir)
    folder, failure = None, None
    if is_main_process():
        try:
            folder = _make_folder(out, name)
        except (OSError, MetaplasticError) as err:
            failure = err
    # Every process learns the folder process 0 made (or that it could not make one).
    shared = broadcast_bytes(None if folder is None else folder.encode())
    if failure is not None:
        raise failure
    if isinstance(shared, int):
        raise MetaplasticError(f"Process 0 could not create a run folder in {out}.")
    run = Run(out / shared.decode(), config or {})
    record = {
        "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": to_jsonable(dict(config or {})),
    }
    record.update(_environment())
    run.write_json("config.json", record)
    return run


_ABSENT = object()


def _describe(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True)


@validates_input
def open_run(
    path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    *,
    ignore: Sequence[str] = (),
) -> Run:
    """Reopen an existing run folder, to complete it (resume a sweep or a fit).

    With a `config`, it must be the configuration the folder was created with (compared
    key by key as JSON values, so a tuple equals the list it was recorded as); otherwise a
    `MetaplasticError` names every differing key with the recorded and the given value. A
    run folder thus never holds results of two different settings. Keys in `ignore` are
    not compared: those that may legitimately change between the first run and its resume
    (an output folder, a progress-bar switch).

    Temporary files that a process killed while writing into the folder left behind are
    removed. The returned `Run` has the recorded configuration. Its `rows` start empty: `metrics.csv`
    is not read back, so a resumed run that logs must log every row again (as a resumed
    fit does from its restored history), or keep its own table with `write_csv`.

    **Arguments:**

    - `path`: the run folder (as made by `create_run`).
    - `config`: the configuration of this invocation, or `None` to reopen without checking.
    - `ignore`: configuration keys that may differ.

    **Returns:**

    A `Run`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MetaplasticError(f"There is no run folder at {str(folder)!r}.")
    try:
        record = json.loads((folder / "config.json").read_text())
        recorded = record["config"]
        if not isinstance(recorded, dict):
            raise TypeError("config is not a JSON object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MetaplasticError(
            f"{str(folder)!r} is not a run folder: its config.json cannot be read ({err})."
        ) from None
    if config is not None:
        if not isinstance(config, Mapping):
            raise MetaplasticError(f"config must be a mapping, got {type(config).__name__}.")
        if isinstance(ignore, str):
            ignore = (ignore,)
        # Through JSON, as it was recorded: tuples become lists, NaN becomes null.
        given = json.loads(json.dumps(to_jsonable(dict(config)), allow_nan=False))
        skip = {str(k) for k in ignore}
        differ = [
            f"{key}: recorded {_describe(recorded.get(key, _ABSENT))}, "
            f"given {_describe(given.get(key, _ABSENT))}"
            for key in sorted(set(recorded) | set(given))
            if key not in skip and recorded.get(key, _ABSENT) != given.get(key, _ABSENT)
        ]
        if differ:
            raise MetaplasticError(
                f"The run folder {str(folder)!r} was made with a different configuration; "
                "resume it with the recorded settings or start a new run. Differing: "
                + "; ".join(differ)
                + "."
            )
    if is_main_process():
        # A process killed while writing a file of this run left its temporary behind.
        for tmp in stale_temporaries_in(folder):
            tmp.unlink(missing_ok=True)
    return Run(folder, recorded)


def _make_folder(out: Path, name: str) -> str:
    """Create a new, uniquely named folder in `out`; returns its name."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        folder = f"{name}-{stamp}-{secrets.token_hex(3)}"
        try:
            (out / folder).mkdir()  # exclusive: fails if another run took this name
            return folder
        except FileExistsError:
            continue
    # pragma: no cover - 100 collisions of a 24-bit random suffix
    raise MetaplasticError(f"Could not create a unique run folder in {out}.")


def history_rows(history: Any, *, prefix: str = "") -> list[dict[str, Any]]:
    """One dict per step of a fit's `History`: `step` (from 1), `loss` and the coefficient
    of every monomial of every Taylor rule in the trained parameters."""
    from .rules import TaylorRule

    loss = np.asarray(history.loss)
    steps = loss.shape[0]
    columns: dict[str, np.ndarray] = {}

    def add(name: str, values: np.ndarray) -> None:
        values = values.reshape(steps, -1)
        if values.shape[1] == 1:
            columns[prefix + name] = values[:, 0]
        else:
            for m in range(values.shape[1]):
                columns[f"{prefix}{name}[{m}]"] = values[:, m]

    add("loss", loss)
    rules = [
        leaf
        for leaf in jax.tree.leaves(history.params, is_leaf=lambda n: isinstance(n, TaylorRule))
        if isinstance(leaf, TaylorRule)
    ]
    from .rules import format_monomial

    for i, rule in enumerate(rules):
        c = np.asarray(rule.coefficients)
        k = len(rule.factors)
        tag = f"rule{i}:" if len(rules) > 1 else ""
        for exps in np.ndindex(*c.shape[c.ndim - k :]):
            add(tag + format_monomial(exps, rule.factors), c[(Ellipsis, *exps)])
    return [
        {"step": e + 1, **{name: float(v[e]) for name, v in columns.items()}} for e in range(steps)
    ]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a run's `metrics.csv` (or the run folder's) as a list of dicts, one per row,
    with numbers as numbers: an integer as `int`, any other number (`nan` and `inf`
    included) as `float`, an empty cell (a column the row did not log) as `None`, and any
    other text as the string it is."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
