"""The ``ugmm-prob`` command: ``demo``, ``train``, ``evaluate``, and for your own tables
``fit``, ``score``, ``sample``, ``impute`` and ``posterior``.

``ugmm-prob demo`` is the main job on embedded data: it trains the paper's joint-score
uGMM-NN on Iris (shipped with the package), prints the test accuracy and the exact class
posteriors of a few flowers, and saves a figure. ``train`` runs any experiment of
:mod:`ugmm_prob.experiments` with checkpoints and metrics files; ``evaluate`` scores a
checkpoint on its data set's test split.

``fit DATA.csv --out DIR [--target COLUMN] [--model circuit|net]`` fits an estimator of
:mod:`ugmm_prob.sklearn` to a CSV table with a header (or a ``.npy`` array; see
:mod:`ugmm_prob.tables`) and saves ``DIR/model.pt`` (a checkpoint holding the model, the
standardisation and the column names), ``DIR/metrics.json`` and ``DIR/summary.png``;
``score``, ``sample``, ``impute`` and ``posterior`` read that folder and write CSV to stdout
or ``--output FILE`` (never over an existing file without ``--force``). A bad cell, a row of
the wrong length, an unknown class or an empty file is one line naming the line and column.

Every user error (a bad flag value, an output path that is a file, a device this machine
lacks, a damaged checkpoint, resuming with other settings) is one line on stderr and exit
status 2, and flag values are checked before any training starts. Ctrl-C during ``train``
stops after saving the last completed epoch, prints how to resume, and exits with 130.

The command lives in a package by concept: :mod:`ugmm_prob.cli` builds the parser and runs
a subcommand (:func:`main`, the console script; ``python -m ugmm_prob``); ``_presets``
holds ``demo``, ``train`` and ``evaluate``, ``_tables`` the commands for your own tables,
``_common`` the usage error and the path and device checks they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..checkpoints import CheckpointError
from ..datasets import CorruptDatasetError, DatasetNotFoundError
from ..tables import TableError
from ..training import DeviceUnavailableError, ResumeMismatchError, TrainingDivergedError
from ._common import UsageError
from ._presets import add_preset_commands, check_train_args
from ._tables import add_table_commands

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ugmm-prob``."""
    parser = argparse.ArgumentParser(
        prog="ugmm-prob", description="uGMM-NN: neural networks of univariate Gaussian mixtures"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_preset_commands(sub)
    add_table_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ugmm-prob`` console script; returns the exit status.

    0 on success, 2 for any user error (one line on stderr), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.command == "train":
            check_train_args(args)
        return args.run(args)
    except (
        UsageError,
        DatasetNotFoundError,
        CorruptDatasetError,
        CheckpointError,
        DeviceUnavailableError,
        TrainingDivergedError,
        ResumeMismatchError,
        TableError,
    ) as error:
        message = " ".join(str(error).split())  # one line
        print(f"ugmm-prob {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ugmm-prob {args.command}: interrupted", file=sys.stderr)
        return 130
