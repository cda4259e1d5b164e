"""meddistill vs MTT's reference loops on the same work, in one table: expert training
(:func:`meddistill.experts.train_one_expert` vs the port of MTT's ``buffer.py`` loop) and the
evaluation of one synthetic set (:func:`meddistill.evaluate.train_and_select` vs the port of
MTT's ``evaluate_synset``); the ports and what differs from the original are described in
``benchmarks/reference_mtt_train.py``.

Same work on both sides: dataset, net (the profile's), epochs, lr, batch size, momentum,
weight decay, DSA on/off, and the initial weights (each side's net is built after seeding the
global torch RNG with the seed meddistill derives for that net). Both sides run fp32
(``experts.bf16=false``; the reference has no autocast).

- Expert training: ``--num-experts`` experts for ``--expert-epochs`` epochs on the real train
  split. meddistill: :func:`~meddistill.experts.train_one_expert` (val accuracy and a resumable
  partial file after every epoch); reference: its loop with a pass over the val split after
  every epoch (it passes its test loader there) and the parameters kept in memory.
- Evaluation: one set (``--synset PATH``, or ``ipc`` random real images per class, the
  ``random`` method) trained for ``--eval-epochs`` epochs by ``eval.num_nets`` nets, lr = the
  set's learned lr if it has one, else ``eval.lr_default``. meddistill: lr x0.1 at half the
  epochs, val ACC every ``eval.val_every`` epochs, test ACC of the best-val checkpoint;
  reference: called with ``epoch_eval_train = epochs - 1`` (it trains ``Epoch + 1`` epochs), lr
  x0.1 by a new optimizer after epoch index ``Epoch // 2 + 1``, test ACC after the last epoch.

img/s = training images processed per second of the whole call (its evaluation passes and,
for meddistill's experts, the per-epoch files included); speed ratio = meddistill img/s /
reference img/s. Expert accuracy is the test ACC of each expert's last epoch, measured the same
way for both (:func:`meddistill.evaluate.predict`), mean over experts. One run per side, in
one process: absolute numbers depend on the machine and what else runs on it.

    MEDDISTILL_DATA=../shared/data/medmnist PYTHONPATH=src python benchmarks/reference_compare.py --out DIR
    [--quick] [--device cuda] [--dataset pneumoniamnist] [--profile cpu] [--synset RUN/synset.npz]

Writes ``DIR/reference_compare.json`` and ``DIR/reference_compare.md`` and prints the table.
``--quick``: the tiny profile on BreastMNIST, 2 expert epochs, 20 evaluation epochs (seconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

# beside this file (Python puts a script's folder on sys.path)
from reference_mtt_train import BufferArgs, EvalArgs, eval_loader, evaluate_synset, train_buffer, unseeded_dsa

from meddistill.augment import for_dataset
from meddistill.config import RunConfig, build_config
from meddistill.data.loader import MedDataset
from meddistill.distill import DistillContext, get_method
from meddistill.evaluate import predict, train_and_select
from meddistill.experts import load_trajectory, train_one_expert
from meddistill.metrics import medmnist_acc, medmnist_auc
from meddistill.nets import create_model, load_flat, spec_for
from meddistill.pipeline import load_data
from meddistill.synset import SynSet
from meddistill.utils import derive_seed, resolve_device


@dataclass(frozen=True)
class Work:
    """What both sides are given."""

    dataset: str
    profile: str
    device: str
    seed: int
    num_experts: int
    expert_epochs: int
    eval_epochs: int
    ipc: int
    synset: str = ""  # a synset.npz; empty: ipc random real images per class


QUICK = {"dataset": "breastmnist", "profile": "tiny", "num_experts": 1, "expert_epochs": 2, "eval_epochs": 20}


@dataclass
class Side:
    seconds: float
    images: int  # training images processed
    acc: float  # test ACC (%)
    auc: float | None = None  # test AUC (%), evaluation only

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds


def config_for(work: Work, out: Path) -> RunConfig:
    return build_config(
        work.profile,
        dataset=work.dataset,
        device=work.device,
        seed=work.seed,
        experts_dir=str(out / "experts"),
        out_dir=str(out / "runs"),
        overrides=[
            f"experts.epochs={work.expert_epochs}",
            f"experts.num_experts={work.num_experts}",
            "experts.bf16=false",
            f"eval.epochs={work.eval_epochs}",
            f"distill.ipc={work.ipc}",
        ],
    )


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(result, wall-clock seconds), with the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t


def final_test_acc(flat: torch.Tensor, ds: MedDataset, cfg: RunConfig, device: torch.device) -> float:
    """Test ACC (%) of a net holding the flat parameters ``flat``."""
    net = create_model(cfg.net, ds.shape, ds.num_classes).to(device)
    load_flat(net, flat.to(device))
    return 100 * medmnist_acc(ds.test.labels.numpy(), predict(net, ds.test, device, False))


def ours_experts(ds: MedDataset, cfg: RunConfig, device: torch.device, folder: Path) -> Side:
    def run() -> list[Path]:
        paths = [folder / f"expert_{k}.safetensors" for k in range(cfg.experts.num_experts)]
        for k, path in enumerate(paths):
            train_one_expert(ds, cfg, k, path, device)
        return paths

    paths, seconds = timed(run, device)
    accs = [final_test_acc(load_trajectory(p)[-1], ds, cfg, device) for p in paths]
    e = cfg.experts
    return Side(seconds, e.num_experts * e.epochs * len(ds.train), float(np.mean(accs)))


def reference_experts(ds: MedDataset, cfg: RunConfig, device: torch.device) -> Side:
    e = cfg.experts
    args = BufferArgs(e.num_experts, e.epochs, e.lr, e.batch_size, mom=e.momentum, l2=e.weight_decay)

    def make_net(k: int) -> torch.nn.Module:
        torch.manual_seed(derive_seed(e.seed, "expert-init", k))  # meddistill's init of expert k
        return create_model(cfg.net, ds.shape, ds.num_classes)

    augment = unseeded_dsa(for_dataset(ds.info, cfg.dsa) if e.dsa else None)
    evalloader = eval_loader(ds.val.images, ds.val.labels)
    buffer, seconds = timed(
        lambda: train_buffer(ds.train.images, ds.train.labels, evalloader, make_net, args, device, augment), device
    )
    last = [torch.cat([p.reshape(-1) for p in t[-1]]) for t in buffer.trajectories]
    accs = [final_test_acc(flat, ds, cfg, device) for flat in last]
    return Side(seconds, e.num_experts * e.epochs * len(ds.train), float(np.mean(accs)))


def the_synset(work: Work, ds: MedDataset, cfg: RunConfig, device: torch.device, run_dir: Path) -> SynSet:
    if work.synset:
        return SynSet.load(work.synset)
    return get_method("random")(DistillContext(ds, cfg, device, run_dir, False))


def eval_lr(cfg: RunConfig, syn: SynSet) -> float:
    """The evaluation lr as :func:`meddistill.evaluate.evaluate_images` picks it."""
    return cfg.eval.lr if cfg.eval.lr > 0 else (syn.lr or cfg.eval.lr_default)


def eval_seeds(cfg: RunConfig) -> list[int]:
    return [derive_seed(cfg.seed, "eval", s) for s in range(cfg.eval.num_nets)]


def ours_eval(syn: SynSet, ds: MedDataset, cfg: RunConfig, device: torch.device) -> Side:
    lr, epochs, net_name = eval_lr(cfg, syn), cfg.eval.epochs, cfg.net.name

    def run() -> list:
        return [
            train_and_select(syn.images, syn.labels, ds, cfg, net_name, s, lr, epochs, device)[0]
            for s in eval_seeds(cfg)
        ]

    results, seconds = timed(run, device)
    acc = 100 * float(np.mean([r.test_acc for r in results]))
    auc = 100 * float(np.mean([r.test_auc for r in results]))
    return Side(seconds, len(results) * epochs * len(syn.images), acc, auc)


def reference_eval(syn: SynSet, ds: MedDataset, cfg: RunConfig, device: torch.device) -> Side:
    epochs, net_name = cfg.eval.epochs, cfg.net.name
    args = EvalArgs(eval_lr(cfg, syn), epochs - 1, cfg.eval.batch_size)
    augment = unseeded_dsa(for_dataset(ds.info, cfg.dsa) if cfg.eval.dsa else None)
    testloader = eval_loader(ds.test.images, ds.test.labels)

    def one(seed: int) -> tuple[torch.nn.Module, float]:
        torch.manual_seed(derive_seed(seed, "eval-init", net_name))  # meddistill's init of this net
        net = create_model(spec_for(cfg.net, net_name), ds.shape, ds.num_classes)
        trained, _, acc_test = evaluate_synset(net, syn.images, syn.labels, testloader, args, device, augment)
        return trained, acc_test

    runs, seconds = timed(lambda: [one(s) for s in eval_seeds(cfg)], device)
    y = ds.test.labels.numpy()
    aucs = [medmnist_auc(y, predict(net, ds.test, device, False)) for net, _ in runs]
    acc = 100 * float(np.mean([a for _, a in runs]))
    return Side(seconds, len(runs) * epochs * len(syn.images), acc, 100 * float(np.mean(aucs)))


def row(work_name: str, settings: str, ours: Side, ref: Side, acc_note: str) -> dict:
    return {
        "work": work_name,
        "settings": settings,
        "ours": asdict(ours) | {"img_per_s": ours.img_per_s},
        "reference": asdict(ref) | {"img_per_s": ref.img_per_s},
        "speed_ratio": ours.img_per_s / ref.img_per_s,
        "accuracy": acc_note,
    }


def run_sides(syn: SynSet, ds: MedDataset, cfg: RunConfig, device: torch.device, folder: Path) -> list[Side]:
    """Expert training and evaluation, meddistill then reference: [ours_e, ref_e, ours_v, ref_v]."""
    folder.mkdir(parents=True)
    return [
        ours_experts(ds, cfg, device, folder),
        reference_experts(ds, cfg, device),
        ours_eval(syn, ds, cfg, device),
        reference_eval(syn, ds, cfg, device),
    ]


def compare(work: Work, out: Path) -> dict:
    device = resolve_device(work.device)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_dir = Path(tmp)
        cfg = config_for(work, tmp_dir)
        ds = load_data(cfg, progress=False)
        if ds.info.multi_label:
            raise SystemExit(f"{work.dataset} is multi-label; the reference loops train single-label nets")
        syn = the_synset(work, ds, cfg, device, tmp_dir / "run")
        if syn.soft_labels is not None:
            raise SystemExit("the set has soft labels; the reference evaluate_synset trains on class ids")
        # an untimed pass of every side at 1 expert epoch / 2 evaluation epochs first: one-off costs
        # (kernel selection per batch shape, allocator growth) land on neither side's timing
        small = replace(work, num_experts=1, expert_epochs=1, eval_epochs=2)
        run_sides(syn, ds, config_for(small, tmp_dir), device, tmp_dir / "warm-up")
        ours_e, ref_e, ours_v, ref_v = run_sides(syn, ds, cfg, device, tmp_dir / "timed")
        e = cfg.experts
    net = f"{cfg.net.name} w{cfg.net.width} d{cfg.net.depth}"
    expert_settings = (
        f"{e.num_experts} expert(s) x {e.epochs} epochs, {len(ds.train)} train images, batch {e.batch_size}, "
        f"lr {e.lr}, momentum {e.momentum}, DSA {e.dsa}"
    )
    source = work.synset or f"random real, ipc {work.ipc}"
    eval_settings = (
        f"{cfg.eval.num_nets} net(s) x {cfg.eval.epochs} epochs, {len(syn.images)} images ({source}), "
        f"batch {cfg.eval.batch_size}, lr {eval_lr(cfg, syn):.4g}, DSA {cfg.eval.dsa}"
    )
    return {
        "work": asdict(work),
        "dataset": cfg.dataset,
        "net": net,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": [
            row("expert training", expert_settings, ours_e, ref_e, "test ACC of the last epoch (same measurement)"),
            row(
                "evaluation",
                eval_settings,
                ours_v,
                ref_v,
                "meddistill: test ACC/AUC of the best-val checkpoint; reference: after the last epoch",
            ),
        ],
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['dataset']}, {result['net']}, device {result['device']}, torch {result['torch']}, "
        f"{result['threads']} threads; one run per side.",
        "",
        "| work | settings | meddistill s | reference s | meddistill img/s | reference img/s "
        "| speed ratio (meddistill / reference) | meddistill test ACC % | reference test ACC % "
        "| meddistill test AUC % | reference test AUC % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        o, f = r["ours"], r["reference"]

        def auc(side: dict) -> str:
            return "-" if side["auc"] is None else f"{side['auc']:.2f}"

        lines.append(
            f"| {r['work']} | {r['settings']} | {o['seconds']:.2f} | {f['seconds']:.2f} | {o['img_per_s']:.0f} "
            f"| {f['img_per_s']:.0f} | {r['speed_ratio']:.2f}x | {o['acc']:.2f} | {f['acc']:.2f} "
            f"| {auc(o)} | {auc(f)} |"
        )
    lines += ["", "Accuracy: " + "; ".join(f"{r['work']}: {r['accuracy']}" for r in result["rows"]) + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[Work, Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for reference_compare.json and .md")
    ap.add_argument("--quick", action="store_true", help="tiny profile, BreastMNIST, 2 + 20 epochs (seconds)")
    ap.add_argument("--dataset", default=None, help="default: pneumoniamnist (breastmnist with --quick)")
    ap.add_argument("--profile", choices=("tiny", "cpu", "paper"), help="default: cpu (tiny with --quick)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-experts", type=int, default=None, help="default 1")
    ap.add_argument("--expert-epochs", type=int, default=None, help="default: the profile's experts.epochs")
    ap.add_argument("--eval-epochs", type=int, default=None, help="default: the profile's eval.epochs")
    ap.add_argument("--ipc", type=int, default=10, help="images per class of the random real set")
    ap.add_argument("--synset", default="", help="evaluate this synset.npz instead of a random real set")
    a = ap.parse_args(argv)
    base = QUICK if a.quick else {"dataset": "pneumoniamnist", "profile": "cpu", "num_experts": 1}
    profile = a.profile or base["profile"]
    prof = build_config(profile)
    work = Work(
        dataset=a.dataset or base["dataset"],
        profile=profile,
        device=a.device,
        seed=a.seed,
        num_experts=a.num_experts or base["num_experts"],
        expert_epochs=a.expert_epochs or base.get("expert_epochs", prof.experts.epochs),
        eval_epochs=a.eval_epochs or base.get("eval_epochs", prof.eval.epochs),
        ipc=a.ipc,
        synset=a.synset,
    )
    return work, Path(a.out)


def main(argv: list[str] | None = None) -> dict:
    work, out = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    result = compare(work, out)
    table = markdown(result)
    (out / "reference_compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "reference_compare.md").write_text(table)
    print(table, end="")
    return result


if __name__ == "__main__":
    main()
