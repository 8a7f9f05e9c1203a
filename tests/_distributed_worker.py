"""One rank of the two-process tests in ``test_distributed.py`` (launched like torchrun).

Usage: ``python _distributed_worker.py MODE OUT_DIR`` (``MODE`` one of ``fit``, ``circuit``,
``circuit-missing``, ``em-missing``, ``svi``) with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
and ``MASTER_PORT`` in the environment. Writes ``OUT_DIR/rank<r>.pt`` with
the trained parameters and the per-epoch history.
"""

import pathlib
import sys

import pyro
import torch
from distributed_setup import (
    EM_SETTINGS,
    SETTINGS,
    incomplete_iris_data,
    iris_data,
    make_model,
)  # the script's own folder

from ugmm_prob.bayes import fit_svi, make_bayesian
from ugmm_prob.circuits import fit_em
from ugmm_prob.distributed import init_distributed
from ugmm_prob.training import fit


def main() -> None:
    mode, out = sys.argv[1], pathlib.Path(sys.argv[2])
    ctx = init_distributed()
    x, y = iris_data()
    if mode in ("fit", "circuit"):
        model = make_model(mode)
        history = fit(model, x, y, checkpoint_path=out / "run.pt", **SETTINGS)
        state = dict(model.state_dict())
    elif mode == "circuit-missing":
        model = make_model("circuit")
        history = fit(model, *incomplete_iris_data(), **SETTINGS)
        state = dict(model.state_dict())
    elif mode == "em-missing":
        model = make_model("em-missing")
        history = fit_em(model, *incomplete_iris_data(), **EM_SETTINGS)
        state = dict(model.state_dict())
    else:
        _, history = fit_svi(
            make_bayesian(make_model()),
            x,
            y,
            epochs=2,
            batch_size=15,
            lr=1e-2,
            progress=False,
            checkpoint_path=out / "svi.pt",
        )
        state = dict(pyro.get_param_store().named_parameters())
    state = {key: value.detach().clone() for key, value in state.items()}
    torch.save({"state": state, "history": history}, out / f"rank{ctx.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
