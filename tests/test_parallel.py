"""Experts in worker processes give what one process gives."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from meddistill.errors import ConfigError
from meddistill.experts import expert_files, load_trajectory, train_experts
from meddistill.parallel import WorkerPlan, plan_workers, run_tasks, usable_cores

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_plan_workers():
    threads = torch.get_num_threads()
    assert plan_workers(0, torch.device("cuda"), 8) == WorkerPlan(1, threads)
    assert plan_workers(4, CPU, 1) == WorkerPlan(1, threads)
    assert plan_workers(1, CPU, 8).processes == 1
    assert plan_workers(3, CPU, 2).processes == 2  # never more processes than tasks
    assert plan_workers(0, CPU, 64).processes == min(64, usable_cores())
    assert plan_workers(2, CPU, 8).threads == max(1, threads // 2)


def _ticking(n: int, tick) -> int:
    for _ in range(n):
        tick()
    return n * n


def _failing(n: int, tick) -> int:
    if n == 2:
        raise ConfigError("task 2 is bad")
    return n


def test_run_tasks_keeps_order_forwards_ticks_and_raises_a_tasks_error():
    ticks = []
    out = run_tasks(_ticking, [(3,), (1,), (2,)], WorkerPlan(2, 1), lambda: ticks.append(1))
    assert out == [9, 1, 4]
    assert len(ticks) == 6
    with pytest.raises(ConfigError, match="task 2 is bad"):
        run_tasks(_failing, [(1,), (2,), (3,)], WorkerPlan(2, 1))


def test_experts_in_two_processes_equal_experts_in_one(breast, tmp_path, one_thread):
    sums = {}
    for workers in (1, 2):
        cfg = tiny_config(experts=tmp_path / f"w{workers}", workers=workers)
        folder = train_experts(breast, cfg, CPU, progress=False)
        sums[workers] = [load_trajectory(f) for f in expert_files(folder)]
    assert len(sums[2]) == 2
    for a, b in zip(sums[1], sums[2], strict=True):
        assert torch.equal(a, b)

