"""Independent trainings (expert trajectories) in worker processes on a CPU.

Small nets on a few CPU cores train faster as one single-thread process per core than as one
process whose torch ops are split over the cores. :func:`plan_workers` decides how many
processes a job gets (``workers`` in the config: 0 = one per usable core on a CPU, 1 = this
process; always this process on CUDA) and :func:`run_tasks` runs the tasks in forked worker
processes, forwarding their progress ticks to the caller.

Workers always run one torch thread: a forked child that starts a multi-threaded OpenMP region
after its parent used OpenMP can hang (GNU libgomp is not fork-safe), and a fixed thread count
keeps every task's floating-point result independent of how many tasks were left. Every task
seeds itself from its own tags, so results do not depend on which worker ran it. With ``fork``
the tasks (the dataset included) are inherited, not pickled or copied to shared memory.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from meddistill.errors import MeddistillError


@dataclass(frozen=True)
class WorkerPlan:
    processes: int  # 0: run in this process


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(workers: int, device: torch.device, tasks: int) -> WorkerPlan:
    """``workers`` single-thread processes (0: one per usable core), never more than ``tasks``;
    this process (``processes == 0``) on CUDA, for ``workers == 1``, on a 1-core machine or
    without tasks."""
    n = workers or usable_cores()
    if device.type != "cpu" or n == 1 or tasks < 1:
        return WorkerPlan(0)
    return WorkerPlan(min(n, tasks))


def _context():
    """``fork`` where the platform forks safely (Linux): no re-import of the caller's script
    (which need not guard its top level with ``if __name__ == "__main__"``) and no copy of the
    data; ``spawn`` elsewhere."""
    import multiprocessing as mp

    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _worker(fn: Callable[..., Any], tasks: Sequence[tuple], todo, done) -> None:
    torch.set_num_threads(1)

    def tick() -> None:
        done.put(("tick", -1, None))

    while (i := todo.get()) is not None:
        try:
            done.put(("result", i, fn(*tasks[i], tick)))
        except BaseException as exc:  # reported to the parent, which stops every worker
            done.put(("error", i, _picklable(exc)))
            return


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
    except Exception:
        return MeddistillError(f"{type(exc).__name__}: {exc}")
    return exc


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    plan: WorkerPlan,
    on_tick: Callable[[], None] | None = None,
) -> list[Any]:
    """``[fn(*task, tick) for task in tasks]``, in ``plan.processes`` worker processes (here when
    it is 0). ``tick()`` may be called by ``fn`` any number of times; each call reaches
    ``on_tick`` in this process. ``fn`` must be a module-level function; results keep the
    order of ``tasks``. The first task error is raised here and every worker is stopped."""
    tick = on_tick or (lambda: None)
    if plan.processes == 0:
        return [fn(*task, tick) for task in tasks]
    ctx = _context()
    todo, done = ctx.Queue(), ctx.Queue()
    for i in range(len(tasks)):
        todo.put(i)
    for _ in range(plan.processes):
        todo.put(None)
    procs = [ctx.Process(target=_worker, args=(fn, tasks, todo, done), daemon=True) for _ in range(plan.processes)]
    for p in procs:
        p.start()
    results: list[Any] = [None] * len(tasks)
    left = len(tasks)
    try:
        while left:
            try:
                kind, i, value = done.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise MeddistillError(f"a worker process died (exit code {dead[0]}); rerun to resume") from None
                continue
            if kind == "tick":
                tick()
            elif kind == "error":
                raise value
            else:
                results[i] = value
                left -= 1
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
