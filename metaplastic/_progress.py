"""Progress bars (tqdm, an optional extra) that degrade to log lines when tqdm is missing."""

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar


logger = logging.getLogger("metaplastic")
T = TypeVar("T")
_warned_missing = [False]


class Progress:
    """A progress bar over `total` units that shows a rate and the latest values.

    With `enabled=False` it does nothing; without tqdm installed it logs a line at INFO level
    at most every 10 seconds instead.
    """

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.count = initial
        self._bar = None
        self._last_log = time.perf_counter()
        self._enabled = enabled
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if not _warned_missing[0]:
                logger.info(
                    "tqdm is not installed (pip install metaplastic[progress]); "
                    "progress is logged instead"
                )
                _warned_missing[0] = True
            return
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1, **values: Any) -> None:
        self.count += n
        if not self._enabled:
            return
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        if self._bar is not None:
            if shown:  # set before the update, which redraws (at most every 0.1 s)
                self._bar.set_postfix(shown, refresh=False)
            self._bar.update(n)
        elif time.perf_counter() - self._last_log > 10.0 or self.count == self.total:
            self._last_log = time.perf_counter()
            extra = " ".join(f"{k}={v}" for k, v in shown.items())
            logger.info("%s: %d/%d %s %s", self.desc, self.count, self.total, self.unit, extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(
    iterable: Iterable[T], *, desc: str = "sweep", total: int | None = None, progress: bool = True
) -> Iterator[T]:
    """Iterate with a progress bar (for sweeps): `for cfg in track(configs, desc="sweep")`."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = 0
    with Progress(total, desc=desc, unit="run", enabled=progress) as bar:
        for item in iterable:
            yield item
            bar.update(1)
