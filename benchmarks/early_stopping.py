"""How ``UGMMCircuitDensity``'s ``n_iter_no_change`` was chosen: what stopping a candidate
early costs its size search, and what it saves.

On the training rows of each split of ``benchmarks/tabular.py`` (:mod:`_harness`'s stratified
80/20 split; the test rows are never read), complete and with a share of the cells removed
completely at random (``--rates``; as ``benchmarks/missing.py`` removes them), the default
search runs with ``n_iter_no_change=None``: every candidate trains ``max_iter`` epochs and
its held-out curve (``-log p`` per variable on the estimator's own held-out fifth, one value
per epoch) is recorded. Stopping with patience ``P`` follows each curve up to the first
epoch ``P`` past its best so far (the training loop's rule, which
``tests/test_density_search.py`` checks against full runs), so every ``P`` is read off the
same curves: whether the search keeps the same candidate and epoch, how much worse the
kept held-out score is when it does not, and the share of the epochs it trains.

Writes the table to docs/performance.md (block ``early-stopping``).

    python benchmarks/early_stopping.py
    python benchmarks/early_stopping.py --quick --no-write
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from _harness import arguments, command_line, split, timed
from _results import REPO, machine, replace_block
from missing import remove_cells
from tabular import TABLES

from ugmm_prob.sklearn import UGMMCircuitDensity

PATIENCES = (5, 10, 20)


class RecordingDensity(UGMMCircuitDensity):
    """The density estimator, keeping every candidate's held-out curve (``curves_``)."""

    def _fit_candidate(self, z, z_val, seed, candidate, epochs=None):
        super()._fit_candidate(z, z_val, seed, candidate, epochs)
        if z_val is not None:
            self.curves_.append((dict(candidate), [row["nll"] for row in self.history_]))


def stopped(curve: Sequence[float], patience: int | None) -> tuple[int, float, int]:
    """``(kept epoch, its value, epochs trained)`` of one curve under early stopping."""
    best, value = 0, math.inf
    for epoch, nll in enumerate(curve, start=1):
        if nll < value:  # ties keep the earlier epoch, as the training loop does
            best, value = epoch, nll
        if patience is not None and epoch - best >= patience:
            return best, value, epoch
    return best, value, len(curve)


def search(curves: list, patience: int | None) -> tuple[dict, int, float, int]:
    """The search's choice ``(candidate, epoch, held-out nll, epochs trained in all)``."""
    choice, trained = None, 0
    for candidate, curve in curves:
        epoch, value, run = stopped(curve, patience)
        trained += run
        if choice is None or value < choice[2]:  # the first of equally good ones wins
            choice = (candidate, epoch, value)
    return (*choice, trained)


def run_one(name: str, seed: int, rate: float, quick: bool) -> dict[str, Any]:
    x, y = TABLES[name]()
    data = split(name, x, y, seed)
    rows = data.x_train
    if rate:
        rows = remove_cells(rows, rate, np.random.RandomState(seed))
    options = {"max_iter": 8, "channels": (1, 2)} if quick else {}
    estimator = RecordingDensity(random_state=seed, n_iter_no_change=None, **options)
    estimator.curves_ = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diverged candidates are skipped with a warning
        _, seconds = timed(lambda: estimator.fit(rows))
    full = search(estimator.curves_, None)
    out = {"table": name, "seed": seed, "rate": rate, "seconds": seconds, "epochs": full[3]}
    for patience in PATIENCES:
        candidate, epoch, value, trained = search(estimator.curves_, patience)
        out[patience] = {
            "same": candidate == full[0] and epoch == full[1],
            "loss": value - full[2],  # held-out nll per variable lost (0 when the same)
            "share": trained / full[3],
        }
    return out


def table(runs: list[dict[str, Any]], command: str, minutes: float) -> str:
    head = " | ".join(f"P={p}: same / epochs" for p in PATIENCES)
    lines = [
        "## Early stopping in the density's size search (`benchmarks/early_stopping.py`)",
        "",
        f"Command: `{command}` ({minutes:.1f} min of searches, one thread). Per table and "
        "missing share: of the split seeds' searches, how many keep the same candidate and "
        "epoch as training every candidate for all 100 epochs, and the share of the epochs "
        "trained (mean over the seeds); where a search changes its choice, the held-out "
        "-log p per variable it gives up is listed.",
        "",
        f"| table | missing | searches | full search (s) | {head} |",
        "|---|---:|---:|---:|" + "---:|" * len(PATIENCES),
    ]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["table"], run["rate"]), []).append(run)
    for (name, rate), group in groups.items():
        cells = []
        for patience in PATIENCES:
            same = sum(run[patience]["same"] for run in group)
            share = np.mean([run[patience]["share"] for run in group])
            losses = [f"{run[patience]['loss']:.4f}" for run in group if not run[patience]["same"]]
            cells.append(
                f"{same}/{len(group)} / {share:.0%}"
                + (f" (lost {', '.join(losses)})" if losses else "")
            )
        seconds = np.mean([run["seconds"] for run in group])
        lines.append(
            f"| {name} | {rate:.0%} | {len(group)} | {seconds:.0f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arguments(parser, seeds=(0, 1, 2), tables=TABLES)
    parser.add_argument("--rates", type=float, nargs="*", default=[0.0, 0.3])
    parser.add_argument(
        "--complete-only",
        nargs="*",
        default=["digits"],
        help="tables run without missing cells only (a full search with missing cells "
        "takes hours on digits)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("early_stopping.py", argv)
    tables = ["iris", "wine"] if args.quick else args.tables
    seeds = args.seeds[:1] if args.quick else args.seeds
    runs, seconds = [], 0.0
    for name in tables:
        for rate in args.rates:
            if rate and name in args.complete_only:
                continue
            for seed in seeds:
                run = run_one(name, seed, rate, args.quick)
                seconds += run["seconds"]
                runs.append(run)
                print(
                    f"{name} {rate:.0%} seed {seed}: {run['seconds']:.0f} s; "
                    + ", ".join(
                        f"P={p} {'same' if run[p]['same'] else 'DIFFERENT'} {run[p]['share']:.0%}"
                        for p in PATIENCES
                    ),
                    flush=True,
                )
    text = f"{table(runs, command, seconds / 60)}\n\nMachine: {machine()}."
    print(text, flush=True)
    if not args.no_write:
        replace_block("early-stopping", text, REPO / "docs" / "performance.md")
    return runs


if __name__ == "__main__":
    main()
