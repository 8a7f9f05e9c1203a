"""Run the paper's table (MNIST and Iris) and write docs/results.md and docs/results.json.

Every experiment is the preset of the same name in :mod:`ugmm_prob.experiments` (the same
code ``ugmm-prob train`` runs). Protocol: the per-epoch metrics are computed on a validation
split carved from the training data (MNIST: the last 5,000 training images, the first 55,000
being trained on; Iris: a fifth of every class), never on the test split, which is scored
once per run, after training. MNIST rows keep the last epoch of their fixed schedule (the
paper's protocol), ``iris-joint`` the epoch with the best validation NLL. Every row runs once
per ``--seeds`` seed; the table gives the test accuracy's mean ± sd over the seeds (sample
sd, n - 1) and each seed's figure, and the validation accuracy of the epoch kept.

The paper trains MNIST models for 100 epochs; on a small CPU that takes days, so
``--epochs NAME=N`` shortens a run and its MultiStepLR milestones are scaled by the same
factor. The table states the epochs actually run.

    python benchmarks/reproduce_paper.py                       # every row, preset epochs
    python benchmarks/reproduce_paper.py --only iris-joint     # one row
    python benchmarks/reproduce_paper.py --epochs mnist-ugmm-ln=8 mnist-cnn=3
    python benchmarks/reproduce_paper.py --only mnist-mlp --seeds 0 1 2   # mean ± sd of 3
    python benchmarks/reproduce_paper.py --only iris-joint --no-write    # print, write nothing

MNIST is read from --mnist-dir, else $UGMM_PROB_MNIST_DIR, else ../shared/data/mnist beside
the repository.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

from _results import REPO, default_mnist_dir, machine, replace_block, update_results

from ugmm_prob.experiments import (
    EXPERIMENTS,
    INITIALISATIONS,
    DataSplits,
    load_data,
    train_experiment,
)
from ugmm_prob.training import evaluate

DETAILS = REPO / "docs" / "results-paper-table.json"
PRE_PROTOCOL = "†"
"""Marks rows run before the validation protocol (per-epoch metrics on the test split)."""


def _parse_epochs(pairs: list[str]) -> dict[str, int]:
    epochs = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in EXPERIMENTS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--epochs expects NAME=N, N >= 1, with NAME in {sorted(EXPERIMENTS)}")
        epochs[name] = int(value)
    return epochs


def run(
    name: str,
    data: DataSplits,
    epochs: int | None,
    seed: int,
    device: str | None,
    init: str | None,
) -> dict:
    """Train one preset with one seed; its test figures (scored once) and the validation
    accuracy of the epoch kept."""
    experiment = EXPERIMENTS[name]
    started = time.perf_counter()
    model, history, settings = train_experiment(
        experiment,
        data,
        seed=seed,
        epochs=epochs,
        scale_milestones=True,
        init=init,
        device=device,
        progress=sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - started
    final = evaluate(model, data.x_test, data.y_test)  # the test split, once, after training
    kept = history[-1].get("best_epoch", history[-1]["epoch"])
    validation = 100 * next(row for row in history if row["epoch"] == kept)["accuracy"]
    print(
        f"{name} seed {seed}: test {100 * final['accuracy']:.2f}%, validation {validation:.2f}% "
        f"(model of epoch {kept} of {settings['epochs']}, {_duration(seconds / 60)}); "
        f"paper {experiment.paper}%",
        flush=True,
    )
    return {
        "experiment": name,
        "description": experiment.description,
        "epochs": settings["epochs"],
        "paper_epochs": experiment.training["epochs"],
        "milestones": list(settings.get("milestones", ())),
        "lr": settings["lr"],
        "batch_size": settings["batch_size"],
        "seed": seed,
        "init": settings["init"],
        "validation": settings.get("validation", 0.0),
        "validation_rows": settings.get("validation_rows", 0),
        "keep_best": settings.get("keep_best"),
        "selected_epoch": kept,
        "validation_accuracy": validation,
        "test_accuracy": 100 * final["accuracy"],
        "nll": final["nll"],
        "ece": final["ece"],
        "paper": experiment.paper,
        "minutes": seconds / 60,
    }


def _duration(minutes: float) -> str:
    """Minutes to one decimal, or whole seconds under a minute (Iris rows take seconds)."""
    return f"{minutes:.1f} min" if minutes >= 1 else f"{60 * minutes:.0f} s"


def combine_seeds(runs: list[dict]) -> dict:
    """One table row from the runs of one experiment, one per seed: the means of the
    figures, the test accuracy's sd over the seeds (n - 1; None for one seed) and every
    seed's test and validation accuracy."""
    row = dict(runs[0])
    for key in ("test_accuracy", "validation_accuracy", "nll", "ece", "minutes"):
        row[key] = statistics.fmean(r[key] for r in runs)
    accuracies = [r["test_accuracy"] for r in runs]
    row["test_accuracy_sd"] = statistics.stdev(accuracies) if len(runs) > 1 else None
    row["seed"] = [r["seed"] for r in runs]
    row["selected_epoch"] = [r["selected_epoch"] for r in runs]
    row["per_seed_accuracy"] = [round(a, 2) for a in accuracies]
    row["per_seed_validation_accuracy"] = [round(r["validation_accuracy"], 2) for r in runs]
    return row


def _seeds(row: dict) -> list[int]:
    return row["seed"] if isinstance(row["seed"], list) else [row["seed"]]


def _sd(row: dict) -> float | None:
    """The test accuracy's sd over seeds (rows written before it was stored: from their
    per-seed figures)."""
    if "test_accuracy_sd" in row:
        return row["test_accuracy_sd"]
    per_seed = row.get("per_seed_accuracy") or []
    return statistics.stdev(per_seed) if len(per_seed) > 1 else None


def _pre_protocol(row: dict) -> bool:
    """Whether the row was run with the test split as its per-epoch metrics."""
    return not row.get("validation") and not row.get("validation_rows")


def _validation_cell(row: dict) -> str:
    """How the row's validation split was carved and which epoch was kept."""
    if _pre_protocol(row):
        return f"none: per-epoch metrics on the test split {PRE_PROTOCOL}"
    # Rows written before keep_best was a preset field held out a fraction and kept best NLL.
    keep = row["keep_best"] if "keep_best" in row else "nll"
    kept = "last epoch" if keep is None else f"epoch of best {keep.upper()}"
    if row.get("validation_rows"):
        return f"last {row['validation_rows']:,} training rows; {kept}"
    return f"{100 * row['validation']:.0f}% of each class; {kept}"


def _table_line(row: dict) -> str:
    sd = _sd(row)
    test = f"**{row['test_accuracy']:.2f}**" + ("" if sd is None else f" ± {sd:.2f}")
    validation = row.get("validation_accuracy")
    seeds, per_seed = _seeds(row), row.get("per_seed_accuracy")
    seed_cell = str(seeds[0]) + (f" {PRE_PROTOCOL}" if _pre_protocol(row) else "")
    if per_seed and len(per_seed) > 1:
        pairs = zip(seeds, per_seed, strict=True)
        seed_cell = f"{len(seeds)} seeds: " + ", ".join(f"{s}: {a:.2f}" for s, a in pairs)
    return (
        f"| `{row['experiment']}` | {row['description']} | {row.get('init', 'paper')} | "
        f"{row['epochs']} ({row['paper_epochs']}) | {_validation_cell(row)} | {test} | "
        f"{row['paper']} | {'–' if validation is None else f'{validation:.2f}'} | "
        f"{row['nll']:.4f} | {row['ece']:.4f} | {_duration(row['minutes'])} | {seed_cell} |"
    )


def format_table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (as ``combine_seeds`` or ``docs/results-paper-table.json``
    give them) with its notes."""
    lines = [
        "<!-- written by benchmarks/reproduce_paper.py; rerun it rather than editing -->",
        "| experiment | model | init | epochs run (paper) | validation split; model kept "
        "| test accuracy % (mean ± sd over seeds) | paper % "
        "| validation accuracy % of the model kept | test NLL | test ECE | wall time per seed "
        "| seeds: test accuracy % |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        *(_table_line(row) for row in rows),
    ]
    old = any(_pre_protocol(row) for row in rows)
    notes = [
        "Per-epoch metrics come from the validation split and the test split is scored once "
        f"per run, after training{f' (rows marked {PRE_PROTOCOL} excepted)' if old else ''}; "
        "NLL, ECE, the validation accuracy and the wall time are means over the seeds, the sd "
        "is the sample sd (n - 1)."
    ]
    for row in rows:
        if row.get("validation") and row.get("keep_best", "nll"):
            notes.append(
                f"`{row['experiment']}` holds out {100 * row['validation']:.0f}% of each class of "
                "the training data and keeps the epoch with the lowest NLL on it (epochs "
                f"{row['selected_epoch']})."
            )
    if old:
        notes.append(
            f"{PRE_PROTOCOL} Run before the validation protocol: single seed, trained on all "
            "60,000 training images with the per-epoch metrics computed on the test split (so no "
            "validation figure exists); the test figure is the last epoch's. Pending a rerun."
        )
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


def _records(rows: list[dict]) -> list[dict]:
    """The rows' records for docs/results.json: test accuracy, its sd and the seeds."""
    return [
        {
            "experiment": row["experiment"],
            "metric": "test_accuracy",
            "value": round(row["test_accuracy"], 2),
            "sd": None if _sd(row) is None else round(_sd(row), 2),
            "seeds": _seeds(row),
            "paper": row["paper"],
        }
        for row in rows
    ]


def write_docs(rows: list[dict]) -> None:
    """Merge ``rows`` into docs/results-paper-table.json (by experiment), then rewrite every
    row's record in docs/results.json and the ``paper-table`` block of docs/results.md."""
    previous = (
        {r["experiment"]: r for r in json.loads(DETAILS.read_text())} if DETAILS.exists() else {}
    )
    previous.update({row["experiment"]: row for row in rows})
    every = list(previous.values())
    DETAILS.write_text(json.dumps(every, indent=2) + "\n")
    update_results(_records(every))
    commands = sorted(
        {(row["command"], row.get("machine", "")) for row in every if "command" in row}
    )
    listed = "\n".join(f"- `{command}` on {where}" for command, where in commands)
    replace_block(
        "paper-table",
        f"## The paper's table\n\nRows come from:\n\n{listed}\n\n{format_table(every)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(EXPERIMENTS), help="rows to run")
    parser.add_argument("--epochs", nargs="*", default=[], help="NAME=N: run N epochs")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="run every row once per seed; the table gives mean ± sd and each seed's figure",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument(
        "--init", choices=INITIALISATIONS, help="override every preset's initialisation"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the table; write no file under docs/"
    )
    args = parser.parse_args()
    epochs = _parse_epochs(args.epochs)
    mnist_dir = args.mnist_dir or default_mnist_dir()
    print(f"machine: {machine()}", flush=True)
    command = ("python benchmarks/reproduce_paper.py " + shlex.join(sys.argv[1:])).strip()
    rows = []
    for name in args.only or list(EXPERIMENTS):
        data = load_data(EXPERIMENTS[name].data, mnist_root=mnist_dir)
        runs = [
            run(name, data, epochs.get(name), seed, args.device, args.init) for seed in args.seeds
        ]
        rows.append({**combine_seeds(runs), "command": command, "machine": machine()})
    if args.no_write:
        print(f"\n{format_table(rows)}\n\nnothing written (--no-write)", flush=True)
    else:
        write_docs(rows)


if __name__ == "__main__":
    main()
