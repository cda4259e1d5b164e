"""Run the cells of a grid: locally in this process (default), in a pool of local worker
processes (``workers > 1``), or fanned out on Ray.

All executors call the same :func:`run_one` and append the same rows; only the driver
writes the store, each row as soon as its cell ends, so an interrupted grid resumes where it
stopped. A cell is deterministic given its config and its torch thread count: Ray workers use
the driver's count, so on the same hardware Ray never changes a number. Pool workers use
``threads`` each (default: the driver's count split between them) — several single-thread
cells at once can use a small CPU better than one multi-thread cell (the tensors of a tiny
synthetic set parallelise poorly), but a different thread count changes float reduction
order, hence the last bits of results.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

from tqdm.auto import tqdm

from meddistill.bench.grid import Cell, Grid, done_keys, expand
from meddistill.distill import FULL
from meddistill.errors import ConfigError
from meddistill.locks import store_lock
from meddistill.process import prepare_process, sigint_deferred
from meddistill.utils import append_jsonl, machine_info, resolve_device


def run_one(cell: Cell, progress: bool = False) -> dict:
    """Compute one cell's results row (no I/O to the store): the evaluation and, for a set,
    its diversity/coverage block (``stats``, :mod:`meddistill.stats`; cached in the run folder),
    its privacy block (``privacy``: traceability and calibrated closeness, :func:`meddistill.audit.run_privacy`;
    cached as the run folder's ``audit.json``) and, for a method that logs its steps, the run's
    ``health`` (:mod:`meddistill.health`)."""
    from meddistill.audit import run_privacy
    from meddistill.health import log_health
    from meddistill.pipeline import full_row, holds_earlier_work, load_data, run_cell, run_dir_for
    from meddistill.stats import run_stats

    t0 = time.monotonic()
    cfg = cell.cfg
    if cell.method == FULL:
        row = full_row(cfg, progress)
    else:
        from meddistill.bench.status import experts_to_train

        earlier = holds_earlier_work(run_dir_for(cfg))  # a checkpoint or a set: work not timed here
        trains = experts_to_train(cfg) is not None  # the cell's seconds will include its experts
        ds = load_data(cfg, progress)  # once for the cell and its stats
        res = run_cell(cfg, progress=progress, ds=ds)
        row = res.row
        row["stats"] = run_stats(cfg, res.run_dir, res.synset, ds, progress)
        row["privacy"] = run_privacy(cfg, res.run_dir, res.synset, ds, progress)
        health = log_health(res.run_dir, getattr(cfg.distill.section(), "lr_init", None))
        if health is not None:
            row["health"] = health
        if earlier:
            row["resumed"] = True  # ``seconds`` is this process's part only
        if res.synset.meta.get("machines"):
            row["distill_machines"] = res.synset.meta["machines"]  # iterations per machine
        if trains:
            row["experts_trained"] = True  # ``seconds`` includes training (or finishing) its experts
    row.update(cell_key=cell.key, seconds=round(time.monotonic() - t0, 1))
    row["machine"] = machine_info(resolve_device(cfg.device))
    return row


def _distinct_experts(cells: list[Cell]) -> list[tuple[Cell, int]]:
    """One (cell, epochs) task per distinct expert buffer among the cells whose method reads
    experts: the buffer is trained to the last epoch any of those cells reads."""
    from meddistill.distill import get_spec
    from meddistill.experts import expert_dir

    seen: dict[str, tuple[Cell, int]] = {}
    for c in cells:
        spec = get_spec(c.method)
        if spec.needs_experts:
            key = str(expert_dir(c.cfg))
            first, epochs = seen.get(key, (c, 0))
            seen[key] = (first, max(epochs, spec.experts_read(c.cfg)))
    return list(seen.values())


def _with_threads(fn, threads: int):
    """Run ``fn`` in a Ray worker with the driver's torch thread count (Ray workers default to 1
    thread, and a different count changes float reduction order, hence the last bits of results)."""

    def call(*args):
        import torch

        torch.set_num_threads(threads)
        return fn(*args)

    return call


def _prepare_experts(cell: Cell, epochs: int) -> str:
    from meddistill.experts import train_experts
    from meddistill.pipeline import load_data

    cfg = cell.cfg
    return str(train_experts(load_data(cfg), cfg, resolve_device(cfg.device), progress=False, epochs=epochs))


def run_local(cells: list[Cell], store: Path, progress: bool, on_row: Callable[[dict], None] | None = None) -> int:
    n = 0
    with tqdm(cells, desc="bench", unit="cell", disable=not progress) as bar:
        for cell in bar:
            bar.set_postfix_str(cell.label)
            row = run_one(cell, progress=False)
            append_jsonl(store, row)
            n += 1
            if on_row:
                on_row(row)
    return n


def _store_rows(
    rows: Iterator[dict], total: int, store: Path, desc: str, progress: bool, on_row: Callable[[dict], None] | None
) -> int:
    """Append each finished cell's row to the store as it arrives (only the driver writes it)."""
    n = 0
    with tqdm(total=total, desc=desc, unit="cell", disable=not progress) as bar:
        for row in rows:
            append_jsonl(store, row)
            n += 1
            bar.update(1)
            if on_row:
                on_row(row)
    return n


def _init_worker(threads: int) -> None:
    import signal

    import torch

    prepare_process()  # a spawned worker starts with malloc's defaults
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # between calls; see _interruptible
    if hasattr(signal, "pthread_sigmask"):  # blocked since its spawn; see _submit
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one is dropped
    torch.set_num_threads(threads)


def _submit(pool, futures: list[Future], fn: Callable, *args) -> Future:
    """``pool.submit(fn, *args)``, its future appended to ``futures``, with SIGINT blocked in
    this thread meanwhile, so a worker the pool spawns for it starts with SIGINT blocked until
    :func:`_init_worker` ignores it: a Ctrl-C while the worker still imports would kill it, and
    the pool, seeing a worker die, kills the others at once. A Ctrl-C meanwhile is not lost: it
    raises KeyboardInterrupt here, during the call (another thread of this process took the
    signal) or when the block ends; :func:`_stop_pool` then stops every call the pool holds,
    this one included."""
    with sigint_deferred():
        futures.append(f := pool.submit(fn, *args))
        return f


def _interruptible(fn: Callable, *args):
    """``fn(*args)`` in a pool worker, with SIGINT raising KeyboardInterrupt (a run writes its
    checkpoint and ends). Between calls the worker ignores SIGINT: an idle worker would die of
    it in its queue read, and the pool, seeing a worker die, kills the others at once, before
    their runs have written their checkpoints."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn(*args)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _bounded(pool, fn: Callable, calls: list[tuple], workers: int, futures: list[Future]) -> Iterator:
    """Yield ``fn(*args)`` for each of ``calls`` as each ends, with at most ``workers`` calls
    handed to ``pool`` at once (each one appended to ``futures``). A process pool moves every
    submitted call it can into its workers' queue, where it can no longer be cancelled: a worker
    whose cell ended on Ctrl-C would take the next one before :func:`_stop_pool` stops it."""
    from concurrent.futures import FIRST_COMPLETED, wait

    todo = iter(calls)
    running: set[Future] = set()
    while True:
        while len(running) < workers and (args := next(todo, None)) is not None:
            running.add(_submit(pool, futures, _interruptible, fn, *args))
        if not running:
            return
        ended, running = wait(running, return_when=FIRST_COMPLETED)
        for f in sorted(ended, key=lambda f: f.exception() is not None):  # rows before a raise
            yield f.result()


def run_pool(
    cells: list[Cell],
    store: Path,
    progress: bool,
    workers: int,
    threads: int | None = None,
    on_row: Callable[[dict], None] | None = None,
    grace: float = 10.0,
    cell_fn: Callable[[Cell, bool], dict] = run_one,
) -> int:
    """Run ``cells`` (``cell_fn``, by default :func:`run_one`) in ``workers`` spawned processes
    of ``threads`` torch threads each; on Ctrl-C see :func:`_stop_pool` (``grace`` seconds for
    running cells to end)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    threads = threads or max(1, torch.get_num_threads() // workers)
    spawn = mp.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_worker, initargs=(threads,))
    futures: list[Future] = []
    try:
        # experts first, one task per distinct buffer, so cells never train the same experts twice
        for _ in _bounded(pool, _prepare_experts, _distinct_experts(cells), workers, futures):
            pass
        rows = _bounded(pool, cell_fn, [(c, False) for c in cells], workers, futures)
        return _store_rows(rows, len(cells), store, f"bench ({workers} workers)", progress, on_row)
    except KeyboardInterrupt:
        _stop_pool(pool, futures, grace)
        raise
    finally:
        pool.shutdown(cancel_futures=True)


def _stop_pool(pool, futures: list[Future], grace: float) -> None:
    """Ctrl-C: no further cell starts (:func:`_bounded` hands the pool no more calls than it has
    workers); running cells get ``grace`` seconds to end (a worker that got the same SIGINT
    writes its checkpoint and ends at once), then their processes are stopped — a resume
    continues from each run's last checkpoint. Without this the pool would wait for its
    running cells, hours for a matching cell."""
    from concurrent.futures import wait

    pending = getattr(pool, "_pending_work_items", None) or {}  # with one whose submit was interrupted
    futures = list(dict.fromkeys([*futures, *(w.future for w in list(pending.values()))]))
    for f in futures:
        f.cancel()
    wait([f for f in futures if f.running()], timeout=grace)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()


def run_ray(
    cells: list[Cell],
    store: Path,
    progress: bool,
    address: str | None = None,
    on_row: Callable[[dict], None] | None = None,
    grace: float = 10.0,
    cell_fn: Callable[[Cell, bool], dict] = run_one,
) -> int:
    """Run ``cells`` (``cell_fn``, by default :func:`run_one`) as Ray tasks of the driver's torch
    thread count each, on the cluster at ``address``, the one this process already joined, or a
    local one started and stopped here; on Ctrl-C see :func:`_stop_ray`."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray executor needs ray: pip install 'meddistill[ray]'") from None
    import torch

    started = not ray.is_initialized()  # a local cluster this call starts, it stops
    _join_ray(ray, address)
    threads = torch.get_num_threads()
    refs: list = []  # every task sent, as it is sent, for _stop_ray
    try:
        # experts first, one task per distinct buffer, so cells never train the same experts twice
        prepare = ray.remote(num_cpus=threads)(_with_threads(_prepare_experts, threads))
        for c, n in _distinct_experts(cells):
            refs.append(prepare.remote(c, n))
        ray.get(refs)
        remote = ray.remote(num_cpus=threads)(_with_threads(cell_fn, threads))
        cell_refs: list = []
        for c in cells:
            cell_refs.append(ref := remote.remote(c, False))
            refs.append(ref)
        return _store_rows(_ray_rows(ray, cell_refs), len(cells), store, "bench (ray)", progress, on_row)
    except KeyboardInterrupt:
        _stop_ray(ray, refs, grace)
        raise
    finally:
        if started:
            ray.shutdown()


def _join_ray(ray, address: str | None, timeout: float = 5.0) -> None:
    """``ray.init`` on ``address`` (None: this process's cluster or a new local one), or a one-line
    error: Ray itself retries an address where nothing listens for minutes."""
    where = address or ""
    host, _, port = where.rpartition(":")
    if host and port.isdigit() and "://" not in where:
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            raise ConfigError(f"no Ray cluster answers at {where} ({exc.strerror or exc}); check --address") from None
    try:
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {where}: {' '.join(str(exc).split())}") from None


def _ray_rows(ray, refs: list) -> Iterator[dict]:
    remaining = refs
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        yield from ray.get(ready)


def _stop_ray(ray, refs: list, grace: float, tries: int = 5) -> None:
    """Ctrl-C: queued tasks are cancelled; running ones get a KeyboardInterrupt (a run writes its
    checkpoint and ends) and ``grace`` seconds to end (a second Ctrl-C cuts it short), then their
    workers are stopped. A terminal's Ctrl-C does not reach the tasks: each Ray worker runs in its
    own process group."""
    for ref in reversed(refs):  # queued ones first: a cell that ends frees a worker for the next
        ray.cancel(ref, force=False)
    try:
        ray.wait(refs, num_returns=len(refs), timeout=grace)
    except KeyboardInterrupt:
        pass
    for _ in range(tries):  # Ray drops a forced cancel while the first is still being delivered
        _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not running:
            return
        for ref in running:
            ray.cancel(ref, force=True)
        ray.wait(running, num_returns=len(running), timeout=1.0)


def _in_process(cells: list[Cell]) -> list[Cell]:
    """The cells with ``workers = 1``: a cell that already runs in a pool or Ray worker trains
    its experts and evaluation nets in that worker's process."""
    return [dataclasses.replace(c, cfg=dataclasses.replace(c.cfg, workers=1)) for c in cells]


def run_grid(
    grid: Grid,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    limit: int | None = None,
    workers: int = 1,
    threads: int | None = None,
    **extra,
) -> tuple[int, int]:
    """Run the missing cells of ``grid``; returns (cells run now, cells already done).

    The store is locked for the whole run: a second identical command waits, then finds every
    cell done, so no row is computed or written twice."""
    store = Path(grid.store)
    cells = expand(grid, **extra)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative number of cells, got {limit!r}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r}; use local or ray")
    with store_lock(store):
        done = done_keys(store)
        todo = [c for c in cells if c.key not in done]
        if limit is not None:
            todo = todo[:limit]
        if executor == "ray":
            ran = run_ray(_in_process(todo), store, progress, address)
        elif workers > 1:
            ran = run_pool(_in_process(todo), store, progress, workers, threads)
        else:
            ran = run_local(todo, store, progress)
    return ran, len(cells) - len([c for c in cells if c.key not in done])
