"""Evaluation cost: K nets trained one after another vs batched with ``vmap`` (eval.batched).

The CPU-profile protocol (300 epochs, val checks every 50) on ``ipc`` real images per class,
K = 3 nets per architecture. Prints a Markdown table of seconds per evaluation and the ratio,
plus the largest difference in test ACC between the two schedules (float summation order only).

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_eval.py
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from meddistill.config import build_config
from meddistill.evaluate import evaluate_images
from meddistill.pipeline import load_data


def subset(ds, ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    idx = []
    for c in range(ds.num_classes):
        cls = torch.nonzero(ds.train.labels == c).view(-1)
        idx.append(cls[torch.randperm(len(cls), generator=g)[:ipc]])
    idx_t = torch.cat(idx)
    return ds.train.images[idx_t], ds.train.labels[idx_t]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="breastmnist,retinamnist")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--nets", default="convnet,vgg11,resnet18")
    args = ap.parse_args()
    dev = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU profile, 3 nets per architecture")
    print("| dataset | ipc | net | one at a time s | batched (vmap) s | speed-up | max |ΔACC| |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        for ipc in map(int, args.ipc.split(",")):
            for net in args.nets.split(","):
                cfg = build_config("cpu", dataset=name, device="cpu", **{"eval.nets": [net], "eval.num_nets": 3})
                ds = load_data(cfg)
                x, y = subset(ds, ipc)
                out = {}
                for batched in (False, True):
                    c = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batched=batched))
                    t = time.perf_counter()
                    out[batched] = (evaluate_images(x, y, ds, c, dev, progress=False), time.perf_counter() - t)
                (a, ta), (b, tb) = out[False], out[True]
                dacc = max(abs(p.test_acc - q.test_acc) for p, q in zip(a.results, b.results, strict=True))
                row = f"| {name} | {ipc} | {net} | {ta:.1f} | {tb:.1f} | {ta / tb:.2f}x | {100 * dacc:.2f} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
