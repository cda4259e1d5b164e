"""Distillation iteration time and peak memory vs syn_steps and ipc (trajectory matching).

Each configuration runs in a fresh subprocess so its peak RSS is its own.  Prints a
Markdown table.

    python benchmarks/perf_distill.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch, torch.nn.functional as F
from meddistill.augment import DSAConfig, dsa
from meddistill.nets import FlatParams, NetSpec, call_flat, create_model, flatten_params
width, n, steps, bf16 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
net = create_model(NetSpec(width=width), (1, 28, 28), 2)
spec, start = FlatParams.of(net), flatten_params(net)
imgs = torch.randn(n, 1, 28, 28, requires_grad=True)
y = torch.arange(n) % 2
lr = torch.tensor(0.01, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for rep in range(4):
    t = time.perf_counter()
    theta = start.clone().requires_grad_(True)
    for s in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = call_flat(net, spec, theta, dsa(imgs, s, DSAConfig()))
        g, = torch.autograd.grad(F.cross_entropy(out.float(), y), theta, create_graph=True)
        theta = theta - lr * g
    loss = ((theta - start - 1e-3) ** 2).sum()
    gi, gl = torch.autograd.grad(loss, [imgs, lr])
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s_per_it": min(times[1:]), "peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024,
                  "grad_norm": float(gi.norm())}))
"""


def run(width: int, n: int, steps: int, bf16: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(width), str(n), str(steps), "1" if bf16 else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(
        "| width | images (ipc × classes) | syn_steps | fp32 s/it | fp32 peak MB | bf16 s/it "
        "| bf16/fp32 grad-norm ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for width, n, steps in [(32, 2, 10), (32, 20, 10), (32, 20, 20), (32, 20, 40), (32, 100, 10), (64, 20, 10)]:
        a = run(width, n, steps, False)
        b = run(width, n, steps, True)
        print(
            f"| {width} | {n} | {steps} | {a['s_per_it']:.3f} | {a['delta_mb']:.0f} | {b['s_per_it']:.3f} | "
            f"{b['grad_norm'] / a['grad_norm']:.3f} |"
        )


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"({time.time() - t:.0f}s, maxrss of parent {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")
