"""Run with the v0.1 code (before general region graphs) to record reference values."""
import json, sys, pathlib
import torch
sys.path.insert(0, ".")
from tests.circuit_cases import build
from ugmm_prob.checkpoints import save_checkpoint
from ugmm_prob.circuits import UGMMCircuit, fit_em

out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
record = {}
for graph in ("random", "quad", "data"):
    for inputs in ("gaussian", "categorical"):
        circuit = build(graph, 2, inputs)
        torch.manual_seed(1)
        x = circuit.sample(5)[0]
        save_checkpoint(out / f"{graph}-{inputs}.pt", circuit, epoch=1)
        record[f"{graph}-{inputs}"] = {"x": x.tolist(), "joint": circuit.joint_log_prob(x).tolist()}

def recipe(inputs):
    g = torch.Generator().manual_seed(0)
    if inputs == "categorical":
        x = torch.randint(0, 16, (120, 64), generator=g).float()
        x[:60, :32] = (x[:60, :32] / 4).floor()  # class 0 darker on top
        y = (torch.arange(120) < 60).long()
        torch.manual_seed(0)
        c = UGMMCircuit.for_images(8, 8, 2, depth=4, repetitions=3, channels=3, inputs="categorical", num_values=16).float()
        c.init_from_data(x, y, generator=torch.Generator().manual_seed(1))
    else:
        x = torch.randn(120, 6, generator=g, ) @ torch.randn(6, 6, generator=g)
        y = (x[:, 0] > 0).long()
        torch.manual_seed(0)
        c = UGMMCircuit.from_data(x, y, depth=2, repetitions=4, channels=3, components=2, generator=torch.Generator().manual_seed(1), seed=3)
    before = c.log_prob(x, y).sum().item()
    fit_em(c, x, y, epochs=2, batch_size=40, progress=False, seed=0)
    return before, c.log_prob(x, y).sum().item()

for inputs in ("categorical", "gaussian"):
    before, after = recipe(inputs)
    record[f"recipe-{inputs}"] = {"before": before, "after": after}
(out / "reference.json").write_text(json.dumps(record, indent=1))
print({k: v for k, v in record.items() if k.startswith("recipe")})
