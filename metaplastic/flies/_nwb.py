"""Flies in NWB files (the format of the DANDI archive): one file per fly, each odour
presentation a row of the file's trials table (`save_nwb`, `load_nwb`). Needs pynwb (the
optional extra `nwb`)."""

import datetime
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from .._errors import MetaplasticError, require, validates_input
from ._loader import assemble_flies, check_blocks, recording_files
from ._records import DrosophilaData
from ._table import drosophila_rows, table_recordings


COLUMNS = {
    "odour": "the odour presented: 0 or 1 (the network's input unit)",
    "choice": "1 if the fly accepted the presentation, 0 if it rejected it",
    "reward": "the reward of an acceptance (0 or 1); NaN on rejections",
    "trial": "the trial: rejections ended by one acceptance",
    "block": "the block of the trial",
}


def _pynwb() -> Any:
    return require("pynwb", "nwb", "Reading and writing NWB files")


@validates_input
def save_nwb(
    data: DrosophilaData,
    folder: str | os.PathLike,
    *,
    species: str = "Drosophila melanogaster",
    session_start: datetime.datetime | None = None,
) -> list[pathlib.Path]:
    """Write every fly of `data` to its own NWB file `<folder>/<fly>.nwb` (written atomically):
    the presentations as the rows of the trials table (columns `odour`, `choice`, `reward`,
    `trial`, `block`; `start_time`/`stop_time` are the presentation's index in seconds,
    since the recordings carry no times) and the fly as the file's subject. `load_nwb` reads
    them back to the same `DrosophilaData`.

    **Returns:** the paths written, in the order of the flies.
    """
    pynwb = _pynwb()
    if not isinstance(data, DrosophilaData):
        raise MetaplasticError(f"save_nwb() needs a DrosophilaData, got {type(data).__name__}.")
    start = session_start or datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = drosophila_rows(data)
    paths = []
    for name in data.names:
        mine = [r for r in rows if r["subject"] == name]
        nwb = pynwb.NWBFile(
            session_description="two-odour operant choices, one row per odour presentation",
            identifier=str(name),
            session_start_time=start,
            subject=pynwb.file.Subject(subject_id=str(name), species=species),
        )
        for column, description in COLUMNS.items():
            nwb.add_trial_column(name=column, description=description)
        for k, r in enumerate(mine):
            nwb.add_trial(start_time=float(k), stop_time=float(k + 1), **{c: r[c] for c in COLUMNS})
        path = folder / f"{name}.nwb"
        tmp = folder / f".{name}.partial.nwb"  # hidden: load_nwb skips it
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        os.replace(tmp, path)
        paths.append(path)
    return paths


@validates_input
def load_nwb(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    odour: str = "odour",
    choice: str = "choice",
    reward: str = "reward",
    trial: str | None = "trial",
    odours: tuple[Any, Any] | None = None,
    window: int = 10,
    block_size: int = 80,
) -> DrosophilaData:
    """Flies from NWB files whose trials table holds one row per odour presentation (as
    `save_nwb` writes them, or any file with such columns): one fly per file, named by the
    file's subject (`subject_id`, else the file name).

    **Arguments:**

    - `path`: an `.nwb` file, a folder (every `*.nwb` in it, in natural order), or a
      sequence of files. Files from the DANDI archive are read the same way once downloaded
      (`dandi download DANDI:<dandiset>/<version>`).
    - `odour`, `choice`, `reward`, `trial`: the names of the trials table's columns (`trial`
      may be `None` when the table has none); `odours`, `window`, `block_size`: as in
      `from_table`.

    **Returns:** a `DrosophilaData`, flies in the order of the files.

    Raises `MetaplasticError` naming the file for one that is not an NWB file, one without
    a trials table, and any problem `from_table` finds in its table (column, row, subject).
    """
    pynwb = _pynwb()
    check_blocks(window, block_size)
    recordings = []
    for f in recording_files(path, ".nwb", "load_nwb"):
        try:
            with pynwb.NWBHDF5IO(str(f), "r") as io:
                nwb = io.read()
                if nwb.trials is None:
                    raise MetaplasticError(
                        f"{f}: the file has no trials table (the presentations are read from "
                        "it: one row per odour presentation)."
                    )
                table = nwb.trials.to_dataframe()
                subject = getattr(nwb.subject, "subject_id", None) or f.stem
        except MetaplasticError:
            raise
        except Exception as err:
            raise MetaplasticError(
                f"{f}: is not a readable NWB file ({type(err).__name__}: {err})."
            ) from err
        try:
            recordings += table_recordings(
                table.assign(_subject=subject),
                subject="_subject",
                odour=odour,
                choice=choice,
                reward=reward,
                trial=trial,
                odours=odours,
                source=str(f),  # each fly's source is its file
            )
        except MetaplasticError as err:
            raise MetaplasticError(f"{f}: {err}") from err
    return assemble_flies(recordings, window=window, block_size=block_size)
