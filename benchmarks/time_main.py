"""Where the main command's time goes, and what a change does to it, side by side in one run.

The README's main job is ``meddistill run pneumoniamnist --ipc 10`` (cpu profile, PTM). This
script runs that job once per variant, each in a fresh process with empty experts/runs
folders (a new user's first run), and times its stages with the functions the CLI calls:
process start + imports, data, experts, distillation, evaluation. Variants are lists of
``--set`` overrides; the default pair is ``workers=1`` (everything in one process, as before
the worker processes, all expert epochs trained) against the default (``workers=0``: one
process per core for experts; experts trained as far as the method reads them). Writes
``time_main.json`` and ``time_main.md`` to ``--out``.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/time_main.py --out results/time_main
    python benchmarks/time_main.py --variant one+full=workers=1 --variant auto= --dataset breastmnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("start", "data", "experts", "distill", "eval")


def run_variant(profile: str, dataset: str, ipc: int, overrides: list[str], work: Path, full_experts: bool) -> dict:
    """Child process: the main job with stage times (seconds) and its evaluated accuracy."""
    t0 = time.perf_counter()
    from meddistill.build import build_config
    from meddistill.distill.base import get_spec
    from meddistill.distill.methods_tm import VARIANTS, expert_epochs_read
    from meddistill.experts import train_experts
    from meddistill.pipeline import distill_set, evaluate_run, load_data
    from meddistill.utils import machine_info, resolve_device

    times = {"start": time.perf_counter() - t0}
    flags = {"dataset": dataset, "distill.ipc": ipc, "out_dir": str(work / "runs")}
    flags["experts_dir"] = str(work / "experts")
    cfg = build_config(profile, None, overrides, **flags)
    device = resolve_device(cfg.device)

    def stage(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        return out

    ds = stage("data", lambda: load_data(cfg, progress=False))
    if get_spec(cfg.distill.method).needs_experts:  # as far as the method reads them, or all epochs
        until = None if full_experts or cfg.distill.method not in VARIANTS else expert_epochs_read(cfg)
        stage("experts", lambda: train_experts(ds, cfg, device, progress=False, epochs=until))
    run_dir, syn = stage("distill", lambda: distill_set(cfg, ds, progress=False))
    _, row = stage("eval", lambda: evaluate_run(cfg, run_dir, syn, ds, progress=False))
    return {
        "times": times,
        "total": sum(times.values()),
        "acc_mean": row["acc_mean"],
        "acc_std": row["acc_std"],
        "auc_mean": row["auc_mean"],
        "machine": machine_info(device),
        "bf16_experts": cfg.experts.bf16,
        "workers": cfg.workers,
        "full_experts": full_experts,
    }


def measure(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"time_main_{name}_") as tmp:
        cmd = [sys.executable, __file__, "--child", tmp, "--profile", args.profile, "--dataset", args.dataset]
        cmd += ["--ipc", str(args.ipc)]
        cmd += [a for o in overrides for a in ("--set", o)]
        cmd += ["--full-experts"] if name.endswith("+full") else []
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - t
        if out.returncode:
            raise SystemExit(f"variant {name} failed:\n{out.stderr[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = wall
    res["name"], res["overrides"] = name, overrides
    return res


def markdown(results: list[dict]) -> str:
    head = "| variant | overrides | " + " | ".join(STAGES) + " | wall (s) | test ACC (3 nets) | speed-up |"
    lines = [head, "|" + "---|" * (len(STAGES) + 5)]
    base = results[0]["wall"]
    for r in results:
        cells = [f"{r['times'].get(s, 0.0):.1f}" for s in STAGES]
        acc = f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}"
        ov = " ".join(r["overrides"]) or "(defaults)"
        tail = f" | {r['wall']:.1f} | {acc} | {base / r['wall']:.2f}× |"
        lines.append(f"| {r['name']} | `{ov}` | " + " | ".join(cells) + tail)
    return "\n".join(lines) + "\n"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=key=value,key=value``; a NAME ending in ``+full`` trains every expert epoch (the
    behaviour before experts were trained on demand) instead of those the method reads."""
    name, _, rest = text.partition("=")
    return name, [o for o in rest.split(",") if o]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument(
        "--variant",
        action="append",
        help="NAME[+full]=key=value,... (repeatable; the first is the reference); default: one+full=workers=1, auto=",
    )
    ap.add_argument("--out", default="results/time_main")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--full-experts", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = run_variant(args.profile, args.dataset, args.ipc, args.set, Path(args.child), args.full_experts)
        print(json.dumps(res))
        return
    variants = [parse_variant(v) for v in (args.variant or ["one+full=workers=1", "auto="])]
    results = [measure(name, ov, args) for name, ov in variants]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_main.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "time_main.md").write_text(table)
    m = results[0]["machine"]
    cpu = f"{m['cpu']} ({m['cpu_capability']}, bf16 native: {m['bf16_native']})"
    print(f"{args.dataset} ipc {args.ipc}, {args.profile} profile; {cpu}, {m['threads']} torch threads")
    print(table)


if __name__ == "__main__":
    main()
