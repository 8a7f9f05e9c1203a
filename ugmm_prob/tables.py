"""Reading and writing the user's tables for the command line (no pandas needed).

A table is a CSV file with a header line (column names) and one row per line, or a NumPy
``.npy`` file holding a 2-D numeric array (columns named ``x0``, ``x1``, ...). Empty cells
and ``nan``, ``na``, ``n/a``, ``?`` (any case) are missing values. Every problem is a
:class:`TableError` whose message names the file, the line and the column, e.g.
``data.csv line 5, column 'alcohol': 'abc' is not a number``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

__all__ = ["MISSING", "Table", "TableError", "read_table", "write_table"]

MISSING = frozenset({"", "nan", "na", "n/a", "?"})
"""Cell values (lower-cased, stripped) that mean "missing"."""


class TableError(ValueError):
    """A table that cannot be read: the message names the file, line and column."""


@dataclass
class Table:
    """A table's header and raw cells.

    Attributes:
        path: where it came from (for messages).
        columns: the column names, in order.
        rows: the cells of every row as strings (``len(columns)`` each).
        lines: the file line of every row (the header is line 1 of a CSV; for ``.npy``
            files, the row index + 1).
    """

    path: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]

    def where(self, row: int, column: str) -> str:
        """``"data.csv line 5, column 'alcohol'"``: how messages name a cell."""
        return f"{self.path} line {self.lines[row]}, column {column!r}"

    def index(self, column: str) -> int:
        """Position of ``column`` (a :class:`TableError` lists the columns there are)."""
        if column not in self.columns:
            raise TableError(
                f"{self.path}: no column {column!r}; the columns are {', '.join(self.columns)}"
            )
        return self.columns.index(column)

    def numbers(self, columns: Sequence[str]) -> np.ndarray:
        """The cells of ``columns`` as floats ``(n, len(columns))``, NaN where missing.

        Raises:
            TableError: a cell that is not a finite number, naming its line and column.
        """
        positions = [self.index(c) for c in columns]
        out = np.empty((len(self.rows), len(columns)), dtype=np.float64)
        for r, row in enumerate(self.rows):
            for j, (c, p) in enumerate(zip(columns, positions, strict=True)):
                out[r, j] = _number(row[p], lambda r=r, c=c: self.where(r, c))
        return out

    def labels(self, column: str) -> list[str | None]:
        """The cells of ``column`` as strings (``None`` where missing)."""
        p = self.index(column)
        return [None if _missing(row[p]) else row[p].strip() for row in self.rows]


def _missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING


def _number(cell: str, where) -> float:
    if _missing(cell):
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise TableError(f"{where()}: {cell.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise TableError(f"{where()}: {cell.strip()!r} is not a finite number")
    return value


def read_table(path: str | os.PathLike) -> Table:
    """Read a CSV file (with a header) or a ``.npy`` array.

    Raises:
        TableError: the file is missing or empty, has no data rows, a row has the wrong
            number of cells, or (``.npy``) is not a 2-D numeric array.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: cannot read it as a UTF-8 CSV file ({error})") from None
    if not text.strip():
        raise TableError(f"{path}: empty file, expected a header line and data rows")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    columns = [name.strip() for name in header]
    if any(not name for name in columns):
        raise TableError(f"{path} line 1: every column needs a name in the header")
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise TableError(f"{path} line 1: column names appear twice: {', '.join(twice)}")
    rows, lines = [], []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(columns):
            raise TableError(
                f"{path} line {reader.line_num}: expected {len(columns)} cells (the header's "
                f"columns), got {len(row)}"
            )
        rows.append(row)
        lines.append(reader.line_num)
    if not rows:
        raise TableError(f"{path}: a header but no data rows")
    return Table(str(path), columns, rows, lines)


def _read_npy(path: pathlib.Path) -> Table:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise TableError(f"{path}: not a readable .npy array ({error})") from None
    if array.ndim != 2 or array.dtype.kind not in "biuf" or len(array) == 0:
        raise TableError(
            f"{path}: expected a 2-D numeric array with at least one row, got shape "
            f"{array.shape} of dtype {array.dtype}"
        )
    rows = [["" if math.isnan(v) else repr(float(v)) for v in row] for row in array.tolist()]
    columns = [f"x{j}" for j in range(array.shape[1])]
    return Table(str(path), columns, rows, list(range(1, len(rows) + 1)))


def write_table(columns: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    """Write a header and rows as CSV; floats with 10 significant digits, NaN as empty."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(v) for v in row])


def _format(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else format(float(value), ".10g")
    return str(value)
