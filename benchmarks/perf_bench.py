"""Benchmark-grid throughput: one cell at a time in this process vs ``--workers`` processes.

Runs the same small real grid (CPU profile, BreastMNIST, MTT and PTM at ipc 1 and 10, one
seed, ConvNet evaluation) twice into fresh stores and run folders — once with the local
executor in one process (all torch threads), once with a pool of worker processes of
``--threads`` threads each — and prints the wall times, their ratio, and how far the rows'
accuracies differ (a different thread count changes float reduction order). The experts are
trained (or found in ``--experts-dir``) before either timing starts.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_bench.py --experts-dir experts
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from meddistill.bench import load_grid, run_grid
from meddistill.bench.executors import _distinct_experts, _prepare_experts
from meddistill.bench.grid import expand
from meddistill.utils import read_jsonl

GRID = """profile: cpu
datasets: [{dataset}]
ipc: [1, 10]
methods: [mtt, ptm]
seeds: [0]
eval_nets: [convnet]
full: false
store: {store}
out_dir: {out}
experts_dir: {experts}
"""


def timed(folder: Path, experts: str, dataset: str, workers: int, threads: int | None) -> tuple[float, dict]:
    path = folder / "grid.yaml"
    path.write_text(GRID.format(dataset=dataset, store=folder / "store.jsonl", out=folder / "runs", experts=experts))
    grid = load_grid(path)
    for cell, epochs in _distinct_experts(expand(grid)):
        _prepare_experts(cell, epochs)  # experts are shared: never part of the timing
    t = time.perf_counter()
    run_grid(grid, progress=False, workers=workers, threads=threads)
    dt = time.perf_counter() - t
    return dt, {r["cell_key"]: r for r in read_jsonl(grid.store)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "one"), Path(tmp, "pool")
        a.mkdir()
        b.mkdir()
        t1, rows1 = timed(a, args.experts_dir, args.dataset, 1, None)
        t2, rows2 = timed(b, args.experts_dir, args.dataset, args.workers, args.threads)
    diff = max(abs(rows1[k]["acc_mean"] - rows2[k]["acc_mean"]) for k in rows1)
    print(f"{args.dataset}: {len(rows1)} cells (mtt, ptm × ipc 1, 10; seed 0; ConvNet evaluation)")
    print("| executor | wall s | speed-up |")
    print("|---|---|---|")
    print(f"| one process, {torch.get_num_threads()} threads | {t1:.0f} | 1.00x |")
    print(f"| {args.workers} workers × {args.threads} thread(s) | {t2:.0f} | {t1 / t2:.2f}x |")
    print(f"max |ΔACC| between the two stores: {100 * diff:.2f} points")


if __name__ == "__main__":
    main()
