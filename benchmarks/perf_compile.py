"""Would ``torch.compile`` make the trajectory-matching iteration faster on this CPU?

The unrolled step needs a gradient of a gradient (``create_graph=True``), which compiled
autograd does not take; written with ``torch.func.grad`` instead, one student step is a plain
function whose own backward *is* the double backward, so ``torch.compile`` (inductor, C++ on
CPU) can fuse it. This script times, for the CPU-profile ConvNet-D3 on real BreastMNIST
images with DSA, the same matching loss + gradient w.r.t. (images, lr) three ways:

- ``eager``: the project's unrolled ``TrajectoryMatching.matching_loss``;
- ``func``: the same unroll with ``torch.func.grad`` steps, not compiled;
- ``compiled``: those steps through ``torch.compile(dynamic=False)``;

and prints the median time per iteration, the one-off compile time, and the relative
difference of the loss, the image gradient and the lr gradient against ``eager``.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_compile.py [--experts-dir experts]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import grad

from meddistill.augment import dsa
from meddistill.config import build_config
from meddistill.distill import DistillContext
from meddistill.distill.methods_tm import build_engine
from meddistill.distill.tm import normalised_distance
from meddistill.nets import call_flat
from meddistill.pipeline import load_data


def engine(dataset: str, experts: str, ipc: int, steps: int):
    cfg = build_config(
        "cpu",
        dataset=dataset,
        experts_dir=experts,
        device="cpu",
        **{"distill.method": "mtt", "distill.ipc": ipc, "method.syn_steps": steps, "experts.bf16": False},
    )
    ctx = DistillContext(load_data(cfg), cfg, torch.device("cpu"), Path("/tmp/perf_compile_run"), False)
    tm = build_engine(ctx)
    return tm, tm.init_state(), cfg.distill.active.expert_epochs


def func_loss(tm, st, span: int, seeds: list[int], step) -> torch.Tensor:
    """The matching loss of ``tm.matching_loss`` with a functional student step."""
    start, target = tm._endpoints(0, 2, span)
    theta = start.clone()
    for seed in seeds:
        theta = step(theta, dsa(st.images, seed, tm.dsa_cfg), st.labels, st.lr)
    return normalised_distance(theta, start, target)


def measure(fn, reps: int) -> tuple[float, float, tuple[torch.Tensor, ...]]:
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return first, sorted(times)[len(times) // 2], out


def one_case(dataset: str, experts: str, ipc: int, steps: int, reps: int) -> str:
    tm, st, span = engine(dataset, experts, ipc, steps)
    seeds = list(range(1000, 1000 + steps))

    def ce(theta, x, y):
        return F.cross_entropy(call_flat(tm.net, tm.spec, theta, x), y)

    def step(theta, x, y, lr):
        return theta - lr * grad(ce)(theta, x, y)

    def run(loss_fn):
        def go():
            loss = loss_fn()
            return (loss.detach(), *torch.autograd.grad(loss, [st.images, st.lr]))

        return go

    compiled = torch.compile(step, dynamic=False)
    _, t_eager, ref = measure(run(lambda: tm.matching_loss(st, 0, 2, span, seeds, None)), reps)
    _, t_func, fout = measure(run(lambda: func_loss(tm, st, span, seeds, step)), reps)
    t_first, t_comp, out = measure(run(lambda: func_loss(tm, st, span, seeds, compiled)), reps)
    torch._dynamo.reset()
    return (
        f"| {ipc} | {steps} | {1e3 * t_eager:.1f} | {1e3 * t_func:.1f} | {1e3 * t_comp:.1f} | "
        f"{t_first - t_comp:.1f} | {t_eager / t_comp:.2f}x | {rel_diff(ref, fout)} | {rel_diff(ref, out)} |"
    )


def rel_diff(ref: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...]) -> str:
    """Relative difference of (loss, image gradient, lr gradient) against the eager ones."""
    return ", ".join(f"{float((a - b).norm() / a.norm().clamp_min(1e-30)):.0e}" for a, b in zip(ref, out, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--cases", default="1x10,10x10,10x40,50x10", help="ipc x syn_steps, comma-separated")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cols = ["ipc", "syn_steps", "eager ms/it", "func ms/it", "compiled ms/it", "compile s", "speed-up"]
    cols += ["func diff", "compiled diff"]
    print("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for case in args.cases.split(","):
        ipc, steps = (int(v) for v in case.split("x"))
        print(one_case(args.dataset, args.experts_dir, ipc, steps, args.reps), flush=True)


if __name__ == "__main__":
    main()
