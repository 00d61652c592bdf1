"""Flies from a table: one row per odour presentation (`from_table`), and back
(`DrosophilaData.to_dataframe`)."""

from typing import Any

import numpy as np

from .._errors import MetaplasticError, validates_input
from .._frames import frame, numbers, table_columns
from ._loader import assemble_flies, check_blocks
from ._records import DrosophilaData


def _shown(value: Any) -> Any:
    """A table value as the user wrote it (a NumPy scalar as its Python value)."""
    return value.item() if isinstance(value, np.generic) else value


def _empty(values: np.ndarray) -> np.ndarray:
    """Where a column of labels is empty: `None` or NaN."""
    return np.asarray([v is None or v != v for v in values], bool)


def _first_bad(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


@validates_input
def from_table(
    table: Any,
    *,
    subject: str = "subject",
    odour: str = "odour",
    choice: str = "choice",
    reward: str = "reward",
    trial: str | None = None,
    odours: tuple[Any, Any] | None = None,
    window: int = 10,
    block_size: int = 80,
) -> DrosophilaData:
    """Flies from a long-format table with one row per odour presentation, in the order the
    odours were presented, e.g. a pandas DataFrame read from a CSV file:

    | subject | odour | choice | reward |
    |---|---|---|---|
    | fly1 | 0 | 0 | |
    | fly1 | 1 | 1 | 1 |

    A trial is a run of rejections ended by one acceptance, as in `load_drosophila` (whose
    `DrosophilaData` this returns, so every analysis of `metaplastic.flies` runs on it);
    rejections after a subject's last acceptance form a final trial without acceptance.

    **Arguments:**

    - `table`: a pandas DataFrame, or a mapping of column names to 1-D arrays (plain NumPy).
    - `subject`, `odour`, `choice`, `reward`: the names of the columns holding the subject
      (any labels; subjects keep the order of their first row), the odour of the
      presentation (two values), whether it was accepted (1) or rejected (0), and the reward
      of an acceptance (0 or 1; empty/NaN or 0 on rejections).
    - `trial`: optionally the column numbering the trials; then every trial is checked to
      be rejections ended by one acceptance (the last trial may lack it).
    - `odours`: the two odour values in the order of the network's two inputs (default: the
      two values found, sorted).
    - `window`, `block_size`: as in `load_drosophila`.

    **Returns:**

    A `DrosophilaData`, one fly per subject (its `FlyInfo.path` is `"table:<subject>"`).
    No row is dropped.

    Raises `MetaplasticError` naming the column, row and subject for a missing column, an
    empty table, columns of different lengths, a non-numeric choice or reward, NaN where a
    value is needed, a choice other than 0/1, a reward other than 0/1 on an acceptance (or
    other than 0/empty on a rejection), more
    or fewer than two odours, a subject without any acceptance, and (with `trial`) trial
    numbers that decrease or a trial that does not end with its only acceptance.
    """
    check_blocks(window, block_size)
    recordings = table_recordings(
        table,
        subject=subject,
        odour=odour,
        choice=choice,
        reward=reward,
        trial=trial,
        odours=odours,
    )
    return assemble_flies(recordings, window=window, block_size=block_size)


def table_recordings(
    table: Any,
    *,
    subject: str,
    odour: str,
    choice: str,
    reward: str,
    trial: str | None,
    odours: tuple[Any, Any] | None,
    source: str | None = None,
) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """The checked recordings `(name, source, odour, choice, reward)` of every subject of
    `table`, as `assemble_flies` takes them (`from_table` documents the checks); `source`
    defaults to `"table:<subject>"`."""
    names = {"subject": subject, "odour": odour, "choice": choice, "reward": reward}
    if trial is not None:
        names["trial"] = trial
    wanted = [(v, f"the {k}", f" Name the column with {k}=...") for k, v in names.items()]
    cols = dict(zip(names, table_columns(table, wanted)))
    n = len(cols["subject"])
    if n == 0:
        raise MetaplasticError("table: the table is empty (no presentation).")
    subjects = cols["subject"]
    missing = _first_bad(_empty(subjects))
    if missing is not None:
        raise MetaplasticError(f"table: column {subject!r} is empty/NaN at row {missing}.")

    def at(row: int) -> str:
        return f"{row} (subject {_shown(subjects[row])!r})"

    choices = numbers(cols["choice"], choice, at=at)
    bad = _first_bad(~np.isin(choices, (0.0, 1.0)))
    if bad is not None:
        raise MetaplasticError(
            f"table: column {choice!r} is {_shown(cols['choice'][bad])!r} at row {at(bad)}; "
            "a choice is 0 (rejected) or 1 (accepted)."
        )
    accepted = choices == 1.0
    rewards = numbers(cols["reward"], reward, at=at)
    bad = _first_bad(accepted & ~np.isin(rewards, (0.0, 1.0)))
    if bad is not None:
        raise MetaplasticError(
            f"table: column {reward!r} is {_shown(cols['reward'][bad])!r} at row {at(bad)}, "
            "an acceptance; its reward must be 0 or 1."
        )
    bad = _first_bad(~accepted & ~np.isnan(rewards) & (rewards != 0.0))
    if bad is not None:
        raise MetaplasticError(
            f"table: column {reward!r} is {_shown(cols['reward'][bad])!r} at row {at(bad)}, "
            "a rejection; a rejection has no reward (leave it empty or 0)."
        )

    raw_odours = cols["odour"]
    missing = _first_bad(_empty(raw_odours))
    if missing is not None:
        raise MetaplasticError(f"table: column {odour!r} is empty/NaN at row {at(missing)}.")
    found = sorted(set(raw_odours.tolist()), key=str)
    if odours is None:
        if len(found) != 2:
            raise MetaplasticError(
                f"table: column {odour!r} must hold exactly two odours, found {len(found)}: "
                f"{found[:10]}."
            )
        odours = tuple(sorted(found)) if all(isinstance(v, int | float) for v in found) else found
    elif len(odours) != 2 or odours[0] == odours[1]:
        raise MetaplasticError(f"odours must be two different values, got {odours!r}.")
    odour_index = np.full(n, -1)
    for k, value in enumerate(odours):
        odour_index[raw_odours == value] = k
    bad = _first_bad(odour_index < 0)
    if bad is not None:
        raise MetaplasticError(
            f"table: column {odour!r} is {_shown(raw_odours[bad])!r} at row {at(bad)}, not one "
            f"of the odours {tuple(odours)}."
        )

    trials = None if trial is None else numbers(cols["trial"], trial, at=at)
    order = list(dict.fromkeys(subjects.tolist()))
    recordings = []
    for name in order:
        rows = np.nonzero(subjects == name)[0]
        c = choices[rows].astype(np.int64)
        if not c.any():
            raise MetaplasticError(
                f"table: subject {name!r} has no acceptance in its {len(rows)} rows, so no trial."
            )
        if trial is not None:
            _check_trials(trials[rows], c, rows, name, trial)
        recordings.append(
            (
                str(name),
                f"table:{name}" if source is None else source,
                odour_index[rows],
                c,
                rewards[rows][c == 1].astype(np.int64),
            )
        )
    return recordings


def _check_trials(trials: np.ndarray, choices: np.ndarray, rows: np.ndarray, name, column):
    """Each trial: rejections ended by its one acceptance (the last may lack it)."""
    missing = _first_bad(np.isnan(trials))
    if missing is not None:
        raise MetaplasticError(
            f"table: column {column!r} is empty/NaN at row {rows[missing]} (subject {name!r})."
        )
    back = _first_bad(np.diff(trials) < 0)
    if back is not None:
        raise MetaplasticError(
            f"table: column {column!r} decreases at row {rows[back + 1]} (subject {name!r}); "
            "the rows must be in the order of the presentations."
        )
    # The trial of presentation i as the choices imply it: acceptances before i.
    implied = np.cumsum(choices) - choices
    change = np.concatenate([[True], np.diff(trials) != 0])
    starts = np.concatenate([[True], implied[1:] != implied[:-1]])
    bad = _first_bad(change != starts)
    if bad is not None:
        raise MetaplasticError(
            f"table: trial {trials[bad]:g} of subject {name!r} does not end with its only "
            f"acceptance (row {rows[bad]}): a trial is rejections ended by one acceptance."
        )


def drosophila_rows(data: DrosophilaData) -> list[dict[str, Any]]:
    """One row per presentation of every fly: `subject`, `trial`, `block`, `odour` (0/1),
    `choice` (1 = accepted) and `reward` (the trial's reward on its acceptance, NaN on
    rejections)."""
    ds = data.dataset
    odours, choices = np.asarray(ds.odours), np.asarray(ds.choices)
    pmask, rewards = np.asarray(ds.presentation_mask), np.asarray(ds.rewards)
    block = np.asarray(data.block)
    out = []
    for i, name in enumerate(data.names):
        for t, p in zip(*np.nonzero(pmask[i])):
            accepted = int(choices[i, t, p])
            out.append(
                {
                    "subject": name,
                    "trial": int(t),
                    "block": int(block[i, t]),
                    "odour": int(odours[i, t, p]),
                    "choice": accepted,
                    "reward": float(rewards[i, t]) if accepted else float("nan"),
                }
            )
    return out


def drosophila_frame(data: DrosophilaData) -> Any:
    return frame(drosophila_rows(data), ["subject", "trial", "block", "odour", "choice", "reward"])
