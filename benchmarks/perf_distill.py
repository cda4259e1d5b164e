"""Distillation iteration time and peak memory vs syn_steps and ipc, for the plain unrolled
trajectory-matching step and the memory-saving (step-by-step recomputation) mode.

Each configuration runs the real ``TrajectoryMatching.step`` in a fresh subprocess, so its
peak RSS is its own. Experts come from the CPU profile's cache (trained on first use).
Prints a Markdown table.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/perf_distill.py [--experts-dir experts]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
from meddistill.config import build_config
from meddistill.distill import DistillContext
from meddistill.distill.schedule import mtt_schedule
from meddistill.distill.tm import TrajectoryMatching
from meddistill.pipeline import load_data
dataset, experts = sys.argv[1], sys.argv[5]
ipc, steps, mem, reps = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[6])
cfg = build_config("cpu", dataset=dataset, experts_dir=experts,
                   **{"distill.ipc": ipc, "distill.syn_steps": steps, "distill.memory_saving": mem, "device": "cpu"})
ds = load_data(cfg)
ctx = DistillContext(ds, cfg, torch.device("cpu"), Path("/tmp/perf_distill_run"), False)
tm = TrajectoryMatching(ctx, mtt_schedule(cfg.distill), use_dom=False, soft_labels=False)
st = tm.init_state()
tm.step(st)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(reps):
    t = time.perf_counter()
    tm.step(st)
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
med = sorted(times)[len(times) // 2]
print(json.dumps({"s_per_it": med, "delta_mb": (peak - base) / 1024, "peak_mb": peak / 1024}))
"""


def run(dataset: str, ipc: int, steps: int, mem: bool, experts: str, reps: int) -> dict:
    args = [sys.executable, "-c", CHILD, dataset, str(ipc), str(steps), "1" if mem else "0", experts, str(reps)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"dataset {args.dataset}, CPU profile net; median of {args.reps} iterations after one warm-up")
    print("| ipc | syn_steps | unrolled s/it | unrolled peak RSS MB | memory-saving s/it | memory-saving peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for ipc, steps in [(1, 10), (10, 10), (10, 20), (10, 40), (10, 80), (50, 20)]:
        a = run(args.dataset, ipc, steps, False, args.experts_dir, args.reps)
        b = run(args.dataset, ipc, steps, True, args.experts_dir, args.reps)
        print(
            f"| {ipc} | {steps} | {a['s_per_it']:.3f} | {a['peak_mb']:.0f} | {b['s_per_it']:.3f} | {b['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"({time.time() - t:.0f}s)")
