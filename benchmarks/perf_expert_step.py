"""Where an expert epoch's time goes, and what channels-last or torch.compile do to a train step.

1. ``--split``: one PneumoniaMNIST epoch of the cpu profile's expert training (batch 64, DSA,
   the profile's bf16 setting), timed per part: minibatch indexing, DSA, forward+backward, SGD
   step (the second of two epochs; ``--threads``).
2. ``--step MODE``: 74 train steps (one PneumoniaMNIST epoch at batch 64) of ConvNet-D3 width 32
   on random 28×28 inputs, one thread, after 3 warm-up steps (whose time includes compilation):
   ``fp32``, ``bf16`` (autocast), ``*_cl`` (channels-last), ``*_compile`` (``torch.compile`` of
   the whole step).

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_expert_step.py --split --threads 2
    python benchmarks/perf_expert_step.py --step bf16_compile
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

MODES = ("fp32", "bf16", "fp32_cl", "bf16_cl", "fp32_compile", "bf16_compile")


def split(threads: int) -> dict[str, float]:
    from meddistill.augment import dsa
    from meddistill.config import build_config
    from meddistill.experts import expert_plan
    from meddistill.nets import create_model
    from meddistill.pipeline import load_data
    from meddistill.utils import autocast, derive_seed

    torch.set_num_threads(threads)
    cfg = build_config("cpu", dataset="pneumoniamnist")
    ds = load_data(cfg, progress=False)
    plan = expert_plan(ds, cfg, (0, "order", 0), (0, "dsa", 0))
    net = create_model(cfg.net, ds.shape, ds.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=plan.lr)
    x, y, dev = ds.train.images, ds.train.labels, torch.device("cpu")
    times = dict.fromkeys(("index", "dsa", "forward+backward", "sgd step"), 0.0)
    for epoch in range(2):
        perm = torch.randperm(len(x))
        for b, i in enumerate(range(0, len(x), plan.batch_size)):
            t0 = time.perf_counter()
            idx = perm[i : i + plan.batch_size]
            xb, yb = x[idx], y[idx]
            t1 = time.perf_counter()
            xb = dsa(xb, derive_seed(0, epoch, b), plan.dsa)
            t2 = time.perf_counter()
            with autocast(dev, plan.bf16):
                loss = F.cross_entropy(net(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if epoch == 1:
                for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[key] += dt
    return {"bf16": plan.bf16, **times}


def step_time(mode: str) -> tuple[float, float]:
    """(warm-up s, s for 74 steps) of one train step in ``mode`` on one thread."""
    from meddistill.nets import NetSpec, create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = create_model(NetSpec(width=32), (1, 28, 28), 2)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 2, (64,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    bf16 = mode.startswith("bf16")
    if "_cl" in mode:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fn = torch.compile(step) if mode.endswith("compile") else step
    t = time.perf_counter()
    for _ in range(3):
        fn(x, y)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(74):
        fn(x, y)
    return warm, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", action="store_true", help="time the parts of one expert epoch")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--step", choices=MODES, help="time one train-step variant (run each in its own process)")
    args = ap.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if args.split:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in split(args.threads).items()})
    if args.step:
        warm, run = step_time(args.step)
        print(f"{args.step}: warm-up {warm:.2f} s, 74 steps {run:.3f} s")


if __name__ == "__main__":
    main()
