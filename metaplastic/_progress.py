"""Progress bars (tqdm)."""

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm


T = TypeVar("T")


class Progress:
    """A tqdm progress bar over `total` units that shows a rate and the latest values;
    with `enabled=False` it does nothing."""

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool = True, initial: int = 0):
        self._bar = None
        if enabled:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1, **values: Any) -> None:
        if self._bar is None:
            return
        if values:  # set before the update, which redraws (at most every 0.1 s)
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

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
