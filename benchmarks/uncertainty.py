"""Variational uGMM-NNs against NUTS and against point estimates: calibration and OOD.

Parts (``--parts``, default both):

- ``iris``: a small uGMM-NN (4-4-3, no LayerNorm) on Iris (the paper's 80/20 split), made
  Bayesian with ``make_bayesian``; its posterior predictive class probabilities on the 30 test
  flowers under NUTS (the reference) and under an ``AutoNormal`` guide fitted by SVI. The
  record ``iris-nuts-vs-autonormal`` / ``mean_tv`` is the mean over test flowers of the total
  variation distance ``(1/2) sum_c |p_NUTS(c | x) - p_SVI(c | x)|``; the same for an
  ``AutoLowRankMultivariateNormal`` guide (record ``iris-nuts-vs-lowrank``). Also the figure
  of one hidden neuron's mixture ``P_j(y)`` with its 5-95% posterior band under NUTS and
  AutoNormal.
- ``mnist``: a uGMM-NN 784-64-10 on the training images (``--train-size``, default all
  60,000; fewer take a class-balanced subset), first a point estimate
  (``fit``: maximum likelihood, no prior), then variational (``AutoNormal`` over every
  uGMM parameter, its means initialised at the point estimate) by ``fit_svi``. Test accuracy,
  ECE (15 bins) and NLL of both (the SVI model's predictive is the mean of ``--draws``
  posterior draws), and out-of-distribution AUROC with the predictive entropy as score, test
  images against three shifted copies of them: rotated by 90 degrees, inverted (``1 - x``)
  and uniform noise. Figures: reliability diagrams, entropy histograms, accuracy-coverage.

Records go to docs/results.json, tables to docs/results.md (between ``uncertainty-*``
markers), figures to docs/uncertainty_*.png. ``--quick`` runs a tiny version of each part
and writes nothing (a smoke test).

    python benchmarks/uncertainty.py                     # both parts, the documented run
    python benchmarks/uncertainty.py --parts iris
    python benchmarks/uncertainty.py --quick

MNIST is read from ``--mnist-dir``, else ``$UGMM_PROB_MNIST_DIR``, else
``../shared/data/mnist`` beside the repository; without it the part is skipped with a message.
"""

from __future__ import annotations

import argparse
import sys
import time

import pyro
import torch
from _results import REPO, default_mnist_dir, machine, replace_block, update_results
from matplotlib.figure import Figure
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value

from ugmm_prob import UGMMClassifier, UGMMLayer
from ugmm_prob.bayes import fit_svi, make_bayesian, predictive_probs, prior_sites, run_nuts
from ugmm_prob.datasets import mnist_subset
from ugmm_prob.experiments import load_data
from ugmm_prob.metrics import accuracy, expected_calibration_error, negative_log_likelihood
from ugmm_prob.plotting import (
    plot_accuracy_coverage,
    plot_entropy_histograms,
    plot_neuron_posterior,
    plot_reliability,
)
from ugmm_prob.training import fit
from ugmm_prob.uncertainty import accuracy_coverage, auroc, decompose_uncertainty, entropy

DOCS = REPO / "docs"


def _save(fig: Figure, name: str, write: bool) -> str:
    if write:
        fig.savefig(DOCS / name, dpi=80, bbox_inches="tight")
    return name


# ------------------------------------------------------------------------------------------
# Iris: NUTS against AutoNormal
# ------------------------------------------------------------------------------------------
def _total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(1/2) sum_c |p(c) - q(c)|`` for each row of two ``(n, C)`` probability tables."""
    return 0.5 * (p - q).abs().sum(-1)


def _svi_predictive(args: argparse.Namespace, bayesian, data, guide: str):
    """Fit ``guide`` by full-batch SVI; (guide, history, minutes, predictive on the test set)."""
    started = time.perf_counter()
    fitted, history = fit_svi(
        bayesian,
        data.x_train,
        data.y_train,
        x_val=data.x_test,
        y_val=data.y_test,
        guide=guide,
        epochs=args.iris_svi_epochs,
        batch_size=len(data.x_train),
        lr=args.iris_lr,
        milestones=args.iris_milestones,
        gamma=0.1,
        num_particles=args.iris_particles,
        init_scale=args.iris_init_scale,
        predictive_samples=5,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    minutes = (time.perf_counter() - started) / 60
    torch.manual_seed(args.seed)
    draws = predictive_probs(bayesian, data.x_test, guide=fitted, num_samples=args.draws_iris)
    return fitted, history, minutes, draws.mean(0)


def part_iris(args: argparse.Namespace) -> tuple[list[dict], str]:
    data = load_data("iris")
    torch.manual_seed(args.seed)
    point = UGMMClassifier(4, hidden=(4,), num_classes=3, layer_norm=False)
    bayesian = make_bayesian(point, prior_scale=args.iris_prior_scale)
    started = time.perf_counter()
    mcmc = run_nuts(
        bayesian,
        data.x_train,
        data.y_train,
        num_samples=args.nuts_samples,
        warmup_steps=args.nuts_warmup,
        max_tree_depth=args.nuts_max_tree_depth,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    nuts_minutes = (time.perf_counter() - started) / 60
    samples = mcmc.get_samples()
    p_nuts = predictive_probs(bayesian, data.x_test, posterior_samples=samples).mean(0)
    guide, history, svi_minutes, p_svi = _svi_predictive(args, bayesian, data, "normal")
    tv = _total_variation(p_nuts, p_svi)
    mean_tv, max_tv = float(tv.mean()), float(tv.max())
    acc_nuts, acc_svi = accuracy(p_nuts, data.y_test), accuracy(p_svi, data.y_test)
    diagnostics = mcmc.diagnostics()
    divergences = len(diagnostics["divergences"]["chain 0"])
    accept = float(diagnostics["acceptance rate"]["chain 0"])
    print(
        f"iris: mean TV {mean_tv:.4f} (max {max_tv:.4f}); accuracy NUTS {acc_nuts:.3f}, "
        f"SVI {acc_svi:.3f}; NUTS {nuts_minutes:.1f} min, SVI {svi_minutes:.1f} min",
        flush=True,
    )
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for ax, label, source in (
        (left, "NUTS", {"posterior_samples": samples}),
        (right, "AutoNormal (SVI)", {"guide": guide, "guide_args": (data.x_train,)}),
    ):
        plot_neuron_posterior(bayesian, "stack.layers.0", 0, ax=ax, **source)
        ax.set_title(f"{label}: hidden neuron 0 of the 4-4-3 Iris network")
    figure = _save(fig, "uncertainty_iris_neuron_posterior.png", not (args.quick or args.no_write))
    # A richer guide beside it, fitted last: fit_svi clears the parameter store, which holds
    # the AutoNormal guide the figure needed.
    *_, lowrank_minutes, p_lowrank = _svi_predictive(args, bayesian, data, "lowrank")
    tv_lowrank = float(_total_variation(p_nuts, p_lowrank).mean())
    print(f"iris: mean TV NUTS vs low-rank guide {tv_lowrank:.4f}", flush=True)
    records = [
        {
            "experiment": "iris-nuts-vs-autonormal",
            "metric": "mean_tv",
            "value": round(mean_tv, 4),
            "paper": None,
        },
        {
            "experiment": "iris-nuts-vs-autonormal",
            "metric": "max_tv",
            "value": round(max_tv, 4),
            "paper": None,
        },
        {
            "experiment": "iris-nuts-vs-lowrank",
            "metric": "mean_tv",
            "value": round(tv_lowrank, 4),
            "paper": None,
        },
    ]
    verdict = "meets" if mean_tv < 0.05 else "misses"
    table = "\n".join(
        [
            "### Iris: AutoNormal against NUTS (posterior predictive on the 30 test flowers)",
            "",
            f"Command: `{args.command}`; seed {args.seed}.",
            "",
            f"uGMM-NN 4-4-3 without LayerNorm, priors `make_bayesian(prior_scale="
            f"{args.iris_prior_scale})` on every mean, scale and mixing logit (84 parameters). "
            f"NUTS: one chain, {args.nuts_warmup} warm-up and {args.nuts_samples} kept draws, "
            f"trees of depth at most {args.nuts_max_tree_depth} ({divergences} divergent "
            f"transitions, mean acceptance {accept:.2f}), {nuts_minutes:.1f} min. AutoNormal: "
            f"`fit_svi` full batch, {args.iris_svi_epochs} steps, lr {args.iris_lr} "
            f"(divided by 10 at steps {args.iris_milestones}), "
            f"{args.iris_particles} ELBO particles, `init_scale={args.iris_init_scale}`, "
            f"{svi_minutes:.1f} min; predictive from {args.draws_iris} guide draws.",
            "",
            "| quantity | value |",
            "|---|---:|",
            f"| mean total variation, NUTS vs AutoNormal | **{mean_tv:.4f}** |",
            f"| largest total variation over test flowers | {max_tv:.4f} |",
            f"| test accuracy, NUTS predictive | {100 * acc_nuts:.1f}% |",
            f"| test accuracy, AutoNormal predictive | {100 * acc_svi:.1f}% |",
            f"| final ELBO loss per flower | {history[-1]['elbo_loss']:.3f} |",
            f"| mean total variation, NUTS vs `AutoLowRankMultivariateNormal` (same settings, "
            f"{lowrank_minutes:.1f} min) | {tv_lowrank:.4f} |",
            "",
            f"The acceptance threshold is a mean TV below 0.05 for AutoNormal: this run {verdict} "
            'it. The low-rank guide (`fit_svi(guide="lowrank")`), which can represent '
            "correlations between parameters, is the table's last row.",
            "",
            f"![neuron posterior]({figure})",
        ]
    )
    return records, table


# ------------------------------------------------------------------------------------------
# MNIST: point estimate against SVI, calibration and OOD
# ------------------------------------------------------------------------------------------
def _shifted(x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    images = x.reshape(-1, 28, 28)
    return {
        "rot90": torch.rot90(images, 1, dims=(1, 2)).reshape(len(x), -1).contiguous(),
        "invert": 1.0 - x,
        "noise": torch.rand(x.shape, generator=generator),
    }


def _point_probs(model, x: torch.Tensor) -> torch.Tensor:
    return model.predict_proba(x, batch_size=2000)


def _svi_draws(model, guide, x: torch.Tensor, draws: int) -> torch.Tensor:
    return torch.cat(
        [
            predictive_probs(model, x[i : i + 2000], guide=guide, num_samples=draws)
            for i in range(0, len(x), 2000)
        ],
        dim=1,
    )


def part_mnist(args: argparse.Namespace) -> tuple[list[dict], str] | None:
    try:
        data = load_data("mnist", mnist_root=args.mnist_dir)
    except (FileNotFoundError, OSError) as error:
        print(f"mnist: skipped, no MNIST files ({error})", flush=True)
        return None
    x_train, y_train = mnist_subset(data.x_train, data.y_train, args.train_size, seed=args.seed)
    x_test, y_test = data.x_test[: args.test_size], data.y_test[: args.test_size]
    x_val, y_val = data.x_test[-500:], data.y_test[-500:]  # per-epoch monitoring only
    torch.manual_seed(args.seed)
    point = UGMMClassifier(784, hidden=(args.hidden,), num_classes=10, layer_norm=False)
    point.init_from_data(x_train, y_train, generator=torch.Generator().manual_seed(args.seed))
    started = time.perf_counter()
    fit(
        point,
        x_train,
        y_train,
        x_val=x_val,
        y_val=y_val,
        epochs=args.map_epochs,
        batch_size=128,
        lr=args.map_lr,
        milestones=args.map_milestones,
        gamma=0.1,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    map_minutes = (time.perf_counter() - started) / 60
    shifted = _shifted(x_test[: args.ood_size], torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        probs_map = _point_probs(point, x_test)
        ood_map = {name: entropy(_point_probs(point, x)) for name, x in shifted.items()}
    print(f"mnist MAP: accuracy {accuracy(probs_map, y_test):.4f} ({map_minutes:.1f} min)")

    bayesian = make_bayesian(point, prior_scale=args.prior_scale)
    # The guide's means start at the point estimate: each site's value from the same path.
    values = {}
    for path, layer in point.named_modules():
        if isinstance(layer, UGMMLayer):
            site = bayesian.get_submodule(path)._pyro_name
            for kind in ("loc", "scale", "logits"):
                values[f"{site}.{kind}"] = getattr(layer, kind).detach().clone()
    assert set(values) == set(prior_sites(bayesian))
    guide = AutoNormal(
        bayesian.model, init_loc_fn=init_to_value(values=values), init_scale=args.init_scale
    )
    started = time.perf_counter()
    fit_svi(
        bayesian,
        x_train,
        y_train,
        x_val=x_val,
        y_val=y_val,
        guide=guide,
        epochs=args.svi_epochs,
        batch_size=128,
        lr=args.svi_lr,
        predictive_samples=5,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    svi_minutes = (time.perf_counter() - started) / 60
    torch.manual_seed(args.seed)
    with torch.no_grad():
        draws = _svi_draws(bayesian, guide, x_test, args.draws)
        probs_svi = draws.mean(0)
        ood_svi = {
            name: decompose_uncertainty(_svi_draws(bayesian, guide, x, args.draws)).total
            for name, x in shifted.items()
        }
    parts = decompose_uncertainty(draws)
    # Control: the network at the guide's medians, no averaging over draws.
    with torch.no_grad():
        centre = {name: value[None] for name, value in guide.median().items()}
        probs_centre = torch.cat(
            [
                predictive_probs(bayesian, x_test[i : i + 2000], posterior_samples=centre)[0]
                for i in range(0, len(x_test), 2000)
            ]
        )
    in_map, in_svi = entropy(probs_map), parts.total
    rows, records = [], []
    metrics = {}
    for label, probs in (("map", probs_map), ("svi", probs_svi), ("svi-mean", probs_centre)):
        metrics[label] = {
            "test_accuracy": round(100 * accuracy(probs, y_test), 2),
            "ece": round(expected_calibration_error(probs, y_test), 4),
            "nll": round(negative_log_likelihood(probs, y_test), 4),
        }
        records += [
            {"experiment": f"mnist-ugmm-{label}", "metric": m, "value": v, "paper": None}
            for m, v in metrics[label].items()
        ]
    print(f"mnist: {metrics} (SVI {svi_minutes:.1f} min)", flush=True)
    aurocs = {}
    for name in shifted:
        aurocs[name] = {
            "auroc_map": auroc(in_map[: args.ood_size], ood_map[name]),
            "auroc_svi": auroc(in_svi[: args.ood_size], ood_svi[name]),
        }
        records += [
            {"experiment": f"mnist-ood-{name}", "metric": m, "value": round(v, 4), "paper": None}
            for m, v in aurocs[name].items()
        ]
    print(f"mnist OOD AUROC: {aurocs}", flush=True)

    write = not (args.quick or args.no_write)
    fig = Figure(figsize=(9, 4.5))
    for ax, label, probs in zip(
        fig.subplots(1, 2), ("point estimate", "SVI"), (probs_map, probs_svi), strict=True
    ):
        plot_reliability(probs, y_test, ax=ax)
        ax.set_title(f"{label}: {ax.get_title()}")
    reliability = _save(fig, "uncertainty_mnist_reliability.png", write)
    fig = Figure(figsize=(11, 4))
    for ax, label, inside, outside in zip(
        fig.subplots(1, 2),
        ("point estimate", "SVI"),
        (in_map, in_svi),
        (ood_map, ood_svi),
        strict=True,
    ):
        plot_entropy_histograms(inside[: args.ood_size], outside, ax=ax)
        ax.set_title(f"{label}: predictive entropy, test images vs shifted")
    entropies = _save(fig, "uncertainty_mnist_entropy.png", write)
    fig = plot_accuracy_coverage(
        {
            "point estimate": accuracy_coverage(probs_map, y_test),
            "SVI": accuracy_coverage(probs_svi, y_test),
        }
    )
    coverage = _save(fig, "uncertainty_mnist_coverage.png", write)

    for label, name in (("point estimate (`fit`)", "map"), ("SVI, AutoNormal", "svi")):
        m = metrics[name]
        rows.append(
            f"| {label} | {m['test_accuracy']:.2f}% | {m['ece']:.4f} | {m['nll']:.4f} | "
            + " | ".join(f"{aurocs[s]['auroc_' + name]:.4f}" for s in shifted)
            + " |"
        )
    m = metrics["svi-mean"]
    rows.append(
        f"| control: the network at the guide's medians (no averaging) | "
        f"{m['test_accuracy']:.2f}% | {m['ece']:.4f} | {m['nll']:.4f} |" + " |" * len(shifted)
    )
    ece_better = metrics["svi"]["ece"] < metrics["map"]["ece"]
    subset = (
        f"all {len(x_train):,} training images"
        if len(x_train) == len(data.x_train)
        else f"{len(x_train):,} class-balanced training images (`mnist_subset`, seed {args.seed})"
    )
    gap = metrics["map"]["test_accuracy"] - metrics["svi"]["test_accuracy"]
    table = "\n".join(
        [
            "### MNIST: point estimate against SVI (uGMM-NN 784-64-10)",
            "",
            f"Command: `{args.command}`; seed {args.seed} (subset, initialisation, data "
            "order, guide draws).",
            "",
            f"Training: {subset}, prototype initialisation. Point estimate: `fit`, "
            f"{args.map_epochs} epochs, Adam lr {args.map_lr} (divided by 10 at epochs "
            f"{args.map_milestones}), batch 128, {map_minutes:.1f} "
            f"min. SVI: `make_bayesian(prior_scale={args.prior_scale})` on every mean, scale "
            f"and logit; `AutoNormal` with its means at the point estimate and "
            f"`init_scale={args.init_scale}`; `fit_svi` {args.svi_epochs} epochs, lr "
            f"{args.svi_lr}, batch 128, {svi_minutes:.1f} min. Evaluation on the first "
            f"{args.test_size:,} test images, the SVI predictive from {args.draws} guide "
            f"draws; OOD sets built from the first {args.ood_size:,} of them; score = "
            "predictive entropy (total uncertainty).",
            "",
            "| model | test accuracy | ECE | NLL | "
            + " | ".join(f"AUROC {s}" for s in shifted)
            + " |",
            "|---|---:|---:|---:|" + "---:|" * len(shifted),
            *rows,
            "",
            f"SVI ECE below the point estimate's: {'yes' if ece_better else 'no'}; accuracy "
            f"difference (point - SVI): {gap:+.2f} points (the acceptance asks for at most 0.5).",
            f"Epistemic part of the SVI predictive entropy on test images: mean "
            f"{float(parts.epistemic.mean()):.4f} nats of {float(parts.total.mean()):.4f}.",
            "",
            f"![reliability]({reliability})",
            f"![entropy]({entropies})",
            f"![coverage]({coverage})",
        ]
    )
    return records, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="*", default=["iris", "mnist"], choices=["iris", "mnist"])
    parser.add_argument("--quick", action="store_true", help="tiny run, writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    parser.add_argument("--seed", type=int, default=0)
    # Iris
    parser.add_argument("--nuts-samples", type=int, default=500)
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-max-tree-depth", type=int, default=6)
    parser.add_argument("--iris-prior-scale", type=float, default=0.5)
    parser.add_argument("--iris-svi-epochs", type=int, default=3000)
    parser.add_argument("--iris-lr", type=float, default=1e-2)
    parser.add_argument(
        "--iris-milestones",
        type=int,
        nargs="*",
        default=[2000, 2600],
        help="SVI steps where lr drops 10x (the guide settles instead of jittering)",
    )
    parser.add_argument("--iris-particles", type=int, default=4)
    parser.add_argument("--iris-init-scale", type=float, default=0.05)
    parser.add_argument("--draws-iris", type=int, default=1000)
    # MNIST
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--ood-size", type=int, default=5_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--map-epochs", type=int, default=15)
    parser.add_argument("--map-lr", type=float, default=1e-2)
    parser.add_argument(
        "--map-milestones", type=int, nargs="*", default=[10], help="epochs where lr drops 10x"
    )
    parser.add_argument("--svi-epochs", type=int, default=3)
    parser.add_argument("--svi-lr", type=float, default=3e-3)
    parser.add_argument("--prior-scale", type=float, default=1.0)
    parser.add_argument("--init-scale", type=float, default=1e-2)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    args.command = "python benchmarks/uncertainty.py " + " ".join(sys.argv[1:])
    args.command = args.command.strip()
    if args.quick:
        args.nuts_samples, args.nuts_warmup, args.iris_svi_epochs = 20, 20, 50
        args.draws_iris, args.train_size, args.test_size = 50, 500, 500
        args.ood_size, args.map_epochs, args.svi_epochs, args.draws = 200, 1, 1, 3
        args.map_milestones, args.iris_milestones = [], []
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    print(f"machine: {machine()}", flush=True)
    pyro.set_rng_seed(args.seed)
    records, tables = [], {}
    for part in args.parts:
        result = {"iris": part_iris, "mnist": part_mnist}[part](args)
        if result is not None:
            records += result[0]
            tables[part] = result[1]
    if args.quick or args.no_write:
        print("nothing written (--quick or --no-write)", flush=True)
        return
    update_results(records)
    for part, table in tables.items():
        replace_block(f"uncertainty-{part}", f"{table}\n\nMachine: {machine()}.")


if __name__ == "__main__":
    main()
