"""Speed of the library's training and inference against plain PyTorch on this machine.

Parts (``--parts``, default all):

- ``overhead``: the per-step cost of training a small model through the library. One
  training step (forward, backward, Adam) of the Iris demo's network (the ``iris-joint``
  preset: joint-score uGMM-NN 5-10-5-1 with LayerNorm, batch 16) as ``fit`` runs it, the
  same step with validation on (the library's checks and Pyro's distribution checks), and a
  plain ``torch.nn.Module`` doing the same arithmetic with the same kernel (checked to give
  the same loss from the same parameters); alternating rounds in one process, medians.
  Also the preset's whole ``fit`` (all epochs, with per-epoch validation and ``keep_best``)
  per step, and its test accuracy.

Each part returns ``(records, markdown)``; records go to docs/results.json (``speed-*``),
tables to docs/performance.md (between ``speed-<part>`` markers).

    python benchmarks/speed.py --parts overhead
    python benchmarks/speed.py --parts overhead --rounds 5 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _results import REPO, run_parts

from ugmm_prob.experiments import EXPERIMENTS, load_data, train_experiment
from ugmm_prob.kernels import coupled_log_density
from ugmm_prob.networks import JointScoreModel
from ugmm_prob.training.point import _make_optimizer, _PointEstimateTrainer
from ugmm_prob.validation import validation_enabled

PERFORMANCE_PAGE = REPO / "docs" / "performance.md"


# ------------------------------------------------------------------------------------------
# overhead
# ------------------------------------------------------------------------------------------
class PlainJointScore(torch.nn.Module):
    """The joint-score network as a plain ``torch.nn.Module``: the arithmetic of
    :class:`~ugmm_prob.networks.JointScoreModel` (``objective="conditional"``, LayerNorm
    after each hidden layer) with the same kernel, without Pyro, checks or distributions."""

    def __init__(self, model: JointScoreModel) -> None:
        super().__init__()
        self.num_classes = model.num_classes
        layers = model.stack.layers
        self.floors = [layer.scale_floor for layer in layers]
        with torch.no_grad():
            self.loc = torch.nn.ParameterList([layer.loc.clone() for layer in layers])
            self.log_scale = torch.nn.ParameterList(
                [(layer.scale - layer.scale_floor).log() for layer in layers]
            )
            self.logits = torch.nn.ParameterList([layer.logits.clone() for layer in layers])
        self.norms = torch.nn.ModuleList()
        for norm in model.stack.norms:
            plain = torch.nn.LayerNorm(norm.normalized_shape)
            plain.load_state_dict(norm.state_dict())
            self.norms.append(plain)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean ``-log p(y | x)``, ``p(c | x) = softmax_c s(x, c)``."""
        labels = torch.arange(self.num_classes, dtype=x.dtype)
        h = torch.cat(
            [
                x.expand(self.num_classes, *x.shape),
                labels[:, None, None].expand(self.num_classes, len(x), 1),
            ],
            dim=-1,
        )
        for index, (loc, log_scale, logits) in enumerate(
            zip(self.loc, self.log_scale, self.logits, strict=True)
        ):
            scale = log_scale.exp() + self.floors[index]
            h = coupled_log_density(h, loc, scale, logits, backend="eager")
            if index < len(self.norms):
                h = self.norms[index](h)
        scores = h.squeeze(-1).transpose(0, 1)
        return -torch.log_softmax(scores, -1).gather(-1, y[:, None]).mean()


def _overhead_steps(batch: int) -> dict[str, Callable[[], None]]:
    """The training steps compared, from one initialisation (after checking that the plain
    module computes the library's loss)."""
    data = load_data("iris")
    x, y = data.x_train[:batch], data.y_train[:batch]
    torch.manual_seed(0)
    model = EXPERIMENTS["iris-joint"].build()
    model.init_from_data(data.x_train, data.y_train, generator=torch.Generator().manual_seed(0))
    plain = PlainJointScore(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, y), model.training_loss(x, y))
    optimizer = _make_optimizer("adam", list(model.parameters()), 1e-3, 0.0, 0.9)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])
    trainer = _PointEstimateTrainer(model, optimizer, schedule, torch.device("cpu"))
    plain_optimizer = _make_optimizer("adam", list(plain.parameters()), 1e-3, 0.0, 0.9)

    def library() -> None:  # fit's step: checks off, loss kept on the device
        trainer.step(x, y, weight=1.0, num_data=len(data.x_train))

    def library_checked() -> None:  # the same step with the library's and Pyro's checks
        loss = model.training_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())

    def plain_step() -> None:
        loss = plain(x, y)
        plain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain_optimizer.step()

    return {
        "fit's step (library)": library,
        "the same with validation on": library_checked,
        "plain torch.nn.Module, same kernel": plain_step,
    }


def _median_us(steps: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict:
    for step in steps.values():  # warm-up
        for _ in range(10):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def _whole_fit(epochs: int) -> tuple[float, int, int, int]:
    """The ``iris-joint`` preset's whole training: seconds, steps, test flowers right, all."""
    data = load_data("iris")
    experiment = EXPERIMENTS["iris-joint"]
    start = time.perf_counter()
    model, _, settings = train_experiment(experiment, data, epochs=epochs, progress=False)
    seconds = time.perf_counter() - start
    fitted_rows = round(len(data.x_train) * (1 - experiment.validation))
    steps = epochs * -(-fitted_rows // settings["batch_size"])
    correct = int((model.posterior(data.x_test).argmax(-1) == data.y_test).sum())
    return seconds, steps, correct, len(data.y_test)


def part_overhead(args: argparse.Namespace) -> tuple[list[dict], str]:
    batch = 16
    with validation_enabled(True):
        medians = _median_us(_overhead_steps(batch), args.rounds, args.steps_per_round)
    seconds, steps, correct, total = _whole_fit(args.demo_epochs)
    plain = medians["plain torch.nn.Module, same kernel"]
    rows = [f"| {name} | {value:,.0f} | {value / plain:.2f}x |" for name, value in medians.items()]
    whole = seconds / steps * 1e6
    rows.append(
        f"| whole `fit` of the preset, per step ({args.demo_epochs} epochs, {steps:,} steps, "
        f"{seconds:.1f} s; test {correct}/{total}) | {whole:,.0f} | {whole / plain:.2f}x |"
    )
    table = "\n".join(
        [
            "### Per-step overhead: the Iris demo's network (joint-score 5-10-5-1, LayerNorm, "
            f"batch {batch}) against plain PyTorch",
            "",
            f"Command: `python benchmarks/speed.py --parts overhead --rounds {args.rounds}`; "
            f"medians of {args.rounds} alternating rounds of {args.steps_per_round} steps "
            "(forward, backward, Adam). The whole `fit` adds per epoch the validation pass, "
            "the snapshot for the NaN guard and `keep_best`.",
            "",
            "| training step | µs per step | vs plain |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    print(table, flush=True)
    names = {
        "fit's step (library)": "library",
        "the same with validation on": "library-validated",
        "plain torch.nn.Module, same kernel": "plain",
    }
    records = [
        {
            "experiment": f"speed-overhead-{names[name]}",
            "metric": "step_us",
            "value": round(value, 1),
            "paper": None,
        }
        for name, value in medians.items()
    ]
    records.append(
        {
            "experiment": "speed-overhead-demo-fit",
            "metric": "seconds",
            "value": round(seconds, 2),
            "paper": None,
        }
    )
    return records, table


PARTS = {"overhead": part_overhead}
"""The parts of this script by name, each ``(args) -> (records, markdown)``."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-round", type=int, default=200)
    parser.add_argument("--demo-epochs", type=int, default=300, help="overhead: whole fit")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    run_parts(PARTS, args, block="speed", page=PERFORMANCE_PAGE, write=not args.no_write)


if __name__ == "__main__":
    main()
