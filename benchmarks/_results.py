"""Shared by the benchmark scripts: records in ``docs/results.json`` and the machine line."""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import platform

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "docs" / "results.json"


def default_mnist_dir() -> pathlib.Path:
    """``$UGMM_PROB_MNIST_DIR`` if set, else ``../shared/data/mnist`` beside the repository."""
    env = os.environ.get("UGMM_PROB_MNIST_DIR")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data" / "mnist"


def machine() -> str:
    """CPU model, cores, the GPU if there is one, torch version and threads, Python version."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{name}, {os.cpu_count()} logical cores{gpu}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def replace_block(name: str, content: str, page: pathlib.Path | None = None) -> None:
    """Put ``content`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in a page.

    The page defaults to docs/results.md; a block not yet there is appended.
    """
    page = page or REPO / "docs" / "results.md"
    text = page.read_text() if page.exists() else "# Results\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{content}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)


def update_results(records: list[dict], path: pathlib.Path = RESULTS_JSON) -> None:
    """Replace the records with the same (experiment, metric) in ``path``; keep the others."""
    existing = json.loads(path.read_text()) if path.exists() else []
    keys = {(r["experiment"], r["metric"]) for r in records}
    kept = [r for r in existing if (r["experiment"], r["metric"]) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept + records, indent=2) + "\n")


def run_parts(
    parts: dict, args, *, block: str, page: pathlib.Path | None = None, write: bool = True
) -> None:
    """Run the parts named in ``args.parts`` (each ``part(args) -> (records, markdown)``),
    then, with ``write``, record them: the records in docs/results.json, each table in
    ``page`` (default docs/results.md) between the markers ``{block}-{part}``."""
    print(f"machine: {machine()}", flush=True)
    records, tables = [], {}
    for name in args.parts:
        new, table = parts[name](args)
        records += new
        tables[name] = table
    if not write:
        print("nothing written (--no-write)", flush=True)
        return
    update_results(records)
    for name, table in tables.items():
        replace_block(f"{block}-{name}", f"{table}\n\nMachine: {machine()}.", page)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def step_peak_mib(step) -> float | None:
    """Rise of this process's resident-set high-water mark over one call of ``step``.

    Call after warm-up, in a fresh process with ``MALLOC_MMAP_THRESHOLD_`` fixed (so large
    tensors are mmapped and unmapped rather than kept in glibc's heap). ``None`` where
    ``/proc/self/clear_refs`` is unavailable (not Linux).
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages to the OS
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 1024


# Environment for the child processes that measure memory: see step_peak_mib.
MEMORY_CHILD_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
