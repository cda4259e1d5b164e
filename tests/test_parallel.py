"""Experts in worker processes give what one process gives; workers never hang or hide errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
    assert plan_workers(0, torch.device("cuda"), 8) == WorkerPlan(0)
    assert plan_workers(1, CPU, 8) == WorkerPlan(0)
    assert plan_workers(4, CPU, 0) == WorkerPlan(0)
    assert plan_workers(4, CPU, 1) == WorkerPlan(1)  # one task left still runs in a 1-thread worker
    assert plan_workers(3, CPU, 2) == WorkerPlan(2)  # never more processes than tasks
    assert plan_workers(0, CPU, 64).processes == (0 if usable_cores() == 1 else min(64, usable_cores()))


def _ticking(n: int, tick) -> tuple[int, int]:
    for _ in range(n):
        tick()
    return n * n, torch.get_num_threads()


def _failing(n: int, tick) -> int:
    if n == 2:
        raise ConfigError("task 2 is bad")
    return n


def test_run_tasks_keeps_order_forwards_ticks_and_raises_a_tasks_error():
    ticks = []
    out = run_tasks(_ticking, [(3,), (1,), (2,)], WorkerPlan(2), lambda: ticks.append(1))
    assert out == [(9, 1), (1, 1), (4, 1)]  # every worker runs one torch thread
    assert len(ticks) == 6
    with pytest.raises(ConfigError, match="task 2 is bad"):
        run_tasks(_failing, [(1,), (2,), (3,)], WorkerPlan(2))


def test_workers_do_not_hang_after_the_parent_used_openmp_with_several_threads():
    """A forked child that opens a multi-threaded OpenMP region after its parent used OpenMP
    can hang for ever (libgomp is not fork-safe); workers run one thread, so they finish."""
    script = textwrap.dedent(
        """
        import torch
        from meddistill.parallel import WorkerPlan, run_tasks
        from tests_parallel_task import conv
        torch.set_num_threads(4)
        conv(0, lambda: None)  # the parent's OpenMP pool is warm
        print(run_tasks(conv, [(1,), (2,), (3,)], WorkerPlan(2)))
        """
    )
    task = "import torch\n\ndef conv(i, tick):\n    x = torch.randn(64, 16, 28, 28)\n"
    task += "    return float(torch.nn.functional.conv2d(x, torch.randn(16, 16, 3, 3)).sum() * 0) + i\n"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tests_parallel_task.py").write_text(task)
        out = subprocess.run([sys.executable, "-c", script], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 2.0, 3.0]"


def test_experts_in_two_processes_equal_experts_in_one(breast, tmp_path, one_thread):
    sums = {}
    for workers in (1, 2):
        cfg = tiny_config(experts=tmp_path / f"w{workers}", workers=workers)
        folder = train_experts(breast, cfg, CPU, progress=False)
        sums[workers] = [load_trajectory(f) for f in expert_files(folder)]
    assert len(sums[2]) == 2
    for a, b in zip(sums[1], sums[2], strict=True):
        assert torch.equal(a, b)
