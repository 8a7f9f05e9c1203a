"""The per-epoch history: metrics files and the epoch kept by ``keep_best``.

:class:`MetricsWriter` appends one row per epoch to a ``.csv`` or ``.jsonl`` file and, on
resume, cuts it back to the checkpoint's epoch so no row is duplicated; :class:`BestEpoch`
tracks the epoch with the best validation metric and the trainer's state after it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import tempfile
from typing import Any

from ..checkpoints import remove_stale_temporaries

__all__ = ["MAXIMISED_METRICS", "BestEpoch", "MetricsWriter"]

MAXIMISED_METRICS = ("accuracy",)
"""Validation metrics where larger is better (``keep_best`` minimises all others)."""


def _epoch(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _kept_csv_lines(text: str, keep_epochs: int) -> list[str]:
    lines = text.splitlines(keepends=True)
    kept = lines[:1]
    fields = next(csv.reader(lines[:1]), [])
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        if len(row) == len(fields) and line.endswith("\n") and _epoch(row[0]) is not None:
            if _epoch(row[0]) <= keep_epochs:
                kept.append(line)
    return kept


def _kept_jsonl_lines(text: str, keep_epochs: int) -> list[str]:
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            epoch = _epoch(json.loads(line).get("epoch"))
        except (ValueError, AttributeError):
            continue
        if line.endswith("\n") and epoch is not None and epoch <= keep_epochs:
            kept.append(line)
    return kept


class MetricsWriter:
    """Appends one row per epoch to a ``.csv`` or ``.jsonl`` file.

    Resuming (``keep_epochs`` given) keeps the rows of epochs ``1..keep_epochs`` and drops
    later or damaged ones: a run killed after writing an epoch's row but before its
    checkpoint would otherwise repeat that row. Without a ``path`` it writes nothing.
    """

    def __init__(self, path: str | os.PathLike | None, *, keep_epochs: int | None) -> None:
        self.path = None if path is None else pathlib.Path(path)
        if self.path is None:
            return
        if self.path.suffix not in (".csv", ".jsonl", ".json"):
            raise ValueError(f"metrics_path must end in .csv or .jsonl, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)  # left by a run killed while cutting the file
        if keep_epochs is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._truncate(keep_epochs)

    def _truncate(self, keep_epochs: int) -> None:
        assert self.path is not None
        text = self.path.read_text()
        if self.path.suffix == ".csv":
            kept = _kept_csv_lines(text, keep_epochs)
        else:
            kept = _kept_jsonl_lines(text, keep_epochs)
        if "".join(kept) == text:
            return
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                handle.write("".join(kept))
            os.replace(tmp, self.path)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (a ``.csv`` file gets its header with the first row)."""
        if self.path is None:
            return
        if self.path.suffix == ".csv":
            new = not self.path.exists()
            with self.path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        else:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


class BestEpoch:
    """The epoch with the best validation metric so far, and the trainer's state after it."""

    def __init__(self, metric: str) -> None:
        self.metric, self.sign = metric, -1.0 if metric in MAXIMISED_METRICS else 1.0
        self.epoch, self.value, self.snapshot = 0, math.inf, None

    def update(self, row: dict[str, Any], snapshot: Any) -> None:
        """Keep ``row``'s epoch if its metric is better; ``snapshot()`` is called only then."""
        value = self.sign * row[self.metric]
        if value < self.value:  # ties keep the earlier epoch
            self.epoch, self.value, self.snapshot = row["epoch"], value, snapshot()

    def state(self) -> dict[str, Any]:
        """What checkpoints store, for :meth:`load`."""
        return {"epoch": self.epoch, "value": self.value, "snapshot": self.snapshot}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` stored in a checkpoint."""
        self.epoch, self.value, self.snapshot = state["epoch"], state["value"], state["snapshot"]
