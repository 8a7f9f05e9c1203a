"""A training run for tests/test_faults.py to kill: resumes, trains, checkpoints, forever.

Imported into a ``forkserver`` process once, so each killed run starts in milliseconds.
"""

import pathlib

import torch
import torch._dynamo  # (imported lazily by the optimisers: 2 s a process)

from ugmm_prob.experiments import load_data
from ugmm_prob.networks import UGMMClassifier
from ugmm_prob.training import fit


def run(folder: str, epochs: int, started=None) -> None:
    """Resume (or start) the same tiny Iris run in ``folder`` and train up to ``epochs``.

    ``started`` (a multiprocessing event) is set once the process is running.
    """
    torch.set_num_threads(1)
    if started is not None:
        started.set()
    folder_path = pathlib.Path(folder)
    data = load_data("iris")
    torch.manual_seed(0)
    model = UGMMClassifier(4, hidden=(16,), num_classes=3, layer_norm=False, backend="eager")
    fit(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=32,
        lr=1e-2,
        seed=1,
        progress=False,
        checkpoint_path=folder_path / "checkpoint.pt",
        metrics_path=folder_path / "metrics.csv",
        resume=True,
    )
