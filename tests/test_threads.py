"""The thread governor: what it reads from ``/proc/stat``, the counts it sets for given loads,
that the training loop runs under it, and (on Linux) that a real busy neighbour lowers it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from ugmm_prob import threads
from ugmm_prob.threads import CpuSample, ThreadGovernor, adaptive_threads, free_cores

STAT = """cpu  100 5 30 900 7 1 2 3 0 0
cpu0 40 5 10 450 3 1 1 2 0 0
cpu1 60 0 20 450 4 0 1 1 0 0
cpu2 1000 0 0 0 0 0 0 0 0 0
intr 12345 0 0
procs_running 3
procs_blocked 0
"""


def test_proc_stat_busy_time_counts_all_but_idle_and_iowait_on_the_given_cores():
    # cpu0: user 40 + nice 5 + system 10 + irq 1 + softirq 1 + steal 2 = 59 ticks;
    # cpu1: 60 + 0 + 20 + 0 + 1 + 1 = 82; cpu2 is not ours
    busy, running = threads._parse_proc_stat(STAT, [0, 1], tick_s=0.01)
    assert busy == pytest.approx((59 + 82) * 0.01)
    assert running == 3
    assert threads._parse_proc_stat(STAT, [2], tick_s=0.01)[0] == pytest.approx(10.0)


def test_free_cores_is_the_cores_less_the_other_processes_cpu_per_second():
    before = CpuSample(wall_s=10.0, busy_s=100.0, own_s=5.0, running=1)
    # in 0.5 s: 1.2 CPU-seconds busy on our cores, 0.7 of them ours -> others 0.5 / 0.5 s
    after = CpuSample(wall_s=10.5, busy_s=101.2, own_s=5.7, running=1)
    assert free_cores(before, after, cores=2) == pytest.approx(1.0)
    # our own time can exceed the busy time by rounding of the ticks: never more than all
    after = CpuSample(wall_s=10.5, busy_s=100.5, own_s=6.0, running=1)
    assert free_cores(before, after, cores=2) == pytest.approx(2.0)


class FakeLoad:
    """Samples of a machine where the other processes use ``others`` cores (settable)."""

    def __init__(self, others: float, running: int = 1) -> None:
        self.others, self.running = others, running
        self.wall = self.busy = 0.0

    def __call__(self) -> CpuSample:
        self.wall += 0.5
        self.busy += 0.5 * self.others
        return CpuSample(self.wall, self.busy, 0.0, self.running)


@pytest.fixture
def two_cores(monkeypatch):
    """Two cores, torch on two threads, measurements as often as asked; restored after."""
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "SAMPLE_INTERVAL_S", 0.0)
    monkeypatch.setattr(threads, "_own_running_threads", lambda: 1)
    monkeypatch.delenv(threads.ENVIRONMENT_VARIABLE, raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_governor_follows_the_load_lowering_at_once_and_raising_after_two_samples(two_cores):
    load = FakeLoad(others=0.0)
    with ThreadGovernor(sample=load) as governor:
        assert governor.threads == 2
        load.others = 1.0  # a busy neighbour: one core left
        governor.tick()
        assert governor.threads == 1
        load.others = 0.7  # our two threads and theirs share the cores: still one free
        governor.tick()
        assert governor.threads == 1
        load.others = 0.1  # the neighbour is gone: raised after two samples agree
        governor.tick()
        assert governor.threads == 1
        governor.tick()
        assert governor.threads == 2
    assert torch.get_num_threads() == 2
    assert [threads for _, threads in governor.changes] == [2, 1, 2]


def test_governor_starts_from_the_tasks_runnable_on_entry(two_cores):
    with ThreadGovernor(sample=FakeLoad(others=0.0, running=2)) as governor:
        assert governor.threads == 1  # one other task runnable besides this one
    assert torch.get_num_threads() == 2


def test_governor_keeps_a_lowered_limit_and_restores_the_users_count(two_cores):
    torch.set_num_threads(1)
    with ThreadGovernor(sample=FakeLoad(others=0.0)) as governor:
        governor.tick()
        governor.tick()
        assert governor.threads == 1  # never above the count the user set
    with ThreadGovernor(max_threads=1, sample=FakeLoad(others=0.0)) as governor:
        assert governor.threads == 1


@pytest.mark.parametrize("how", ["environment", "deterministic", "argument", "nested"])
def test_governor_leaves_the_count_alone_when_asked(two_cores, monkeypatch, how):
    busy = FakeLoad(others=2.0)
    if how == "environment":
        monkeypatch.setenv(threads.ENVIRONMENT_VARIABLE, "0")
    if how == "deterministic":
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    with ThreadGovernor(sample=FakeLoad(others=0.0)) if how == "nested" else _null():
        with ThreadGovernor(enabled=False if how == "argument" else None, sample=busy) as inner:
            inner.tick()
            assert inner.threads == 2
            assert inner.changes == []


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_governor_refuses_a_bad_limit():
    with pytest.raises(ValueError, match="expected max_threads >= 1, got 0"):
        ThreadGovernor(0)


def test_training_loop_runs_under_the_governor(two_cores, monkeypatch):
    from ugmm_prob import UGMMCircuit, fit_em

    counts = []
    monkeypatch.setattr(threads, "read_cpu_sample", FakeLoad(others=1.0))
    real_set = torch.set_num_threads

    def recording_set(n: int) -> None:
        counts.append(n)
        real_set(n)

    monkeypatch.setattr(torch, "set_num_threads", recording_set)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    circuit = UGMMCircuit(4, depth=1, repetitions=2, channels=2)
    fit_em(circuit, x, epochs=2, batch_size=8, progress=False)
    assert counts[0] == 2 and 1 in counts  # lowered during the steps
    assert counts[-1] == 2 and torch.get_num_threads() == 2  # restored after


@pytest.mark.skipif(
    not (os.path.exists("/proc/stat") and hasattr(os, "sched_getaffinity")),
    reason="the governor reads Linux's /proc/stat",
)
def test_a_real_busy_neighbour_on_our_cores_lowers_the_count(monkeypatch):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    ours = cores[:2]
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: ours)
    monkeypatch.delenv(threads.ENVIRONMENT_VARIABLE, raising=False)
    program = (
        f"import os, time\nos.sched_setaffinity(0, {{{ours[0]}}})\n"
        "end = time.monotonic() + 20\nwhile time.monotonic() < end: pass"
    )
    busy = subprocess.Popen([sys.executable, "-c", program])
    try:
        time.sleep(0.3)
        with adaptive_threads(max_threads=2, enabled=True) as governor:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                time.sleep(0.05)
                governor.tick()
            assert governor.threads == 1, governor.changes
    finally:
        busy.kill()
        busy.wait()
