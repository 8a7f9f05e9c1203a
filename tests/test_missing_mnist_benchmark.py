"""``benchmarks/missing_mnist.py``: masks, scores and subsets against independent truths
(enumeration, sampling, plain recomputation) on small synthetic circuits, and a quick run
on MNIST (skipped when the IDX files are absent) with no files written."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.benchmark_scripts import import_benchmark
from ugmm_prob.circuits import UGMMCircuit
from ugmm_prob.distributions import pixel_logit_transform

pytest.importorskip("sklearn", reason="scikit-learn is optional (pip install 'scikit-learn>=1.3')")

mnist = import_benchmark("missing_mnist")


@pytest.mark.parametrize("rows", [7, 14, 21])
def test_bottom_mask_hides_exactly_the_bottom_rows(rows):
    mask = mnist.bottom_mask(3, rows)
    assert mask.shape == (3, 784) and mask.dtype == torch.bool
    image = mask[1].reshape(28, 28)
    assert bool(image[: 28 - rows].all()) and not bool(image[28 - rows :].any())
    assert int((~mask).sum()) == 3 * 28 * rows
    share = {0.25: 7, 0.5: 14, 0.75: 21}
    rate = next(r for r, n in share.items() if n == rows)
    assert torch.equal(mnist.scheme_mask("bottom", rate, 3, seed=0), mask)


def test_bottom_rows_must_be_whole_rows():
    with pytest.raises(ValueError, match="whole number of rows"):
        mnist.scheme_mask("bottom", 0.3, 2, seed=0)


def test_random_mask_removes_pixels_at_the_rate_and_follows_the_seed():
    mask = mnist.scheme_mask("random", 0.5, 200, seed=3)
    # binomial sd of the share over 200 x 784 pixels: 0.0013; 5 sd
    assert abs(float((~mask).double().mean()) - 0.5) < 0.0065
    assert torch.equal(mask, mnist.random_mask(200, 0.5, seed=3))
    assert not torch.equal(mask, mnist.random_mask(200, 0.5, seed=4))
    # no row structure: the missing share of the bottom half is the rate too
    assert abs(float((~mask[:, 392:]).double().mean()) - 0.5) < 0.01


def _categorical_circuit() -> UGMMCircuit:
    generator = torch.Generator().manual_seed(5)
    circuit = UGMMCircuit(
        4, num_classes=3, depth=1, repetitions=3, channels=2, inputs="categorical", num_values=3
    ).double()
    with torch.no_grad():
        for parameter in circuit.parameters():
            parameter.copy_(2 * torch.randn(parameter.shape, generator=generator))
    return circuit


def test_masked_accuracy_marginalises_the_missing_cells_as_enumeration_does():
    """``argmax_c log p(x_observed, c)`` where ``p(x_observed, c)`` is summed by brute force
    over every value of the missing cells (categorical inputs: 3 values per cell)."""
    circuit = _categorical_circuit()
    generator = torch.Generator().manual_seed(6)
    x = torch.randint(0, 3, (40, 4), generator=generator).double()
    mask = torch.rand(40, 4, generator=generator) > 0.5
    everything = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.float64)
    with torch.no_grad():
        joint = circuit.joint_log_prob(everything)  # (81, C): log p(x, c) of every image
    truth = []
    for row, seen in zip(x, mask, strict=True):
        agrees = (everything[:, seen] == row[seen]).all(1)
        truth.append(torch.logsumexp(joint[agrees], 0).argmax())
    truth = torch.stack(truth)
    for y in (truth, (truth + 1) % 3):
        expected = float((truth == y).double().mean())
        assert mnist.masked_accuracy(circuit, x, y, mask) == pytest.approx(expected)
    assert mnist.masked_accuracy(circuit, x, truth, mask) == 1.0


def test_masked_accuracy_with_nothing_missing_is_the_argmax_of_log_p_x_c():
    circuit = _categorical_circuit()
    x = torch.randint(0, 3, (30, 4), generator=torch.Generator().manual_seed(7)).double()
    y = torch.arange(30) % 3
    with torch.no_grad():
        per_class = torch.stack(
            [circuit.log_prob(x, torch.full((30,), c)) for c in range(3)], -1
        )  # log p(x, c), one class at a time
    expected = float((per_class.argmax(-1) == y).double().mean())
    everywhere = torch.ones_like(x, dtype=torch.bool)
    assert mnist.masked_accuracy(circuit, x, y, everywhere) == pytest.approx(expected)


def test_pixel_mean_is_the_mean_of_mapped_draws_and_gives_observed_pixels_back():
    """The exact pixel-space mean against the average of 20,000 exact conditional draws
    mapped to pixels (Monte Carlo sd below 0.003); observed cells come back as v / 255 from
    the logits of the dequantised midpoints (v + 1/2) / 256."""
    alpha = 1e-6
    to_logits = pixel_logit_transform(alpha).inv
    torch.manual_seed(8)
    circuit = UGMMCircuit(6, num_classes=2, depth=1, repetitions=2, channels=3, components=3)
    circuit = circuit.double()
    values = torch.tensor([[0, 17, 128, 200, 255, 90], [3, 250, 40, 0, 255, 128]]).double()
    x = to_logits((values + 0.5) / 256)
    with torch.no_grad():
        circuit.inputs.loc_unconstrained.normal_(0, 3)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    mean = mnist.pixel_mean(circuit, x, mask, alpha=alpha)
    torch.testing.assert_close(mean[mask], (values / 255)[mask])
    draws = circuit.impute(x, mask, method="sample", num_samples=20000)
    sampled = ((256 * pixel_logit_transform(alpha)(draws) - 0.5) / 255).mean(0)
    assert float((mean - sampled)[~mask].abs().max()) < 0.015
    naive = mnist.naive_pixel_mean(circuit, x, mask, alpha=alpha)
    assert float((naive - mean)[~mask].abs().max()) > 0.05  # the test tells them apart


def test_rmse_counts_only_the_region():
    truth = torch.zeros(3, 784)
    estimate = torch.full((3, 784), 5.0)
    hidden = ~mnist.bottom_mask(1, 14)
    estimate[:, hidden[0]] = torch.tensor([0.1, -0.1, 0.1]).repeat(392 // 3 + 1)[:392]
    assert mnist.rmse(estimate, truth, hidden) == pytest.approx(0.1, rel=1e-6)


def test_class_mean_images_and_labelled_subsets():
    generator = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 10, (3000,), generator=generator)
    pixels = torch.rand(3000, 784, generator=generator)
    means = mnist.class_mean_images(pixels, labels)
    torch.testing.assert_close(means[4], pixels[labels == 4].sum(0) / int((labels == 4).sum()))
    rows = mnist.labelled_subset(labels, 100, seed=0)
    assert len(rows) == 1000 and len(rows.unique()) == 1000
    assert torch.equal(torch.bincount(labels[rows], minlength=10), torch.full((10,), 100))
    assert torch.equal(rows, mnist.labelled_subset(labels, 100, seed=0))
    assert not torch.equal(rows, mnist.labelled_subset(labels, 100, seed=1))


@pytest.fixture(scope="module")
def quick_run():
    from ugmm_prob.datasets import DatasetNotFoundError, find_mnist

    try:
        find_mnist(mnist.default_mnist_dir())
    except DatasetNotFoundError as error:
        pytest.skip(f"MNIST IDX files not found ({error})")
    return mnist.main(["--quick", "--no-write", "--train-rows", "2500", "--test-rows", "300"])


def test_quick_run_scores_with_nothing_missing_as_the_circuits_prediction(quick_run):
    fitted = quick_run["fitted"]
    curves = quick_run["accuracy"]["accuracy"]
    x, y = fitted.split["x_test"][:300], fitted.split["y_test"][:300]
    assert curves["none"] == pytest.approx(float((fitted.circuit.predict(x) == y).double().mean()))
    assert set(curves) == {"none"} | {f"{s}-{r:g}" for s in mnist.SCHEMES for r in mnist.RATES}
    assert curves["bottom-0.75"] < curves["none"]


def test_quick_run_records_every_row(quick_run):
    records = mnist.records(quick_run, "command", "split", 0)
    names = {(r["experiment"], r["metric"]) for r in records}
    assert ("mnist-missing-random-0.5", "test_accuracy") in names
    assert ("mnist-missing-bottom-half-completion", "rmse_circuit") in names
    assert ("mnist-semi-supervised", "test_accuracy_semi") in names
    errors = quick_run["completion"]["rmse"]
    assert all(0 < value < 1 for value in errors.values())
    semi = quick_run["semi"]
    assert semi["labelled"] == 200 and semi["validation_images"] == 200
