"""Expert-training throughput on this machine: fp32 vs bf16 autocast, vs the matmul peak.

Prints one table from one run (ratios within the run are what matter; absolute numbers
depend on the machine and on what else runs).  Also checks that bf16 keeps accuracy: the
full-train-split evaluation of BreastMNIST with and without bf16, 3 seeds each.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_experts.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from meddistill.nets import NetSpec, create_model


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def train_step_flops(net, x, y) -> int:
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def throughput(width: int, bf16: bool, batch: int = 256, steps: int = 15, shape=(1, 28, 28)) -> tuple[float, float]:
    torch.manual_seed(0)
    net = create_model(NetSpec(width=width), shape, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch, *shape), torch.randint(0, 2, (batch,))
    flops = train_step_flops(net, x, y)
    for i in range(steps + 3):
        if i == 3:
            t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dt = (time.perf_counter() - t) / steps
    return batch / dt, flops / dt


def several_at_once(k: int, width: int, batch: int = 64, steps: int = 15, shape=(1, 28, 28)) -> tuple[float, float]:
    """img/s of k experts trained one after another vs stacked with ``torch.func.vmap``
    (the expert protocol's batch of 64; every expert sees its own batch)."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    nets = [create_model(NetSpec(width=width), shape, 2) for _ in range(k)]
    x, y = torch.randn(k, batch, *shape), torch.randint(0, 2, (k, batch))
    opts = [torch.optim.SGD(n.parameters(), lr=0.01) for n in nets]
    params, _ = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    fwd = vmap(lambda p, xb: functional_call(base, p, (xb,)))
    vopt = torch.optim.SGD(params.values(), lr=0.01)

    def seq() -> None:
        for j, (n, o) in enumerate(zip(nets, opts, strict=True)):
            loss = F.cross_entropy(n(x[j]), y[j])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    def stacked() -> None:
        out = fwd(params, x)
        loss = sum(F.cross_entropy(out[j], y[j]) for j in range(k))
        vopt.zero_grad(set_to_none=True)
        loss.backward()
        vopt.step()

    rates = []
    for fn in (seq, stacked):
        for _ in range(3):
            fn()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(k * batch * steps / (time.perf_counter() - t))
    return rates[0], rates[1]


def accuracy_check(seeds: int = 3) -> None:
    from meddistill.build import build_config
    from meddistill.evaluate import evaluate_full
    from meddistill.pipeline import load_data

    for bf16 in (False, True):
        cfg = build_config(
            "cpu", dataset="breastmnist", overrides=[f"eval.bf16={str(bf16).lower()}", f"eval.num_nets={seeds}"]
        )
        ds = load_data(cfg)
        t = time.perf_counter()
        s = evaluate_full(ds, cfg, torch.device("cpu"), progress=False).stats()
        print(
            f"breastmnist full-split eval bf16={bf16}: ACC {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} "
            f"AUC {100 * s['auc_mean']:.2f} ± {100 * s['auc_std']:.2f} (n={s['n']}, {time.perf_counter() - t:.0f}s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the accuracy check")
    args = ap.parse_args()
    from meddistill.utils import bf16_native

    native = bf16_native(torch.device("cpu"))
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cap}, native bf16: {native}")
    # emulated bf16 (no AMX / AVX512-BF16) is very slow: fewer repetitions there
    p32, p16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16, *((2048, 10) if native else (512, 2)))
    print(f"matmul peak: fp32 {p32 / 1e12:.3f} TFLOP/s, bf16 {p16 / 1e12:.3f} TFLOP/s")
    print(
        "| width | fp32 img/s | fp32 TFLOP/s (% of fp32 peak) | bf16 img/s | bf16 TFLOP/s (% of bf16 peak) | speed-up |"
    )
    print("|---|---|---|---|---|---|")
    for w in (32, 64, 128):
        i32, f32 = throughput(w, False)
        i16, f16 = throughput(w, True, steps=15 if native else 3)
        pct16 = f"{100 * f16 / p16:.0f}%" if native else "emulated"
        print(
            f"| {w} | {i32:.0f} | {f32 / 1e12:.3f} ({100 * f32 / p32:.0f}%) | {i16:.0f} | "
            f"{f16 / 1e12:.3f} ({pct16}) | {i16 / i32:.2f}x |"
        )
    print("\nSeveral experts at once (fp32, batch 64 each):")
    print("| experts | width | one after another img/s | vmap-stacked img/s | speed-up |")
    print("|---|---|---|---|---|")
    for k, w in ((4, 32), (4, 64)):
        a, b = several_at_once(k, w)
        print(f"| {k} | {w} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")
    if not args.quick:
        accuracy_check()


if __name__ == "__main__":
    main()
