"""A fixed seed or ``random_state`` gives bit-identical results in a fresh process.

Inside one pytest process the global torch generator is reseeded before every test
(``conftest.py``), which hides a model that draws from it unseeded; so each check here runs
the same short script in two fresh Python processes and compares what they print, the
exact bits of every float (``float.hex``). The scripts fit on tiny data for a few epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ugmm_prob

pytest.importorskip("sklearn", reason="scikit-learn is optional (pip install 'scikit-learn>=1.3')")

REPO = Path(ugmm_prob.__file__).resolve().parents[1]

# Each script prints one JSON line: a list of float.hex strings (results to compare exactly).
_DATA = """
import json
import numpy as np
import torch

rng = np.random.RandomState(1)
X = rng.randn(60, 4) @ rng.randn(4, 4)
y = (X[:, 0] + 0.3 * rng.randn(60) > 0).astype(int) + (X[:, 1] > 1).astype(int)

def show(*arrays):
    values = [float(v) for a in arrays for v in np.asarray(a, dtype=np.float64).ravel()]
    print(json.dumps([v.hex() for v in values]))
"""

SCRIPTS = {
    "UGMMCircuitDensity": """
from ugmm_prob.sklearn import UGMMCircuitDensity
model = UGMMCircuitDensity(random_state=0, max_iter=4).fit(X)
show(model.score_samples(X), model.sample(3)[0])
""",
    "UGMMCircuitClassifier (EM)": """
from ugmm_prob.sklearn import UGMMCircuitClassifier
model = UGMMCircuitClassifier(random_state=0, max_iter=4).fit(X, y)
show(model.predict_proba(X), model.score_samples(X))
""",
    "UGMMCircuitClassifier (hybrid, Adam)": """
from ugmm_prob.sklearn import UGMMCircuitClassifier
model = UGMMCircuitClassifier(random_state=0, max_iter=3, likelihood_weight=0.5).fit(X, y)
show(model.predict_proba(X))
""",
    "UGMMNetClassifier": """
from ugmm_prob.sklearn import UGMMNetClassifier
model = UGMMNetClassifier(random_state=0, max_iter=3, n_members=2).fit(X, y)
show(model.predict_proba(X))
""",
    "fit": """
from ugmm_prob import UGMMClassifier, fit
torch.manual_seed(0)  # the model's initialisation; fit's seed covers the rest
net = UGMMClassifier(4, hidden=(6,), num_classes=3, layer_norm=False)
x = torch.tensor(X, dtype=torch.float32)
history = fit(net, x, torch.tensor(y), epochs=3, batch_size=16, seed=0, progress=False)
with torch.no_grad():
    show(net.predict_proba(x), [row["loss"] for row in history])
""",
    "fit_em": """
from ugmm_prob.circuits import UGMMCircuit, fit_em
torch.manual_seed(0)  # the circuit's initialisation; fit_em's seed covers the rest
circuit = UGMMCircuit(4, num_classes=3, depth=1, repetitions=2, channels=2, components=2)
x = torch.tensor(X, dtype=torch.float32)
history = fit_em(circuit, x, torch.tensor(y), epochs=3, batch_size=16, seed=0, progress=False)
with torch.no_grad():
    show(circuit.log_prob(x), [row["loss"] for row in history])
""",
}


def _run(body: str) -> list[str]:
    """The floats (as hex strings) that ``body`` prints, run in a fresh interpreter that
    imports this checkout's ``ugmm_prob``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # the promise is per thread count, which the training loop otherwise adapts to the
    # machine's load (ugmm_prob.threads): fix it, so a busy moment cannot change it
    env["UGMM_PROB_ADAPTIVE_THREADS"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DATA) + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_same_seed_gives_identical_results_in_fresh_processes(name):
    first, second = _run(SCRIPTS[name]), _run(SCRIPTS[name])
    assert len(first) > 0
    differing = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert not differing, (
        f"{name}: {len(differing)} of {len(first)} values differ between two processes, "
        f"first at {differing[0]}: {float.fromhex(first[differing[0]])!r} vs "
        f"{float.fromhex(second[differing[0]])!r}"
    )


def test_the_check_sees_an_unseeded_draw():
    """The comparison itself can fail: a value drawn from torch's unseeded global generator
    differs between two fresh processes."""
    body = "show(torch.rand(4))"
    assert _run(body) != _run(body)
