"""GPU check: one command that tells whether meddistill works and how fast it runs on a CUDA GPU.

    PYTHONPATH=src python tools/gpu_check.py --out DIR [--device auto|cpu|cuda] [--dataset pneumoniamnist]

Needs only torch, numpy, pyyaml, safetensors, tqdm and matplotlib besides meddistill itself
(``tests/test_gpu_check.py`` checks the modules a run loads). The MedMNIST file is read from
``$MEDDISTILL_DATA`` or ``~/.medmnist``, else downloaded from Zenodo (MD5-checked) by
:mod:`meddistill.data`. Everything runs in a temporary folder under DIR that is removed at the
end, so a second run recomputes everything instead of reusing cached experts or sets.

CUDA mode (``--device auto`` on a machine with CUDA, or ``--device cuda``):

- (a) the ``tiny`` profile end to end (experts, PTM distillation at ipc 10, evaluation by 5
  nets) once on the CPU and once on CUDA, same data and seed; test ACC and AUC must agree within
  :data:`TOLERANCE` (below);
- (b) expert training throughput (img/s) of the ``paper`` profile's net, ConvNet-D3 width 128,
  with its expert settings (batch 256, DSA): :func:`meddistill.train.fit` with
  :func:`meddistill.experts.expert_plan`, fp32 and bf16 autocast, timed epochs after a warm-up
  epoch (training only: no val pass, no trajectory files);
- (c) one trajectory-matching iteration (:meth:`TrajectoryMatching.step` of ``mtt``, paper
  net) at ipc 1/10/50 x syn_steps 20/40/80, unrolled and memory-saving: median s/iteration
  over the timed iterations after a warm-up one, and peak memory
  (``torch.cuda.max_memory_allocated`` over the warm-up and timed iterations). The experts it starts from
  are one paper-profile expert trained for 3 epochs (start epochs 0-1, M = 2): an iteration's
  cost does not depend on which epochs it matches;
- (d) ``DIR/gpu_check.json`` and ``DIR/gpu_check.md``.

CPU mode (no CUDA, or ``--device cpu``; what CI runs), at reduced size so that it finishes in
about a minute on one thread: (a) runs twice on the CPU, which is a determinism check rather
than a device comparison (marked so in both outputs; the two sets must also be identical bit
for bit); (b) uses width 32 and 512 images (bf16: 128; emulated and slow on CPUs without AMX or
AVX512-BF16); (c) uses width 16 at ipc 1/10 x syn_steps 10/20, and its peak memory is the rise of
the process's peak RSS over the warm-up and timed iterations (VmHWM, reset through
``/proc/self/clear_refs``, after glibc's ``malloc_trim`` returned freed heap) above the RSS
before them, or "n/a" where ``/proc`` does not offer that.

Tolerance of (a): test ACC and AUC (%, mean over the 5 evaluation nets) may differ by at most
5 points each. Both devices run the same steps from the same seeds (initial weights, minibatch
orders and DSA draws come from CPU generators); they differ only by floating-point rounding
(and cuDNN's TF32 convolutions, on by default), which SGD through experts, distillation and
evaluation can amplify until two runs are as different as two independent draws of the
evaluation. Measured at this size (tiny profile, PneumoniaMNIST, ipc 10; one set evaluated with
12 seeds on the CPU), one net's test ACC has a std of 2.1 points and its AUC 1.7, so the
difference of two independent 5-net means has a std of 1.3 (ACC) and 1.1 (AUC) points: 5 points
is 3.7 and 4.6 of those, rarely exceeded by chance. A broken device path ends near the class
prior (PneumoniaMNIST: ACC 62.5 %, AUC 50 %), over 15 points below the ~81 % ACC and ~89 % AUC
of a working one.

Exit status 0 when (a) passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from meddistill.build import build_config
from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset
from meddistill.distill import DistillContext
from meddistill.distill.methods_tm import build_engine
from meddistill.experts import expert_plan
from meddistill.nets import create_model
from meddistill.pipeline import load_data, run_cell
from meddistill.train import fit, sgd
from meddistill.utils import bf16_native, resolve_device

TOLERANCE = 5.0  # points of test ACC and of test AUC between the two runs of (a); see the module docstring


@dataclass(frozen=True)
class Plan:
    """The sizes of one mode."""

    mode: str  # "cuda" or "cpu"
    dataset: str
    tiny_ipc: int
    tiny_nets: int  # evaluation nets of (a)
    expert_width: int  # (b)
    expert_images: int  # train images per timed epoch; 0: the whole train split
    expert_epochs: int  # timed epochs (after one warm-up epoch)
    bf16_images: int  # 0: as expert_images
    distill_width: int  # (c)
    combos: tuple[tuple[int, int], ...]  # (ipc, syn_steps)
    iterations: int  # timed iterations (after one warm-up iteration)


CUDA_PLAN = Plan(
    mode="cuda",
    dataset="pneumoniamnist",
    tiny_ipc=10,
    tiny_nets=5,
    expert_width=128,
    expert_images=0,
    expert_epochs=5,
    bf16_images=0,
    distill_width=128,
    combos=tuple((ipc, steps) for ipc in (1, 10, 50) for steps in (20, 40, 80)),
    iterations=3,
)
CPU_PLAN = Plan(
    mode="cpu",
    dataset="pneumoniamnist",
    tiny_ipc=10,
    tiny_nets=5,
    expert_width=32,
    expert_images=512,
    expert_epochs=1,
    bf16_images=128,
    distill_width=16,
    combos=((1, 10), (1, 20), (10, 10), (10, 20)),
    iterations=2,
)

MEMORY_KIND = {
    "cuda": "torch.cuda.max_memory_allocated over the warm-up and timed iterations",
    "cpu": "rise of the process's peak RSS over the warm-up and timed iterations above the RSS before them "
    "(freed heap returned first with glibc's malloc_trim; VmHWM reset through /proc/self/clear_refs)",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _release_free_heap() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``), so that memory a
    previous measurement freed but the allocator kept does not hide the next one's rise."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_start(device: torch.device) -> float | None:
    """Reset the peak-memory counter; returns the baseline (MB) that :func:`memory_peak` subtracts
    (0 on CUDA, the current RSS on the CPU), or None where the CPU peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    _release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    rss = _status_kb("VmRSS")
    return None if rss is None else rss / 1024


def memory_peak(device: torch.device, base: float | None) -> float | None:
    """Peak memory (MB) since :func:`memory_start`: CUDA's peak allocation, or the CPU's peak RSS
    above ``base``; None where it is not measurable."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _status_kb("VmHWM")
    if base is None or hwm is None:
        return None
    return max(0.0, hwm / 1024 - base)


# ------------------------------------------------------------------------- (a) tiny profile
def tiny_run(ds: MedDataset, plan: Plan, device: str, folder: Path) -> dict[str, Any]:
    """The tiny profile end to end on ``device``, in its own expert and run folders."""
    cfg = build_config(
        "tiny",
        dataset=plan.dataset,
        device=device,
        seed=0,
        out_dir=str(folder / "runs"),
        experts_dir=str(folder / "experts"),
        overrides=[f"distill.ipc={plan.tiny_ipc}", f"eval.num_nets={plan.tiny_nets}"],
    )
    t = time.perf_counter()
    cell = run_cell(cfg, progress=False, ds=ds)
    seconds = time.perf_counter() - t
    row = cell.row or {}
    return {
        "device": device,
        "acc": 100 * row["acc_mean"],
        "auc": 100 * row["auc_mean"],
        "synset_hash": cell.synset.content_hash(),
        "learned_lr": cell.synset.lr,
        "seconds": seconds,
    }


def judge(runs: list[dict[str, Any]], determinism: bool, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Compare the two runs of (a): differences of test ACC and AUC, within ``tolerance`` points;
    a determinism check (CPU vs CPU) also needs bit-identical sets."""
    first, second = runs
    d_acc, d_auc = abs(first["acc"] - second["acc"]), abs(first["auc"] - second["auc"])
    identical = first["synset_hash"] == second["synset_hash"]
    within = d_acc <= tolerance and d_auc <= tolerance
    return {
        "diff_acc": d_acc,
        "diff_auc": d_auc,
        "tolerance": tolerance,
        "within_tolerance": within,
        "identical_sets": identical,
        "passed": within and (identical or not determinism),
    }


def check_devices(ds: MedDataset, plan: Plan, work: Path) -> dict[str, Any]:
    """(a): the tiny profile on the CPU and on CUDA (CPU mode: twice on the CPU)."""
    second = "cuda" if plan.mode == "cuda" else "cpu"
    runs = [tiny_run(ds, plan, "cpu", work / "a-cpu"), tiny_run(ds, plan, second, work / f"a-{second}-2")]
    determinism = plan.mode == "cpu"
    pair = "cpu vs cpu (no CUDA: determinism check)" if determinism else "cpu vs cuda"
    setting = f"tiny profile, {plan.dataset}, ptm ipc {plan.tiny_ipc}, {plan.tiny_nets} evaluation nets, seed 0"
    return {"pair": pair, "setting": setting, "runs": runs, **judge(runs, determinism)}


# ---------------------------------------------------------------------- (b) expert training
def paper_config(plan: Plan, device: torch.device, width: int, **flags: Any) -> RunConfig:
    return build_config("paper", dataset=plan.dataset, device=str(device), overrides=[f"net.width={width}"], **flags)


def expert_rate(ds: MedDataset, cfg: RunConfig, device: torch.device, images: int, epochs: int, bf16: bool) -> float:
    """img/s of expert training (``train.fit`` with the expert plan) over ``epochs`` epochs of the
    first ``images`` train images, after one untimed epoch."""
    n = images or len(ds.train)
    x, y = ds.train.images[:n], ds.train.labels[:n]
    plan = replace(expert_plan(ds, cfg, (0, "gpu-check-order"), (0, "gpu-check-dsa")), bf16=bf16)
    torch.manual_seed(0)
    net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    opt = sgd(net, plan)
    fit(net, opt, x, y, plan, range(1), device)
    sync(device)
    t = time.perf_counter()
    fit(net, opt, x, y, plan, range(1, 1 + epochs), device)
    sync(device)
    return n * epochs / (time.perf_counter() - t)


def check_experts(ds: MedDataset, plan: Plan, device: torch.device) -> dict[str, Any]:
    """(b): expert training img/s in fp32 and bf16."""
    cfg = paper_config(plan, device, plan.expert_width)
    n = plan.expert_images or len(ds.train)
    n16 = plan.bf16_images or n
    epochs, e = plan.expert_epochs, cfg.experts
    return {
        "setting": (
            f"{plan.dataset}, convnet d{cfg.net.depth} w{cfg.net.width} ({cfg.net.norm} norm), batch {e.batch_size}, "
            f"DSA {e.dsa}, {plan.expert_epochs} timed epoch(s) after 1 warm-up epoch"
        ),
        "native_bf16": bf16_native(device),
        "rows": [
            {"precision": "fp32", "images": n, "img_per_s": expert_rate(ds, cfg, device, n, epochs, False)},
            {"precision": "bf16", "images": n16, "img_per_s": expert_rate(ds, cfg, device, n16, epochs, True)},
        ],
    }


# ---------------------------------------------------------------------- (c) distillation step
def distill_config(plan: Plan, device: torch.device, work: Path, ipc: int, steps: int, saving: bool) -> RunConfig:
    return paper_config(
        plan,
        device,
        plan.distill_width,
        experts_dir=str(work / "c-experts"),
        out_dir=str(work / "c-runs"),
        **{
            "experts.num_experts": 1,
            "experts.epochs": 3,
            "experts.bf16": False,
            "distill.method": "mtt",
            "distill.ipc": ipc,
            "method.syn_steps": steps,
            "method.max_start_epoch": 2,
            "method.expert_epochs": 2,
            "method.memory_saving": saving,
        },
    )


def iteration_cost(ds: MedDataset, cfg: RunConfig, device: torch.device, iterations: int, run_dir: Path) -> dict:
    """Median s/iteration of ``TrajectoryMatching.step`` after a warm-up one, and peak memory (MB)
    over the warm-up and timed iterations."""
    tm = build_engine(DistillContext(ds, cfg, device, run_dir, False))
    st = tm.init_state()
    sync(device)
    base = memory_start(device)
    tm.step(st)  # warm-up: untimed, but inside the memory window (the allocator may keep what it took)
    sync(device)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        tm.step(st)
        sync(device)
        times.append(time.perf_counter() - t)
    return {"s_per_it": statistics.median(times), "peak_mb": memory_peak(device, base), "status": "ok"}


def check_distill(ds: MedDataset, plan: Plan, device: torch.device, work: Path) -> dict[str, Any]:
    """(c): s/iteration and peak memory at each (ipc, syn_steps), unrolled and memory-saving."""
    rows = []
    for ipc, steps in plan.combos:
        row: dict[str, Any] = {"ipc": ipc, "syn_steps": steps}
        for name, saving in (("unrolled", False), ("memory_saving", True)):
            cfg = distill_config(plan, device, work, ipc, steps, saving)
            try:
                row[name] = iteration_cost(ds, cfg, device, plan.iterations, work / "c-run")
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row[name] = {"s_per_it": None, "peak_mb": None, "status": "out of memory"}
        rows.append(row)
    setting = (
        f"{plan.dataset}, mtt, convnet d3 w{plan.distill_width}, whole set in every student step, median of "
        f"{plan.iterations} iteration(s) after 1 warm-up"
    )
    return {"setting": setting, "memory": MEMORY_KIND[device.type], "rows": rows}


# ---------------------------------------------------------------------------- (d) outputs
def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _cell(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']} | {r['status']}"
    return f"{r['s_per_it']:.3f} | {_num(r['peak_mb'], '.0f')}"


def markdown(result: dict[str, Any]) -> str:
    a, b, c = result["a"], result["b"], result["c"]
    lines = [
        f"# meddistill GPU check: {result['mode']} mode",
        "",
        f"{result['device_name']}; torch {result['torch']}, {result['threads']} CPU threads; "
        f"TF32: matmul {result['tf32']['matmul']}, cuDNN {result['tf32']['cudnn']}; {result['seconds']:.0f} s in all.",
    ]
    if result["reduced"]:
        lines += ["", f"**No CUDA used: {result['note']}**"]
    verdict = "PASS" if a["passed"] else "FAIL"
    lines += [
        "",
        f"## (a) {a['pair']}: {verdict}",
        "",
        a["setting"] + ".",
        "",
        "| run | device | test ACC % | test AUC % | synset hash | s |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(a["runs"], 1):
        lines.append(
            f"| {i} | {r['device']} | {r['acc']:.2f} | {r['auc']:.2f} | {r['synset_hash']} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        f"Differences: ACC {a['diff_acc']:.2f}, AUC {a['diff_auc']:.2f} points (tolerance {a['tolerance']:g}); "
        f"identical sets: {a['identical_sets']}.",
        "",
        "## (b) expert training",
        "",
        f"{b['setting']}; native bf16: {b['native_bf16']}.",
        "",
        "| precision | images per epoch | img/s |",
        "|---|---|---|",
    ]
    lines += [f"| {r['precision']} | {r['images']} | {r['img_per_s']:.0f} |" for r in b["rows"]]
    lines += [
        "",
        "## (c) distillation iteration",
        "",
        f"{c['setting']}. Peak memory: {c['memory']}.",
        "",
        "| ipc | syn_steps | unrolled s/it | unrolled peak MB | memory-saving s/it | memory-saving peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in c["rows"]:
        lines.append(f"| {r['ipc']} | {r['syn_steps']} | {_cell(r['unrolled'])} | {_cell(r['memory_saving'])} |")
    return "\n".join(lines) + "\n"


def choose_plan(device: torch.device, dataset: str | None) -> Plan:
    plan = CUDA_PLAN if device.type == "cuda" else CPU_PLAN
    return replace(plan, dataset=dataset) if dataset else plan


def run(out: Path, device_name: str = "auto", dataset: str | None = None) -> dict[str, Any]:
    device = resolve_device(device_name)
    plan = choose_plan(device, dataset)
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix="gpu-check-") as tmp:
        work = Path(tmp)
        ds = load_data(build_config("tiny", dataset=plan.dataset), progress=False)
        a = check_devices(ds, plan, work)
        b = check_experts(ds, plan, device)
        c = check_distill(ds, plan, device, work)
    reduced = device.type != "cuda"
    result = {
        "mode": plan.mode,
        "reduced": reduced,
        "note": (
            "CPU mode at reduced size; (a) compared two CPU runs (a determinism check), not CPU with CUDA"
            if reduced
            else ""
        ),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({device})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "plan": asdict(plan),
        "a": a,
        "b": b,
        "c": c,
        "passed": a["passed"],
        "seconds": time.perf_counter() - t,
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    ap.add_argument(
        "--dataset",
        default=None,
        help=f"single-label MedMNIST subset (default {CUDA_PLAN.dataset}, on which (a)'s tolerance was derived)",
    )
    args = ap.parse_args(argv)
    result = run(Path(args.out), args.device, args.dataset)
    print(markdown(result), end="")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
