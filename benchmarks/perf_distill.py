"""Distillation iteration time and peak memory vs syn_steps and ipc: a straightforward
unrolled implementation (MTT's reference code, ported), the project's unrolled step (with 2
and with 1 torch thread), the memory-saving (step-by-step recomputation) mode, and the
unrolled step under bf16 autocast (with its gradient error against fp32; only where the CPU
computes bf16 natively — elsewhere it is emulated and several times slower).

Each configuration runs in a fresh subprocess, so its peak RSS is its own. Experts come from
the CPU profile's fp32 cache (trained on first use). Prints a Markdown table, then where the
time of one fp32 iteration goes (per aten op class, timed at the dispatcher).

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_distill.py [--experts-dir experts]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

CHILD = r"""
import copy, json, math, resource, sys, time, torch
import torch.nn.functional as F
from meddistill.augment import dsa
from pathlib import Path
from meddistill.build import build_config
from meddistill.distill import DistillContext
from meddistill.distill.methods_tm import build_engine
from meddistill.pipeline import load_data
dataset, experts = sys.argv[1], sys.argv[5]
ipc, steps, mode, reps = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[6])
if mode == "one_thread":
    torch.set_num_threads(1)
mem, bf16 = mode == "memory_saving", mode == "bf16"
cfg = build_config("cpu", dataset=dataset, experts_dir=experts,
                   **{"distill.method": "mtt", "distill.ipc": ipc, "method.syn_steps": steps,
                      "method.memory_saving": mem, "device": "cpu",
                      "experts.bf16": False})
ds = load_data(cfg)
ctx = DistillContext(ds, cfg, torch.device("cpu"), Path("/tmp/perf_distill_run"), False)
tm = build_engine(ctx)
st = tm.init_state()
amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
err = None
if bf16:  # gradient error of the bf16 unroll against fp32 on one fixed segment
    seeds = list(range(steps))
    def grads(on):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            loss = tm.matching_loss(st, 0, 2, cfg.distill.active.expert_epochs, seeds, None)
        return torch.autograd.grad(loss.float(), [st.images, st.lr])
    g32, g16 = grads(False), grads(True)
    err = [float((a - b).norm() / a.norm()) for a, b in zip(g32, g16)]
if mode == "reference":
    # MTT's reference loop (distill.py + ReparamModule), ported: the parameters become plain
    # module attributes that are re-set from one flat vector on every call, the trajectory is a
    # list of per-epoch lists of tensors concatenated every iteration, every student vector is
    # kept in a list, the loss is mse(sum)/numel over mse(sum)/numel and .backward() fills the
    # leaves' .grad (the start vector's too). Same DSA as ours, so the gradients must agree.
    net = copy.deepcopy(tm.net)
    slots = [(m, n, m._parameters[n].shape) for m in net.modules() for n in list(m._parameters)]
    for m, n, _ in slots:
        del m._parameters[n]
    numels = [math.prod(s) for _, _, s in slots]
    def reparam(x, flat):
        for (m, n, shape), p in zip(slots, flat.split(numels)):
            setattr(m, n, p.view(shape))
        return net(x)
    traj = [[p.clone() for p in epoch.split(numels)] for epoch in tm.buffer.get(0)]
    def ref_grads(t, seeds):
        start = torch.cat([p.reshape(-1) for p in traj[t]])
        target = torch.cat([p.reshape(-1) for p in traj[t + cfg.distill.active.expert_epochs]])
        student = [start.clone().requires_grad_(True)]
        for seed in seeds:
            x = dsa(st.images, seed, tm.dsa_cfg)
            ce = F.cross_entropy(reparam(x, student[-1]), st.labels)
            g = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
            student.append(student[-1] - st.lr * g)
        n = start.numel()
        loss = F.mse_loss(student[-1], target, reduction="sum") / n / (F.mse_loss(start, target, reduction="sum") / n)
        st.images.grad = st.lr.grad = None
        loss.backward()
        return [st.images.grad.clone(), st.lr.grad.clone()]
    def our_grads(t, seeds):
        loss = tm.matching_loss(st, 0, t, cfg.distill.active.expert_epochs, seeds, None)
        return list(torch.autograd.grad(loss, [st.images, st.lr]))
    gen = torch.Generator().manual_seed(0)
    times = {"ref": [], "ours": []}
    for r in range(reps + 1):
        t = int(torch.randint(cfg.distill.active.max_start_epoch, (1,), generator=gen))
        seeds = torch.randint(2**62, (steps,), generator=gen).tolist()
        for name, fn in (("ref", ref_grads), ("ours", our_grads)):
            t0 = time.perf_counter()
            g = fn(t, seeds)
            if r:
                times[name].append(time.perf_counter() - t0)
            if name == "ref":
                g_ref = g
        err = [float((a - b).norm() / a.norm()) for a, b in zip(g_ref, g)]
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(json.dumps({"ref": med["ref"], "ours": med["ours"], "err": err}))
    sys.exit(0)
with amp():
    tm.step(st)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(reps):
    t = time.perf_counter()
    with amp():
        tm.step(st)
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
med = sorted(times)[len(times) // 2]
print(json.dumps({"s_per_it": med, "delta_mb": (peak - base) / 1024, "peak_mb": peak / 1024, "err": err}))
"""

PROFILE = r"""
import collections, sys, time, torch
from pathlib import Path
from torch.utils._python_dispatch import TorchDispatchMode
from meddistill.build import build_config
from meddistill.distill import DistillContext
from meddistill.distill.methods_tm import build_engine
from meddistill.pipeline import load_data
cfg = build_config("cpu", dataset=sys.argv[1], experts_dir=sys.argv[2],
                   **{"distill.method": "mtt", "distill.ipc": 10, "device": "cpu", "experts.bf16": False})
ds = load_data(cfg)
tm = build_engine(DistillContext(ds, cfg, torch.device("cpu"), Path("/tmp/perf_distill_run"), False))
st = tm.init_state()
tm.step(st)
acc = collections.Counter()
class Timer(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket).split(".")[-1]
        kind = "convolution (fwd, bwd, double bwd)" if "convolution" in name else (
            "group norm (fwd, bwd)" if "group_norm" in name else (
            "pooling (fwd, bwd)" if "pool" in name else "elementwise / reductions / copies"))
        acc[kind] += time.perf_counter() - t
        return out
with Timer():
    for _ in range(3):
        tm.step(st)
tot = sum(acc.values())
for k, v in acc.most_common():
    print(f"| {k} | {1000 * v / 3:.1f} | {100 * v / tot:.0f}% |")
"""


def run(dataset: str, ipc: int, steps: int, mode: str, experts: str, reps: int) -> dict:
    args = [sys.executable, "-c", CHILD, dataset, str(ipc), str(steps), mode, experts, str(reps)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from meddistill.utils import bf16_native

    native = bf16_native(torch.device("cpu"))
    print(f"dataset {args.dataset}, CPU profile net; median of {args.reps} iterations after one warm-up")
    cap, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    print(f"CPU: {cap}, native bf16: {native}, torch threads {threads}")
    print(
        "| ipc | syn_steps | reference (MTT port) s/it | ours s/it | speed-up | grad rel. diff (images, lr) "
        "| ours, 1 thread s/it | unrolled peak RSS MB | memory-saving s/it | memory-saving peak RSS MB "
        "| bf16 s/it | bf16 grad rel. error (images, lr) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ipc, steps in [(1, 10), (10, 10), (10, 20), (10, 40), (10, 80), (50, 20)]:
        r = run(args.dataset, ipc, steps, "reference", args.experts_dir, args.reps)
        a = run(args.dataset, ipc, steps, "unrolled", args.experts_dir, args.reps)
        o = run(args.dataset, ipc, steps, "one_thread", args.experts_dir, args.reps)
        b = run(args.dataset, ipc, steps, "memory_saving", args.experts_dir, args.reps)
        bf = "n/a (emulated) | n/a"
        if native:
            c = run(args.dataset, ipc, steps, "bf16", args.experts_dir, args.reps)
            bf = f"{c['s_per_it']:.3f} | {c['err'][0]:.1e}, {c['err'][1]:.1e}"
        print(
            f"| {ipc} | {steps} | {r['ref']:.3f} | {r['ours']:.3f} | {r['ref'] / r['ours']:.2f}x "
            f"| {r['err'][0]:.0e}, {r['err'][1]:.0e} | {o['s_per_it']:.3f} | {a['peak_mb']:.0f} "
            f"| {b['s_per_it']:.3f} | {b['peak_mb']:.0f} | {bf} |",
            flush=True,
        )
    print("\nwhere one fp32 iteration's time goes (ipc 10, syn_steps 10; op time at the dispatcher):")
    print("| op class | ms per iteration | share |")
    print("|---|---|---|")
    out = subprocess.run(
        [sys.executable, "-c", PROFILE, args.dataset, args.experts_dir], capture_output=True, text=True
    )
    print(out.stdout.strip() or out.stderr[-2000:])


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"({time.time() - t:.0f}s)")
