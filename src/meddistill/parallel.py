"""Independent trainings (expert trajectories) in worker processes on a CPU.

Small nets on a few CPU cores train faster as one single-thread process per core than as one
process whose torch ops are split over the cores. :func:`plan_workers` decides how many
processes a job gets (``workers`` in the config: 0 = one per usable core on a CPU, always one
on CUDA) and :func:`run_tasks` runs picklable tasks in spawned processes, forwarding their
progress ticks to the caller. Every task seeds itself from its own tags, so the results do
not depend on which process ran it (for the same number of torch threads per process).
"""

from __future__ import annotations

import os
import queue as queue_mod
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class WorkerPlan:
    processes: int  # 1: run in this process
    threads: int  # torch threads per worker process


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(workers: int, device: torch.device, tasks: int) -> WorkerPlan:
    """``workers`` processes (0: one per usable core) for ``tasks`` tasks; one on CUDA or for a
    single task. Each worker gets an equal share of this process's torch threads."""
    if device.type != "cpu" or tasks < 2:
        return WorkerPlan(1, torch.get_num_threads())
    n = workers or usable_cores()
    n = max(1, min(n, tasks))
    return WorkerPlan(n, max(1, torch.get_num_threads() // n))


def _context():
    """``fork`` where the platform forks safely (Linux): no re-import of the caller's script
    (which need not guard its top level with ``if __name__ == "__main__"``) and no copy of the
    data; ``spawn`` elsewhere."""
    import multiprocessing as mp

    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    plan: WorkerPlan,
    on_tick: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(*task, tick) for task in tasks]``, in ``plan.processes`` spawned processes (or here
    when it is 1). ``tick()`` may be called by ``fn`` any number of times; each call reaches
    ``on_tick`` in this process. ``fn`` must be a module-level function; results keep the
    order of ``tasks``. A task's exception is raised here after the pool is shut down."""
    tick = on_tick or (lambda: None)
    if plan.processes <= 1:
        return [fn(*task, tick) for task in tasks]
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = _context()
    with ctx.Manager() as manager:
        ticks = manager.Queue()
        pool = ProcessPoolExecutor(plan.processes, mp_context=ctx, initializer=_init, initargs=(plan.threads,))
        try:
            futures = [pool.submit(fn, *task, _Ticker(ticks)) for task in tasks]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(ticks, tick)
                for f in futures:
                    if f.done() and f.exception() is not None:
                        raise f.exception()
            _drain(ticks, tick)
            return [f.result() for f in futures]
        finally:
            pool.shutdown(cancel_futures=True)


class _Ticker:
    """A picklable ``tick()`` that puts one item on a manager queue."""

    def __init__(self, q) -> None:
        self.q = q

    def __call__(self) -> None:
        self.q.put(1)


def _drain(q, tick: Callable[[], None]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue_mod.Empty:
            return
        tick()
