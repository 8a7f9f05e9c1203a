"""Torch's CPU thread count, adapted to the cores other processes leave free.

Every parallel operation of torch (and of the native kernels, which run on torch's thread
pool) ends at a barrier where the calling thread waits for all of the pool's threads. On a
machine where another process is busy, the scheduler takes a core from one of those threads
for a time slice now and then, and every barrier it holds up waits that long: a step of
hundreds of small parallel operations on two threads beside one busy process runs 1.2 to 2.5
times slower than on one thread (``python benchmarks/speed.py --parts contention``), and
users' machines are rarely idle (notebooks, browsers, a second training run).

:class:`ThreadGovernor` watches how much CPU the *other* processes take from the cores this
process may run on (Linux's ``/proc/stat``, less this process's own CPU time) and keeps the
thread count at the cores they leave free, rounded down (never below one, never above the
count the user set). Niced processes count like any other: under the scheduler's automatic
grouping by session (on by default on desktop Linux), a niced process in another session
takes its share of the cores all the same. The training loop
(:func:`~ugmm_prob.training.train_loop`, so ``fit``, ``fit_svi``, ``fit_em`` and the
scikit-learn estimators) runs under one; a loop of one's own can too::

    with adaptive_threads() as governor:
        for x in batches:
            step(x)
            governor.tick()

The count goes down as soon as a measurement (every :data:`SAMPLE_INTERVAL_S` at most) says
so and back up only after two in a row agree, so a neighbour whose load flickers does not
make it swing; on leaving, the user's count is restored.

Reproducibility: torch's parallel reductions split their work by the thread count, so results
are bit-identical for a fixed seed on the same machine *and thread count*. On an idle machine
the governor never changes the count; for bit-identical runs on a busy one, set
``UGMM_PROB_ADAPTIVE_THREADS=0`` (or call ``torch.use_deterministic_algorithms(True)``), which
leaves the count alone. Elsewhere than Linux (no ``/proc/stat``) the count is left alone too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "SAMPLE_INTERVAL_S",
    "CpuSample",
    "ThreadGovernor",
    "adaptive_threads",
    "free_cores",
    "read_cpu_sample",
]

ENVIRONMENT_VARIABLE = "UGMM_PROB_ADAPTIVE_THREADS"
"""Set to ``0`` (or ``false``, ``no``, ``off``) to keep torch's thread count as it is."""

SAMPLE_INTERVAL_S = 0.25
"""The shortest interval the load is measured over: ``/proc/stat`` counts in ticks of
10 ms, so a quarter of a second on two cores resolves the others' load to 2%."""

FREE_CORE_MARGIN = 0.25
"""A core counts as free when the others take at most this much of it (system daemons,
a terminal), so a nearly idle machine keeps every thread."""

_PROC_STAT = "/proc/stat"
_active = 0  # governors entered and not yet left; only the outermost one acts


class CpuSample(NamedTuple):
    """One reading of the CPU time spent so far: ``busy_s`` by everything that competes
    with this process on its cores (all processes, this one included), ``own_s`` by this
    process, ``wall_s`` the monotonic clock when read, ``running`` the runnable tasks
    across the machine (this one included) at that instant."""

    wall_s: float
    busy_s: float
    own_s: float
    running: int


def _parse_proc_stat(text: str, cpus: Sequence[int], tick_s: float) -> tuple[float, int]:
    """``(busy seconds on cpus, runnable tasks)`` from the text of ``/proc/stat``.

    A ``cpuN`` line holds ticks of user, nice, system, idle, iowait, irq, softirq, steal,
    guest, guest_nice (guest time is already inside user). Busy: all but idle and iowait;
    steal too, since time the hypervisor gives the core to another machine takes it from
    us as surely as a process does.
    """
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    running = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name in wanted:
            ticks = [int(v) for v in rest.split()]
            user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
            busy += user + nice + system + irq + softirq + steal
        elif name == "procs_running":
            running = int(rest)
    return busy * tick_s, running


def _allowed_cpus() -> list[int]:
    """The cores this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _own_running_threads() -> int:
    """This process's threads that are runnable now (at least the one asking): torch's
    workers spin a while after each parallel operation, and ``procs_running`` counts them."""
    running = 0
    try:
        for task in os.scandir("/proc/self/task"):
            with open(os.path.join(task.path, "stat")) as f:
                # "tid (name) state ...": the name may hold spaces, the state follows it
                running += f.read().rpartition(")")[2].split()[0] == "R"
    except OSError:
        return 1
    return max(running, 1)


def read_cpu_sample(cpus: Sequence[int] | None = None) -> CpuSample | None:
    """The CPU time spent so far on ``cpus`` (default: this process's cores), or ``None``
    where the platform does not say (no ``/proc/stat``)."""
    try:
        with open(_PROC_STAT) as f:
            text = f.read()
    except OSError:
        return None
    cpus = _allowed_cpus() if cpus is None else cpus
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    busy_s, running = _parse_proc_stat(text, cpus, tick_s)
    return CpuSample(time.monotonic(), busy_s, time.process_time(), running)


def free_cores(before: CpuSample, after: CpuSample, cores: int) -> float:
    """The cores other processes left free between two samples:
    ``cores - (busy - own) / wall``, the CPU time of everything but this process per
    second of wall time, taken from the cores this process may use."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return float(cores)
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return cores - max(others, 0.0) / wall


def _enabled_by_environment() -> bool:
    return os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() not in {
        "0",
        "false",
        "no",
        "off",
    }


class ThreadGovernor:
    """Keeps ``torch.get_num_threads()`` at the cores other processes leave free (see the
    module's docstring), between ``1`` and ``max_threads``.

    Args:
        max_threads: the most threads to use (default: torch's count on entry, i.e. what
            the user or ``OMP_NUM_THREADS`` set).
        enabled: ``None`` follows :data:`ENVIRONMENT_VARIABLE` and
            ``torch.are_deterministic_algorithms_enabled()``; ``False`` keeps the count as
            it is; ``True`` adapts even under deterministic algorithms.
        sample: how the CPU time is read (default :func:`read_cpu_sample`; tests pass a
            fake); a reading of ``None`` (the platform does not say) leaves the count alone.

    Attributes:
        changes: ``(seconds since entry, threads)`` each time the count was set, the first
            on entry: what a benchmark reports.
    """

    def __init__(
        self,
        max_threads: int | None = None,
        *,
        enabled: bool | None = None,
        sample: Callable[[], CpuSample | None] | None = None,
    ) -> None:
        if max_threads is not None and (not isinstance(max_threads, int) or max_threads < 1):
            raise ValueError(f"ThreadGovernor: expected max_threads >= 1, got {max_threads!r}")
        if enabled is None:
            enabled = _enabled_by_environment() and not torch.are_deterministic_algorithms_enabled()
        self.max_threads = max_threads
        self.enabled = enabled
        self._sample = sample or (lambda: read_cpu_sample())  # looked up when called
        self.changes: list[tuple[float, int]] = []
        self._acting = False

    @property
    def threads(self) -> int:
        """The thread count now."""
        return torch.get_num_threads()

    def __enter__(self) -> ThreadGovernor:
        global _active
        _active += 1
        self._restore = torch.get_num_threads()
        limit = self.max_threads or self._restore
        self._cores = len(_allowed_cpus())
        self._limit = min(limit, self._cores)
        # an outer governor already acts (a fit inside an estimator's fit), or nothing to do
        if not self.enabled or _active > 1 or self._limit < 2:
            return self
        self._last = self._sample()
        if self._last is None:
            return self
        self._acting = True
        self._start = self._last.wall_s
        self._raise_votes = 0
        # The first interval has no measurement yet: start from the other processes' tasks
        # runnable right now, when they share this process's cores.
        everywhere = self._cores == (os.cpu_count() or 0)
        others = max(self._last.running - _own_running_threads(), 0) if everywhere else 0
        self._set(self._target(self._cores - others))
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _active
        _active -= 1
        if self._acting:
            torch.set_num_threads(self._restore)
            self._acting = False

    def _target(self, free: float) -> int:
        return max(1, min(self._limit, math.floor(free + FREE_CORE_MARGIN)))

    def _set(self, threads: int) -> None:
        if threads != torch.get_num_threads() or not self.changes:
            torch.set_num_threads(threads)
            self.changes.append((round(self._last.wall_s - self._start, 3), threads))

    def tick(self) -> None:
        """Call once per step: measures the load when :data:`SAMPLE_INTERVAL_S` has passed
        since the last measurement and sets the thread count it calls for."""
        # the clock first: reading /proc/stat at every step of a small model would cost
        # a few percent of its time
        if not self._acting or time.monotonic() - self._last.wall_s < SAMPLE_INTERVAL_S:
            return
        now = self._sample()
        if now is None:
            return
        target = self._target(free_cores(self._last, now, self._cores))
        self._last = now
        current = torch.get_num_threads()
        if target < current:
            self._raise_votes = 0
            self._set(target)
        elif target > current:
            self._raise_votes += 1
            if self._raise_votes >= 2:  # two measurements in a row before adding threads
                self._raise_votes = 0
                self._set(target)
        else:
            self._raise_votes = 0


def adaptive_threads(
    max_threads: int | None = None, *, enabled: bool | None = None
) -> ThreadGovernor:
    """A :class:`ThreadGovernor` to enter with ``with``; call its ``tick()`` every step."""
    return ThreadGovernor(max_threads, enabled=enabled)
