"""MNIST baselines fitted as well as the circuit: Gaussian mixtures by EM to convergence.

The protocol of the circuit benchmark (``benchmarks/generative.py --parts mnist-em``): the
first 55,000 training images fit every model, the last 5,000 (``--val-rows``) choose every
setting, and the 10,000 test images are scored once per reported row. Pixels are uniformly
dequantised, ``x = (round(255 p) + u) / 256`` with ``u ~ U(0, 1)`` drawn by a generator seeded
``--seed`` (the training images first, then the test images: the circuit's noise), and modelled
either as they are ("pixels") or as logits ``z = logit(alpha + (1 - 2 alpha) x)`` ("logit
space", alpha = 1e-6); every bits/dim is on the 8-bit pixels through the dequantised density
on ``[0, 1]^784``, the logit map's exact log-Jacobian included.

Rows (scikit-learn, EM with ``tol`` on the per-sample lower bound and ``max_iter`` far above the
iterations used; k-means++ initialisation, one start, seed ``--seed``):

1. ``diag``: one diagonal GMM on the unlabelled training images, in each space: ``reg_covar``
   chosen on validation at the smallest number of components, then the number of components
   grown along ``--components`` while validation bits/dim improves and the next fit is not
   predicted to take more than ``--max-fit-minutes``. The record ``mnist-diag-gmm`` is the
   space with the better validation bits/dim.
2. ``class``: one diagonal GMM per class (the space and ``reg_covar`` chosen in row 1):
   accuracy of ``argmax_c log p(x|c) + log p(c)`` and bits/dim of ``sum_c p(c) p(x|c)``,
   ``p(c)`` the training frequencies; components per class chosen by validation
   ``log p(x, y)``.
3. ``pca``: PCA fitted on the training pixels, a full-covariance GMM per class in the first
   ``d`` principal components; ``d`` and the components chosen by validation accuracy (a
   classifier only: PCA discards dimensions, so no density on the pixels).
4. ``nb``: ``GaussianNB`` in both spaces (context).

    OMP_NUM_THREADS=1 python benchmarks/mnist_baselines.py            # ~1 h on one core
    python benchmarks/mnist_baselines.py --train-rows 600 --val-rows 200 --test-rows 300 \\
        --components 2 4 --class-components 1 2 --pca-dims 5 10 --pca-components 1 2 --no-write

Records go to docs/results.json, the table to docs/results.md (block
``generative-mnist-baselines``); ``--no-write`` prints only. The last line of output is
``RESULT <json>`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings

import numpy as np
import torch
from _results import default_mnist_dir, machine, replace_block, update_results
from generative import _dequantise

from ugmm_prob.distributions import pixel_logit_transform
from ugmm_prob.experiments import load_data

BLOCK = "generative-mnist-baselines"
D = 784


def log(message: str) -> None:
    print(message, flush=True)


def bits_per_dim(log_density: np.ndarray) -> float:
    """Bits per pixel of the 8-bit data through a density on the dequantised ``[0, 1]^784``
    (as ``generative._bits_per_dim``)."""
    return float(-(np.mean(log_density) / D - math.log(256)) / math.log(2))


def prepare(args) -> dict:
    """Splits, both spaces and the logit map's log-Jacobian ``log |dz/dx|`` per image."""
    data = load_data("mnist", mnist_root=args.mnist_dir)
    generator = torch.Generator().manual_seed(args.seed)
    # the circuit benchmark's noise: all training images first, then the test images
    pixels_train = _dequantise(data.x_train, generator).double()
    pixels_test = _dequantise(data.x_test, generator).double()
    fit_end = len(data.x_train) - args.val_rows
    rows = {
        "train": slice(0, min(args.train_rows or fit_end, fit_end)),
        "val": slice(fit_end, len(data.x_train)),
    }
    to_pixels = pixel_logit_transform(args.alpha)
    splits = {}
    for name, (x, y) in {
        "train": (pixels_train[rows["train"]], data.y_train[rows["train"]]),
        "val": (pixels_train[rows["val"]], data.y_train[rows["val"]]),
        "test": (pixels_test[: args.test_rows], data.y_test[: args.test_rows]),
    }.items():
        z = to_pixels.inv(x)
        jacobian = -to_pixels.log_abs_det_jacobian(z, x).sum(-1)
        splits[name] = {
            "pixels": x.numpy(),
            "logit": z.numpy(),
            "jacobian": {"pixels": np.zeros(len(x)), "logit": jacobian.numpy()},
            "y": y.numpy(),
        }
    log(
        f"MNIST: {len(splits['train']['y']):,} training images (rows {rows['train'].start}-"
        f"{rows['train'].stop - 1}), {len(splits['val']['y']):,} validation (rows "
        f"{rows['val'].start}-{rows['val'].stop - 1}), {len(splits['test']['y']):,} test"
    )
    return splits


def gmm(args, k: int, reg: float, covariance: str = "diag"):
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        k,
        covariance_type=covariance,
        tol=args.tol,
        max_iter=args.max_iter,
        reg_covar=reg,
        init_params="k-means++",
        n_init=1,
        random_state=args.seed,
    )


def fit(model, x: np.ndarray):
    """Fit; returns the model, minutes, EM iterations and whether EM converged."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported, not warned about
        model.fit(x)
    return model, (time.perf_counter() - started) / 60, int(model.n_iter_), bool(model.converged_)


class PerClass:
    """One mixture per class: ``log p(x|c) + log p(c)`` for every class."""

    def __init__(self, make, x: np.ndarray, y: np.ndarray):
        self.models, self.minutes, self.iterations, self.converged = [], 0.0, [], []
        classes = np.unique(y)
        self.log_prior = np.log(np.array([np.mean(y == c) for c in classes]))
        for c in classes:
            model, minutes, iterations, converged = fit(make(), x[y == c])
            self.models.append(model)
            self.minutes += minutes
            self.iterations.append(iterations)
            self.converged.append(converged)

    def joint(self, x: np.ndarray) -> np.ndarray:
        return np.stack([m.score_samples(x) for m in self.models], 1) + self.log_prior

    def scores(self, x: np.ndarray, y: np.ndarray, jacobian: np.ndarray) -> dict:
        """Accuracy, mean ``log p(x, y)`` (nats per image, on the pixels) and bits/dim."""
        from scipy.special import logsumexp

        joint = self.joint(x)
        return {
            "accuracy": float(np.mean(joint.argmax(1) == y)),
            "log_pxy": float(np.mean(joint[np.arange(len(y)), y] + jacobian)),
            "bits_per_dim": bits_per_dim(logsumexp(joint, axis=1) + jacobian),
        }

    def iteration_note(self) -> str:
        done = sum(self.converged)
        return (
            f"{min(self.iterations)}-{max(self.iterations)} EM iterations per class, "
            f"{done}/{len(self.converged)} converged"
        )


def _next_too_slow(args, minutes: float, k: int, grid: list[int], i: int) -> str | None:
    """Why growing stops on time: this fit passed the limit, or the next (time taken as
    proportional to the components) is predicted to."""
    if minutes > args.max_fit_minutes:
        return f"this fit took {minutes:.1f} min > {args.max_fit_minutes:g}"
    if i + 1 < len(grid):
        predicted = minutes * grid[i + 1] / k
        if predicted > args.max_fit_minutes:
            return (
                f"{grid[i + 1]} components predicted to take {predicted:.0f} min "
                f"> {args.max_fit_minutes:g}"
            )
    return None


# ------------------------------------------------------------------------------------------
# 1. one diagonal GMM on the unlabelled images
# ------------------------------------------------------------------------------------------
def _diag_fit(args, splits, space: str, k: int, reg: float, tried: list[dict]):
    """One diagonal GMM on the training images; its row (validation bits/dim, iterations,
    minutes) appended to ``tried``."""
    val = splits["val"]
    model, minutes, iterations, converged = fit(gmm(args, k, reg), splits["train"][space])
    val_bpd = bits_per_dim(model.score_samples(val[space]) + val["jacobian"][space])
    row = {
        "components": k,
        "reg_covar": reg,
        "val_bits_per_dim": val_bpd,
        "iterations": iterations,
        "converged": converged,
        "minutes": minutes,
    }
    tried.append(row)
    log(
        f"  diag GMM, {space}, {k} components, reg_covar {reg:g}: validation "
        f"{val_bpd:.4f} bits/dim, {iterations} EM iterations "
        f"({'converged' if converged else 'NOT converged'}), {minutes:.1f} min"
    )
    return model, row


def row_diag(args, splits) -> dict:
    out = {}
    for space in args.spaces:
        started = time.perf_counter()
        grid = sorted(args.components)
        regs = args.reg_covars_pixels if space == "pixels" else args.reg_covars_logit
        tried = []  # every fit: components, reg_covar, validation bits/dim, iterations, ...

        fitted = [_diag_fit(args, splits, space, grid[0], reg, tried) for reg in regs]
        model, best = min(fitted, key=lambda pair: pair[1]["val_bits_per_dim"])
        reg = best["reg_covar"]
        stop = "end of the grid"
        reason = _next_too_slow(args, best["minutes"], grid[0], grid, 0)
        if reason:
            stop = reason
        else:
            for i, k in enumerate(grid[1:], start=1):
                candidate, row = _diag_fit(args, splits, space, k, reg, tried)
                if row["val_bits_per_dim"] >= best["val_bits_per_dim"]:
                    stop = f"validation stopped improving at {k} components"
                    break
                model, best = candidate, row
                reason = _next_too_slow(args, row["minutes"], k, grid, i)
                if reason:
                    stop = reason
                    break
        test = splits["test"]
        test_bpd = bits_per_dim(model.score_samples(test[space]) + test["jacobian"][space])
        minutes = (time.perf_counter() - started) / 60
        log(
            f"diag GMM, {space}: {best['components']} components, reg_covar {reg:g} -> test "
            f"{test_bpd:.4f} bits/dim (row {minutes:.1f} min; stopped: {stop})"
        )
        out[space] = {
            "chosen": best,
            "tried": tried,
            "stop": stop,
            "test_bits_per_dim": test_bpd,
            "parameters": best["components"] * (2 * D + 1) - 1,
            "minutes": minutes,
        }
    return out


# ------------------------------------------------------------------------------------------
# 2. one diagonal GMM per class
# ------------------------------------------------------------------------------------------
def row_class(args, splits, space: str, reg: float) -> dict:
    started = time.perf_counter()
    train, val, test = splits["train"], splits["val"], splits["test"]
    grid = sorted(args.class_components)
    tried, best, stop = [], None, "end of the grid"
    for i, k in enumerate(grid):
        model = PerClass(lambda k=k: gmm(args, k, reg), train[space], train["y"])
        scores = model.scores(val[space], val["y"], val["jacobian"][space])
        row = {
            "components": k,
            **{f"val_{key}": value for key, value in scores.items()},
            "iterations": model.iterations,
            "converged": model.converged,
            "minutes": model.minutes,
        }
        tried.append(row)
        log(
            f"  per-class diag GMM, {space}, {k} component(s) per class: validation "
            f"log p(x, y) {scores['log_pxy']:.1f} nats, accuracy "
            f"{100 * scores['accuracy']:.2f}%, {scores['bits_per_dim']:.4f} bits/dim; "
            f"{model.iteration_note()}, {model.minutes:.1f} min"
        )
        if best is not None and row["val_log_pxy"] <= best[1]["val_log_pxy"]:
            stop = f"validation log p(x, y) stopped improving at {k} components"
            break
        best = (model, row)
        reason = _next_too_slow(args, model.minutes, k, grid, i)
        if reason:
            stop = reason
            break
    model, chosen = best
    scores = model.scores(test[space], test["y"], test["jacobian"][space])
    minutes = (time.perf_counter() - started) / 60
    log(
        f"per-class diag GMM, {space}: {chosen['components']} components per class -> test "
        f"accuracy {100 * scores['accuracy']:.2f}%, {scores['bits_per_dim']:.4f} bits/dim "
        f"(row {minutes:.1f} min; stopped: {stop})"
    )
    return {
        "space": space,
        "reg_covar": reg,
        "chosen": chosen,
        "tried": tried,
        "stop": stop,
        "test_accuracy": scores["accuracy"],
        "test_bits_per_dim": scores["bits_per_dim"],
        "iteration_note": model.iteration_note(),
        "minutes": minutes,
    }


# ------------------------------------------------------------------------------------------
# 3. PCA + a full-covariance GMM per class
# ------------------------------------------------------------------------------------------
def row_pca(args, splits) -> dict:
    from sklearn.decomposition import PCA

    started = time.perf_counter()
    train, val, test = splits["train"], splits["val"], splits["test"]
    pca = PCA(max(args.pca_dims), svd_solver="full").fit(train["pixels"])
    # the first d principal directions of the largest PCA are the PCA of dimension d
    projected = {name: pca.transform(s["pixels"]) for name, s in splits.items()}
    minutes = (time.perf_counter() - started) / 60
    log(f"  PCA fitted ({max(args.pca_dims)} directions, {minutes:.1f} min)")
    tried, best = [], None
    no_jacobian = np.zeros(len(val["y"]))
    for d in sorted(args.pca_dims):
        for k in sorted(args.pca_components):
            model = PerClass(
                lambda k=k: gmm(args, k, args.pca_reg_covar, "full"),
                projected["train"][:, :d],
                train["y"],
            )
            scores = model.scores(projected["val"][:, :d], val["y"], no_jacobian)
            row = {
                "dims": d,
                "components": k,
                "val_accuracy": scores["accuracy"],
                "val_log_pzy": scores["log_pxy"],
                "iterations": model.iterations,
                "converged": model.converged,
                "minutes": model.minutes,
            }
            tried.append(row)
            log(
                f"  PCA {d} + per-class full GMM, {k} component(s): validation accuracy "
                f"{100 * scores['accuracy']:.2f}%; {model.iteration_note()}, "
                f"{model.minutes:.1f} min"
            )
            key = (row["val_accuracy"], row["val_log_pzy"])
            if best is None or key > (best[1]["val_accuracy"], best[1]["val_log_pzy"]):
                best = (model, row)
    model, chosen = best
    d = chosen["dims"]
    accuracy = float(np.mean(model.joint(projected["test"][:, :d]).argmax(1) == test["y"]))
    minutes = (time.perf_counter() - started) / 60
    log(
        f"PCA {d} + per-class full GMM, {chosen['components']} component(s) -> test accuracy "
        f"{100 * accuracy:.2f}% (row {minutes:.1f} min)"
    )
    return {
        "chosen": chosen,
        "tried": tried,
        "test_accuracy": accuracy,
        "iteration_note": model.iteration_note(),
        "minutes": minutes,
    }


# ------------------------------------------------------------------------------------------
# 4. GaussianNB
# ------------------------------------------------------------------------------------------
def row_nb(args, splits) -> dict:
    from scipy.special import logsumexp
    from sklearn.naive_bayes import GaussianNB

    out = {}
    for space in args.spaces:
        started = time.perf_counter()
        nb = GaussianNB().fit(splits["train"][space], splits["train"]["y"])
        result = {}
        for split in ("val", "test"):
            s = splits[split]
            joint = nb.predict_joint_log_proba(s[space])
            result[f"{split}_accuracy"] = float(np.mean(nb.classes_[joint.argmax(1)] == s["y"]))
            result[f"{split}_bits_per_dim"] = bits_per_dim(
                logsumexp(joint, axis=1) + s["jacobian"][space]
            )
        result["minutes"] = (time.perf_counter() - started) / 60
        log(
            f"GaussianNB, {space}: test accuracy {100 * result['test_accuracy']:.2f}%, "
            f"{result['test_bits_per_dim']:.4f} bits/dim"
        )
        out[space] = result
    return out


# ------------------------------------------------------------------------------------------
def _fits(rows: list[dict], value) -> str:
    return "; ".join(value(row) for row in rows)


def _converged(row: dict) -> str:
    flags = row["converged"] if isinstance(row["converged"], list) else [row["converged"]]
    return "" if all(flags) else " (NOT converged)"


def table(args, result: dict) -> str:
    lines = []
    diag = result.get("diag", {})
    for space, r in diag.items():
        chosen = r["chosen"]
        figures = _fits(
            r["tried"],
            lambda t: (
                f"{t['components']}, {t['reg_covar']:g}: {t['val_bits_per_dim']:.4f} "
                f"({t['iterations']} it.{_converged(t)}, {t['minutes']:.1f} min)"
            ),
        )
        bold = "**" if space == result.get("diag_space") else ""
        lines.append(
            f"| diagonal GMM, {space} | {chosen['components']} components "
            f"({r['parameters']:,} parameters), reg_covar {chosen['reg_covar']:g}; stopped: "
            f"{r['stop']} | components, reg_covar: "
            f"validation bits/dim (EM iterations): {figures} | {bold}{r['test_bits_per_dim']:.3f}"
            f"{bold} | | {chosen['iterations']}, converged {chosen['converged']} "
            f"| {r['minutes']:.1f} min |"
        )
    if "class" in result:
        r = result["class"]
        figures = _fits(
            r["tried"],
            lambda t: (
                f"{t['components']}: {t['val_log_pxy']:.1f} / "
                f"{100 * t['val_accuracy']:.2f}% / {t['val_bits_per_dim']:.4f}{_converged(t)}"
            ),
        )
        lines.append(
            f"| diagonal GMM per class, {r['space']} | {r['chosen']['components']} components "
            f"per class (by validation log p(x, y)), reg_covar {r['reg_covar']:g}; stopped: "
            f"{r['stop']} | components: validation log p(x, y) nats / accuracy / bits/dim: "
            f"{figures} | **{r['test_bits_per_dim']:.3f}** | **{100 * r['test_accuracy']:.2f}%** "
            f"| {r['iteration_note']} | {r['minutes']:.1f} min |"
        )
    if "pca" in result:
        r = result["pca"]
        figures = _fits(
            r["tried"],
            lambda t: (
                f"{t['dims']} x {t['components']}: {100 * t['val_accuracy']:.2f}%{_converged(t)}"
            ),
        )
        lines.append(
            f"| PCA + full-covariance GMM per class, pixels | {r['chosen']['dims']} dimensions, "
            f"{r['chosen']['components']} components per class (by validation accuracy), "
            f"reg_covar {args.pca_reg_covar:g} | dimensions x components: validation accuracy: "
            f"{figures} | | **{100 * r['test_accuracy']:.2f}%** | {r['iteration_note']} "
            f"| {r['minutes']:.1f} min |"
        )
    for space, r in result.get("nb", {}).items():
        lines.append(
            f"| GaussianNB, {space} | defaults | validation accuracy "
            f"{100 * r['val_accuracy']:.2f}%, {r['val_bits_per_dim']:.4f} bits/dim | "
            f"{r['test_bits_per_dim']:.3f} | {100 * r['test_accuracy']:.2f}% | | "
            f"{r['minutes']:.1f} min |"
        )
    n = result["rows"]
    return "\n".join(
        [
            "### MNIST baselines fitted to convergence (test set scored once per row)",
            "",
            f"Command: `{result['command']}`; seed {args.seed} (dequantisation noise, "
            "k-means++ initialisation); "
            f"{n['train']:,} training images (the first), the last {n['val']:,} training "
            f"images choose every setting, {n['test']:,} test images; pixels dequantised "
            f"as in the circuit benchmark, logit space alpha = {args.alpha:g}, every bits/dim "
            "on the 8-bit pixels (the logit Jacobian included). scikit-learn "
            f"`GaussianMixture`, EM until the per-sample lower bound changes by less than "
            f"{args.tol:g} (max_iter {args.max_iter}), one start; growing stops when the "
            "validation figure stops improving or the next fit is predicted to take more than "
            f"{args.max_fit_minutes:g} min (time taken as proportional to the components). "
            f"Wall time of each row: all its fits, selection included, on one core "
            f"(total {result['minutes']:.1f} min).",
            "",
            "| model | chosen on validation | validation figures | test bits/dim "
            "| test accuracy | EM iterations of the kept fit | wall time |",
            "|---|---|---|---:|---:|---|---:|",
            *lines,
        ]
    )


def records(result: dict) -> list[dict]:
    out = []
    if "diag" in result:
        best = result["diag"][result["diag_space"]]
        out.append(
            {
                "experiment": "mnist-diag-gmm",
                "metric": "bits_per_dim",
                "value": round(best["test_bits_per_dim"], 4),
                "paper": None,
            }
        )
    if "class" in result:
        r = result["class"]
        out += [
            {
                "experiment": "mnist-class-diag-gmm",
                "metric": "test_accuracy",
                "value": round(100 * r["test_accuracy"], 2),
                "paper": None,
            },
            {
                "experiment": "mnist-class-diag-gmm",
                "metric": "bits_per_dim",
                "value": round(r["test_bits_per_dim"], 4),
                "paper": None,
            },
        ]
    if "pca" in result:
        out.append(
            {
                "experiment": "mnist-pca-class-gmm",
                "metric": "test_accuracy",
                "value": round(100 * result["pca"]["test_accuracy"], 2),
                "paper": None,
            }
        )
    return out


def command_line() -> str:
    threads = " ".join(
        f"{name}={os.environ[name]}"
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        if name in os.environ
    )
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    script = "python benchmarks/mnist_baselines.py"
    return " ".join(part for part in (threads, script, argv) if part)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        nargs="*",
        default=["diag", "class", "pca", "nb"],
        choices=["diag", "class", "pca", "nb"],
    )
    parser.add_argument(
        "--spaces",
        nargs="*",
        default=["logit", "pixels"],
        choices=["logit", "pixels"],
        help="rows diag and nb",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", default=None)
    parser.add_argument("--train-rows", type=int, default=None, help="fit on the first N")
    parser.add_argument("--val-rows", type=int, default=5000, help="the last N training images")
    parser.add_argument("--test-rows", type=int, default=None, help="the first N test images")
    parser.add_argument("--alpha", type=float, default=1e-6, help="logit-space margin")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--max-fit-minutes", type=float, default=10.0)
    parser.add_argument("--components", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--reg-covars-pixels", type=float, nargs="+", default=[1e-7, 1e-6, 1e-5])
    parser.add_argument("--reg-covars-logit", type=float, nargs="+", default=[1e-6, 1e-3])
    parser.add_argument("--class-components", type=int, nargs="+", default=[5, 10, 20, 40, 80, 160])
    parser.add_argument("--pca-dims", type=int, nargs="+", default=[20, 40, 60])
    parser.add_argument("--pca-components", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--pca-reg-covar", type=float, default=1e-6)
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing")
    args = parser.parse_args()
    args.mnist_dir = args.mnist_dir or default_mnist_dir()
    started = time.perf_counter()
    log(f"machine: {machine()}")
    try:
        splits = prepare(args)
    except FileNotFoundError as error:
        print(f"mnist_baselines.py: {error}", file=sys.stderr)
        return 2
    result = {
        "command": command_line(),
        "machine": machine(),
        "seed": args.seed,
        "rows": {name: len(s["y"]) for name, s in splits.items()},
    }
    if "diag" in args.rows or "class" in args.rows:
        # row 2 needs row 1's space and reg_covar
        result["diag"] = row_diag(args, splits)
        result["diag_space"] = min(
            result["diag"], key=lambda s: result["diag"][s]["chosen"]["val_bits_per_dim"]
        )
    if "class" in args.rows:
        chosen = result["diag"][result["diag_space"]]["chosen"]
        result["class"] = row_class(args, splits, result["diag_space"], chosen["reg_covar"])
    if "pca" in args.rows:
        result["pca"] = row_pca(args, splits)
    if "nb" in args.rows:
        result["nb"] = row_nb(args, splits)
    result["minutes"] = (time.perf_counter() - started) / 60
    text = table(args, result)
    log(text)
    if args.no_write:
        log("nothing written (--no-write)")
    else:
        update_results(records(result))
        replace_block(BLOCK, f"{text}\n\nMachine: {result['machine']}.")
        log(f"wrote docs/results.json and the {BLOCK} block of docs/results.md")
    log("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
