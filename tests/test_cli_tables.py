"""``ugmm-prob fit/score/sample/impute/posterior`` end to end on CSV files written here,
with missing cells and with bad cells (one line on stderr, exit status 2, nothing written)."""

import csv
import io
import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the table commands need scikit-learn (optional)")

from ugmm_prob.cli import main
from ugmm_prob.sklearn import load_estimator
from ugmm_prob.tables import TableError, read_table

COLUMNS = ["height", "weight", "age"]


def _write(path, rows, columns=(*COLUMNS, "kind")):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _data(n=120, seed=0):
    rng = np.random.RandomState(seed)
    kind = np.where(rng.rand(n) < 0.5, "small", "large")
    shift = np.where(kind == "large", 2.0, -2.0)
    x = np.column_stack([170 + 5 * shift, 60 + 8 * shift, 40 + 10 * rng.normal(size=n)])
    x[:, :2] += rng.normal(size=(n, 2)) * [3.0, 4.0]
    return [[*map(str, row), k] for row, k in zip(x.round(3).tolist(), kind, strict=True)]


def _csv(text):
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    data = _write(folder / "people.csv", _data())
    out = folder / "model"
    assert (
        main(
            ["fit", str(data), "--out", str(out), "--target", "kind", "--quiet", "--max-iter", "10"]
        )
        == 0
    )
    return folder, out


def test_fit_saves_model_metrics_and_figure(fitted):
    _, out = fitted
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"train_accuracy"' in (out / "metrics.json").read_text()
    estimator, extra = load_estimator(out / "model.pt")
    assert extra["columns"] == COLUMNS and extra["target"] == "kind"
    assert sorted(estimator.classes_) == ["large", "small"]


def test_score_posterior_sample_impute_with_missing_cells(fitted, capsys):
    folder, out = fitted
    rows = _data(6, seed=1)
    rows[0][1] = ""  # missing weight
    rows[1][0] = "nan"  # missing height
    rows[2][3] = ""  # missing class
    data = _write(folder / "holes.csv", rows)
    assert main(["score", str(out), str(data)]) == 0
    table = _csv(capsys.readouterr().out)
    assert table[0] == ["log_likelihood", "p(large)", "p(small)", "log_p_kind_given_x"]
    assert len(table) == 7 and table[3][3] == ""  # no class, no log p(class | x)
    # the scores are the estimator's (marginal over the missing cells)
    estimator, _ = load_estimator(out / "model.pt")
    x = read_table(data).numbers(COLUMNS)
    np.testing.assert_allclose(
        [float(r[0]) for r in table[1:]], estimator.score_samples(x), rtol=1e-8
    )
    probs = np.array([[float(v) for v in r[1:3]] for r in table[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-8)

    assert main(["posterior", str(out), str(data)]) == 0
    posterior = _csv(capsys.readouterr().out)
    assert posterior[0] == ["p(large)", "p(small)", "predicted"] and len(posterior) == 7

    assert main(["sample", str(out), "-n", "5", "--class", "large"]) == 0
    drawn = _csv(capsys.readouterr().out)
    assert drawn[0] == [*COLUMNS, "kind"] and len(drawn) == 6
    assert {r[3] for r in drawn[1:]} == {"large"} and all(float(r[0]) > 160 for r in drawn[1:])

    for extra in ([], ["--mode"], ["--method", "mean"], ["--method", "mpe"]):
        assert main(["impute", str(out), str(data), *extra]) == 0
        filled = _csv(capsys.readouterr().out)
        assert len(filled) == 7 and all(cell != "" for row in filled for cell in row)
        for given, done in zip(rows, filled[1:], strict=True):  # observed cells are kept
            for cell, value in zip(given, done, strict=True):
                if cell not in ("", "nan"):
                    assert cell == value or math.isclose(float(cell), float(value))

    # multiple imputation: K completions, numbered, observed cells kept in each
    assert main(["impute", str(out), str(data), "--num-samples", "3"]) == 0
    draws = _csv(capsys.readouterr().out)
    assert draws[0] == ["draw", *COLUMNS, "kind"] and len(draws) == 1 + 3 * 6
    assert [r[0] for r in draws[1:]] == [str(k) for k in range(3) for _ in range(6)]
    assert all(cell != "" for row in draws for cell in row)
    assert {r[1] for r in draws[1::6]} == {rows[0][0]}  # height observed in row 0
    assert len({r[2] for r in draws[1::6]}) == 3  # its missing weight: three draws
    assert main(["impute", str(out), str(data), "--num-samples", "3", "--method", "mean"]) == 2
    assert "--num-samples takes an int >= 1 with --method sample" in capsys.readouterr().err

    target = folder / "scores.csv"
    assert main(["score", str(out), str(data), "--output", str(target)]) == 0
    assert target.read_text().startswith("log_likelihood,")
    assert main(["score", str(out), str(data), "--output", str(target)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["score", str(out), str(data), "--output", str(target), "--force"]) == 0


def test_density_without_target_and_npy_input(tmp_path, capsys):
    x = np.array([[float(v) for v in row[:3]] for row in _data(60)])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "density"
    assert (
        main(["fit", str(tmp_path / "x.npy"), "--out", str(out), "--quiet", "--max-iter", "3"]) == 0
    )
    assert "UGMMCircuitDensity on 60 rows x 3 columns" in capsys.readouterr().out
    assert main(["sample", str(out), "-n", "4"]) == 0
    assert _csv(capsys.readouterr().out)[0] == ["x0", "x1", "x2"]
    assert main(["posterior", str(out), str(tmp_path / "x.npy")]) == 2
    assert "without --target" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "height,weight,age,kind\n170,60,40,small\n171,abc,41,large\n",
            "line 3, column 'weight': 'abc' is not a number",
        ),
        (
            "height,weight,age,kind\n170,60,40,small\n171,61\n",
            "line 3: expected 4 cells (the header's columns), got 2",
        ),
        ("", "empty file"),
        ("height,weight,age,kind\n", "a header but no data rows"),
        ("height,weight,age,kind\n170,60,inf,small\n", "'inf' is not a finite number"),
    ],
)
def test_bad_tables_are_one_line_and_exit_2(fitted, tmp_path, capsys, content, message):
    _, out = fitted
    data = tmp_path / "bad.csv"
    data.write_text(content)
    for argv in (
        ["fit", str(data), "--out", str(tmp_path / "m"), "--target", "kind", "--quiet"],
        ["score", str(out), str(data)],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.err.count("\n") == 1
        assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "m").exists()


def test_unknown_class_empty_target_and_refusals(fitted, tmp_path, capsys):
    folder, out = fitted
    rows = _data(3)
    rows[1][3] = "medium"
    data = _write(tmp_path / "unknown.csv", rows)
    assert main(["score", str(out), str(data)]) == 2
    assert "line 3, column 'kind': unknown class 'medium'" in capsys.readouterr().err
    rows[1][3] = ""
    data = _write(tmp_path / "empty_target.csv", rows)
    net = ["fit", str(data), "--out", str(tmp_path / "m"), "--target", "kind", "--model", "net"]
    assert main(net) == 2
    err = capsys.readouterr().err
    assert "line 3, column 'kind': the target is empty" in err and "--model circuit" in err
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), "--target", "colour"]) == 2
    assert "no column 'colour'" in capsys.readouterr().err
    assert main(["fit", str(folder / "people.csv"), "--out", str(out), "--quiet"]) == 2
    assert "model.pt: exists; pass --force" in capsys.readouterr().err
    assert main(["sample", str(out), "--class", "huge"]) == 2
    assert "unknown; the model knows" in capsys.readouterr().err


def test_net_model_classifies_but_does_not_sample(fitted, tmp_path, capsys):
    folder, _ = fitted
    out = tmp_path / "net"
    assert (
        main(
            [
                "fit",
                str(folder / "people.csv"),
                "--out",
                str(out),
                "--target",
                "kind",
                "--model",
                "net",
                "--quiet",
                "--max-iter",
                "5",
            ]
        )
        == 0
    )
    assert "UGMMNetClassifier" in capsys.readouterr().out
    assert main(["posterior", str(out), str(folder / "people.csv")]) == 0
    assert len(_csv(capsys.readouterr().out)) == 121
    assert main(["sample", str(out)]) == 2
    assert "models p(class | x) only" in capsys.readouterr().err
    # missing cells: the uGMM-NN cannot marginalise them; one line names the first one
    rows = _data(8, seed=2)
    rows[3][1] = ""
    holes = _write(tmp_path / "holes.csv", rows)
    for command in (["posterior", str(out)], ["score", str(out)]):
        assert main([*command, str(holes)]) == 2
        err = capsys.readouterr().err
        assert "line 5, column 'weight': empty" in err and "--model circuit" in err
    args = ["fit", str(holes), "--out", str(tmp_path / "net2"), "--target", "kind"]
    assert main([*args, "--model", "net", "--quiet"]) == 2
    assert "cannot marginalise missing cells (1 in all)" in capsys.readouterr().err
    assert not (tmp_path / "net2" / "model.pt").exists()


def test_fit_learns_from_empty_cells_and_rows_without_a_class(tmp_path, capsys):
    """``fit`` keeps rows with empty cells (marginalised) and rows with an empty target (of
    unknown class, semi-supervised): they count in the summary and in metrics.json."""
    rows = _data(80, seed=3)
    for i in range(0, 80, 4):
        rows[i][1] = ""  # 20 empty weights
    for i in range(1, 80, 3):
        rows[i][3] = ""  # 27 rows without a class
    data = _write(tmp_path / "holes.csv", rows)
    out = tmp_path / "m"
    args = ["fit", str(data), "--out", str(out), "--target", "kind", "--quiet", "--max-iter", "5"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "20 empty cells marginalised" in shown and "27 rows without a class" in shown
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == 80 and metrics["unlabelled_rows"] == 27
    assert metrics["train_accuracy"] > 0.9
    estimator, _ = load_estimator(out / "model.pt")
    assert sorted(estimator.classes_) == ["large", "small"]


def test_read_table_names_duplicate_columns(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("a,a\n1,2\n")
    with pytest.raises(TableError, match="appear twice: a"):
        read_table(path)


def test_score_names_a_missing_or_wrong_model_folder(tmp_path, capsys):
    data = _write(tmp_path / "rows.csv", _data(3))
    missing = tmp_path / "no-model"
    assert main(["score", str(missing), str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such folder" in err and "--out folder of 'ugmm-prob fit'" in err
    assert "checkpoint file" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("score", "posterior", "impute"):
        assert main([command, str(empty), str(data)]) == 2
        err = capsys.readouterr().err
        assert f"{empty}: a folder without model.pt" in err and err.count("\n") == 1
