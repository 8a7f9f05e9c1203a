"""How the Iris joint-score preset picks its epoch, decided without the test flowers.

Five-fold cross-validation on the 120 training flowers of the paper's split (stratified,
seeded): each fold trains the ``iris-joint`` preset on four fifths and scores the fifth,
once keeping the last of the 300 epochs and once keeping the epoch with the lowest NLL on
20% of the four fifths held out (``fit(..., keep_best="nll")``). The 30 test flowers are
never read. Writes the comparison to docs/results.md (block ``iris-selection``).

    python benchmarks/iris_selection.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from _results import machine, replace_block

from ugmm_prob.experiments import EXPERIMENTS, DataSplits, load_data, train_experiment
from ugmm_prob.training import evaluate


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold index of every row: each class dealt round-robin over the folds in random order."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for label in torch.unique(y):
        rows = (y == label).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=generator)]
        fold[rows] = torch.arange(len(rows)) % folds
    return fold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=123)
    args = parser.parse_args()

    data = load_data("iris")
    preset = EXPERIMENTS["iris-joint"]
    rules = {
        "last epoch of 300": dataclasses.replace(preset, validation=0.0),
        "epoch of best NLL on 20% held out": dataclasses.replace(preset, validation=0.2),
    }
    fold = stratified_folds(data.y_train, args.folds, args.fold_seed)
    rows = []
    for rule, experiment in rules.items():
        errors, nll, started = 0, 0.0, time.perf_counter()
        for k in range(args.folds):
            fit_rows, score_rows = fold != k, fold == k
            split = DataSplits(
                "iris",
                data.x_train[fit_rows],
                data.y_train[fit_rows],
                data.x_train[score_rows],
                data.y_train[score_rows],
            )
            for seed in args.seeds:
                model, _, _ = train_experiment(experiment, split, seed=seed, progress=False)
                metrics = evaluate(model, split.x_test, split.y_test)
                errors += round(len(split.y_test) * (1 - metrics["accuracy"]))
                nll += metrics["nll"] * len(split.y_test)
        scored = len(data.y_train) * len(args.seeds)
        minutes = (time.perf_counter() - started) / 60
        rows.append(f"| {rule} | {errors} / {scored} | {nll / scored:.4f} | {minutes:.1f} min |")
        print(rows[-1], flush=True)
    seeds = " ".join(map(str, args.seeds))
    table = "\n".join(
        [
            "### Iris: which epoch the joint-score preset keeps",
            "",
            f"Command: `python benchmarks/iris_selection.py --seeds {seeds}`; {args.folds}-fold "
            "cross-validation on the 120 training flowers only (folds "
            f"stratified, seed {args.fold_seed}), every fold trained once per seed.",
            "",
            "| rule | errors on the held-out folds | mean NLL | time |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"Machine: {machine()}.",
        ]
    )
    print(table)
    replace_block("iris-selection", table)


if __name__ == "__main__":
    main()
