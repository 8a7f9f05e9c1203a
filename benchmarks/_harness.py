"""The benchmarks' one harness: splits, seeds, validation selection, timing, records.

A benchmark script says what it measures; this module says how every measurement is taken:

- :func:`split` carves a test split (stratified by the labels where there are labels) with a
  seed, and :func:`validation_rows` a validation split out of the training rows; nothing is
  chosen on a test split, which is scored once per row of a table;
- :class:`Standardiser` maps features to z-scores with the training rows' statistics, and its
  ``log_jacobian`` takes a log-density of ``z`` back to the original units;
- :func:`select_on_validation` fits candidates on the fitting rows and keeps the one with
  the best validation score;
- :func:`timed` measures a call's wall time; :func:`mean_sd` summarises seeds;
- :func:`record` builds a ``docs/results.json`` record (mean, sd and seeds over a row's
  runs, the split and command, as the tabular records always had); :func:`publish` writes
  records and a markdown block (:mod:`_results`), or only prints with ``--no-write``;
- :func:`arguments` adds the flags every script shares (``--quick``, ``--no-write``,
  ``--seeds``, ``--threads``) and :func:`command_line` the command that produced a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from _results import RESULTS_JSON, machine, replace_block, update_results

T = TypeVar("T")
C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Split:
    """A train/test split of one table in the original units (float64), and how it was made."""

    name: str
    seed: int
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    how: str


def split(
    name: str, x: np.ndarray, y: np.ndarray | None, seed: int, test_fraction: float = 0.2
) -> Split:
    """``train_test_split`` with ``random_state=seed``, stratified by ``y`` if given."""
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float64)
    if y is None:
        x_train, x_test = train_test_split(x, test_size=test_fraction, random_state=seed)
        y_train = y_test = None
    else:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, stratify=y, random_state=seed
        )
    kind = "stratified " if y is not None else ""
    how = f"{kind}{1 - test_fraction:.0%}/{test_fraction:.0%} split, seeds in random_state"
    return Split(name, seed, x_train, x_test, y_train, y_test, how)


def validation_rows(
    n: int, y: np.ndarray | None, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fitting and validation row indices of a training split (stratified by ``y`` if given)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(n)
    fit_rows, val_rows = train_test_split(rows, test_size=fraction, stratify=y, random_state=seed)
    return fit_rows, val_rows


@dataclasses.dataclass(frozen=True)
class Standardiser:
    """``z = (x - mean) / sd`` with the training rows' mean and population sd."""

    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def from_train(cls, x: np.ndarray) -> Standardiser:
        """Statistics of the training rows (a constant column keeps sd 1)."""
        sd = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(sd > 0, sd, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.sd

    @property
    def log_jacobian(self) -> float:
        """``log |dz/dx| = -sum_d log sd_d``: add it to ``log p(z)`` to get ``log p(x)``."""
        return float(-np.log(self.sd).sum())


def select_on_validation(
    candidates: Iterable[C], score: Callable[[C], float]
) -> tuple[C, float, list[tuple[C, float]]]:
    """The candidate with the highest ``score`` (fitted on the fitting rows, scored on the
    validation rows); the first of equal ones wins. Returns it, its score and every score."""
    scored = [(candidate, float(score(candidate))) for candidate in candidates]
    if not scored:
        raise ValueError("select_on_validation: no candidate")
    best = max(scored, key=lambda pair: pair[1])
    return best[0], best[1], scored


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """``call()`` and its wall time in seconds."""
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def record(
    experiment: str,
    metric: str,
    values: Sequence[float],
    seeds: Sequence[int],
    *,
    split: str,
    command: str,
    digits: int = 4,
    **extra: Any,
) -> dict[str, Any]:
    """A ``docs/results.json`` record of one row: the mean and sd of its runs, one per seed."""
    mean, sd = mean_sd(values)
    return {
        "experiment": experiment,
        "metric": metric,
        "value": round(mean, digits),
        "sd": round(sd, digits),
        "seeds": list(seeds),
        "paper": None,
        "split": split,
        "command": command,
        **extra,
    }


def arguments(
    parser: argparse.ArgumentParser, seeds: Sequence[int], tables: Iterable[str] | None = None
) -> None:
    """The flags every benchmark shares (and ``--tables``, all of ``tables`` by default, for
    the scripts that run over tables)."""
    parser.add_argument("--quick", action="store_true", help="tiny settings, seconds")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(seeds), help="split seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    if tables is not None:
        tables = list(tables)
        parser.add_argument("--tables", nargs="*", default=tables, choices=tables)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced a run, for its table and records."""
    given = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"benchmarks/{script}", *given])


def publish(
    records: list[dict], block: str, markdown: str, no_write: bool, script: str | None = None
) -> None:
    """Print the table; unless ``no_write``, put the records in docs/results.json and the
    table (with the machine line) between the ``block`` markers of docs/results.md. With
    ``script``, the records an earlier run of ``benchmarks/<script>`` wrote and this one no
    longer does are removed (a row the script dropped must not linger as a result)."""
    text = f"{markdown}\n\nMachine: {machine()}."
    print(text, flush=True)
    if no_write:
        print("nothing written (--no-write)", flush=True)
        return
    if script is not None and RESULTS_JSON.exists():
        mine = f"python benchmarks/{script}"
        kept = [
            r
            for r in json.loads(RESULTS_JSON.read_text())
            if not str(r.get("command", "")).startswith(mine)
        ]
        RESULTS_JSON.write_text(json.dumps(kept, indent=2) + "\n")
    update_results(records)
    replace_block(block, text)
