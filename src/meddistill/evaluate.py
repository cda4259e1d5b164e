"""The one evaluation protocol every method shares.

K fresh nets (per evaluation architecture) are trained on the given image set — synthetic,
coreset or the full train split — with SGD (momentum, weight decay, lr x0.1 at half the epochs),
DSA, and model selection on the **validation** split only: every ``val_every`` epochs
val ACC is measured, and the test metrics reported are those of the checkpoint with the best
val ACC (ties: the earlier one).  The test split never influences any choice.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from meddistill.augment import dsa, for_dataset
from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset, Split
from meddistill.metrics import medmnist_acc, medmnist_auc
from meddistill.nets import create_model, spec_for
from meddistill.utils import autocast, derive_seed


@dataclass
class NetResult:
    net: str
    seed: int
    test_acc: float
    test_auc: float
    val_acc: float
    best_epoch: int


@dataclass
class EvalSummary:
    results: list[NetResult] = field(default_factory=list)

    def stats(self, net: str | None = None) -> dict[str, float]:
        rs = [r for r in self.results if net is None or r.net == net]
        acc = np.array([r.test_acc for r in rs])
        auc = np.array([r.test_auc for r in rs])
        return {
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std()),
            "auc_mean": float(np.nanmean(auc)) if not np.all(np.isnan(auc)) else float("nan"),
            "auc_std": float(np.nanstd(auc)) if not np.all(np.isnan(auc)) else float("nan"),
            "n": len(rs),
        }

    def by_net(self) -> dict[str, dict[str, float]]:
        return {n: self.stats(n) for n in dict.fromkeys(r.net for r in self.results)}

    def line(self) -> str:
        parts = []
        for n, s in self.by_net().items():
            parts.append(
                f"{n}: ACC {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f}  "
                f"AUC {100 * s['auc_mean']:.2f} ± {100 * s['auc_std']:.2f}  (n={s['n']})"
            )
        return " | ".join(parts)


@torch.no_grad()
def predict(net, split: Split, device, bf16: bool, bs: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    with autocast(device, bf16):
        for i in range(0, len(split), bs):
            out.append(F.softmax(net(split.images[i : i + bs].to(device)).float(), 1).cpu())
    net.train()
    return torch.cat(out).numpy()


def train_eval_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    ds: MedDataset,
    cfg: RunConfig,
    net_name: str,
    seed: int,
    lr: float,
    epochs: int,
    device: torch.device,
    batch_size: int | None = None,
    val_every: int | None = None,
) -> NetResult:
    """Train one fresh net on (images, labels); labels are class ids or soft (N, C) targets.
    ``batch_size`` and ``val_every`` default to ``cfg.eval``'s (the synthetic-set protocol)."""
    ecfg = cfg.eval
    batch_size = batch_size or ecfg.batch_size
    spec = spec_for(cfg.net, net_name)
    torch.manual_seed(derive_seed(seed, "eval-init", net_name))
    net = create_model(spec, ds.shape, ds.num_classes).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=ecfg.momentum, weight_decay=ecfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2)], gamma=0.1)
    dsa_cfg = for_dataset(ds.info, cfg.dsa) if ecfg.dsa else None
    n = len(images)
    val_every = max(1, min(val_every or ecfg.val_every, epochs))
    best = (-1.0, 0, math.nan, math.nan)  # val_acc, epoch, test_acc, test_auc
    for epoch in range(1, epochs + 1):
        g = torch.Generator().manual_seed(derive_seed(seed, "eval-order", net_name, epoch))
        perm = torch.randperm(n, generator=g)
        for b, i in enumerate(range(0, n, batch_size)):
            idx = perm[i : i + batch_size]
            xb, yb = images[idx].to(device), labels[idx].to(device)
            xb = dsa(xb, derive_seed(seed, "eval-dsa", net_name, epoch, b), dsa_cfg)
            with autocast(device, ecfg.bf16):
                loss = F.cross_entropy(net(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch % val_every == 0 or epoch == epochs:
            val_acc = medmnist_acc(ds.val.labels.numpy(), predict(net, ds.val, device, ecfg.bf16))
            if val_acc > best[0]:
                prob = predict(net, ds.test, device, ecfg.bf16)
                y = ds.test.labels.numpy()
                best = (val_acc, epoch, medmnist_acc(y, prob), medmnist_auc(y, prob))
    return NetResult(net_name, seed, best[2], best[3], best[0], best[1])


def _batchable(net: torch.nn.Module) -> bool:
    """vmap can train K copies at once when the net keeps no running statistics."""
    return not any(True for _ in net.buffers())


def train_eval_nets_batched(
    images: torch.Tensor,
    labels: torch.Tensor,
    ds: MedDataset,
    cfg: RunConfig,
    net_name: str,
    seeds: list[int],
    lr: float,
    epochs: int,
    device: torch.device,
    batch_size: int | None = None,
    val_every: int | None = None,
) -> list[NetResult]:
    """:func:`train_eval_net` for several seeds at once: the K nets' parameters are stacked and
    trained with one ``vmap``-ed forward/backward per step. Every net keeps its own init, data
    order, DSA draws, SGD state and val-based checkpoint choice, so the results equal K separate
    :func:`train_eval_net` calls up to float summation order (over hundreds of epochs on a
    tiny set those differences can grow into different runs). Meant for devices where small
    kernels are launch-bound; on the 2-core CPU here it is faster only at ipc 1
    (docs/performance.md), hence ``eval.batched`` is off by default."""
    ecfg = cfg.eval
    batch_size = batch_size or ecfg.batch_size
    spec = spec_for(cfg.net, net_name)
    nets = []
    for seed in seeds:
        torch.manual_seed(derive_seed(seed, "eval-init", net_name))
        nets.append(create_model(spec, ds.shape, ds.num_classes).to(device))
    params, _ = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")

    def fmodel(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, p, (x,))

    forward = vmap(fmodel)
    opt = torch.optim.SGD(params.values(), lr=lr, momentum=ecfg.momentum, weight_decay=ecfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2)], gamma=0.1)
    dsa_cfg = for_dataset(ds.info, cfg.dsa) if ecfg.dsa else None
    n, k = len(images), len(seeds)
    val_every = max(1, min(val_every or ecfg.val_every, epochs))
    best = [(-1.0, 0, math.nan, math.nan)] * k
    images, labels = images.to(device), labels.to(device)

    def predict_all(split: Split) -> list[np.ndarray]:
        out = []
        with torch.no_grad(), autocast(device, ecfg.bf16):
            for i in range(0, len(split), 1024):
                xb = split.images[i : i + 1024].to(device)
                out.append(F.softmax(forward(params, xb.expand(k, *xb.shape)).float(), -1).cpu())
        return list(torch.cat(out, 1).numpy())

    for epoch in range(1, epochs + 1):
        perms = [
            torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(s, "eval-order", net_name, epoch)))
            for s in seeds
        ]
        for b, i in enumerate(range(0, n, batch_size)):
            xb = torch.stack(
                [
                    dsa(images[p[i : i + batch_size]], derive_seed(s, "eval-dsa", net_name, epoch, b), dsa_cfg)
                    for s, p in zip(seeds, perms, strict=True)
                ]
            )
            yb = torch.stack([labels[p[i : i + batch_size]] for p in perms])
            with autocast(device, ecfg.bf16):
                logits = forward(params, xb).float()
            # the sum of the K nets' mean losses: each net's gradient is its own mean-loss gradient
            loss = sum(F.cross_entropy(logits[j], yb[j]) for j in range(k))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch % val_every == 0 or epoch == epochs:
            vals = predict_all(ds.val)
            tests = None
            for j in range(k):
                val_acc = medmnist_acc(ds.val.labels.numpy(), vals[j])
                if val_acc > best[j][0]:
                    tests = tests if tests is not None else predict_all(ds.test)
                    y = ds.test.labels.numpy()
                    best[j] = (val_acc, epoch, medmnist_acc(y, tests[j]), medmnist_auc(y, tests[j]))
    return [NetResult(net_name, s, b[2], b[3], b[0], b[1]) for s, b in zip(seeds, best, strict=True)]


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    ds: MedDataset,
    cfg: RunConfig,
    device: torch.device,
    lr: float | None = None,
    epochs: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    batch_size: int | None = None,
    val_every: int | None = None,
) -> EvalSummary:
    """Evaluate an image set with ``cfg.eval.num_nets`` seeds for every net in ``cfg.eval.nets``."""
    ecfg = cfg.eval
    lr = ecfg.lr if ecfg.lr > 0 else (lr if lr else ecfg.lr_default)
    epochs = epochs or ecfg.epochs
    summary = EvalSummary()
    seeds = [derive_seed(cfg.seed, "eval", s) for s in range(ecfg.num_nets)]
    # one job per net, or (batched) one job per architecture training all its seeds at once
    jobs = [(net, [s]) for net in ecfg.nets for s in seeds]
    if ecfg.batched and ecfg.num_nets > 1:
        ok = {n: _batchable(create_model(spec_for(cfg.net, n), ds.shape, 2)) for n in ecfg.nets}
        jobs = [j for j in jobs if not ok[j[0]]] + [(n, seeds) for n in ecfg.nets if ok[n]]
    done: dict[tuple[str, int], NetResult] = {}
    bar = tqdm(total=len(ecfg.nets) * len(seeds), desc=desc, unit="net", disable=not progress)
    for net_name, job_seeds in jobs:
        args = (images, labels, ds, cfg, net_name)
        if len(job_seeds) > 1:
            res = train_eval_nets_batched(*args, job_seeds, lr, epochs, device, batch_size, val_every)
        else:
            res = [train_eval_net(*args, job_seeds[0], lr, epochs, device, batch_size, val_every)]
        done.update({(net_name, s): r for s, r in zip(job_seeds, res, strict=True)})
        bar.update(len(res))
    bar.close()
    summary.results = [done[(n, s)] for n in ecfg.nets for s in seeds]  # the same order either way
    return summary


def evaluate_full(ds: MedDataset, cfg: RunConfig, device: torch.device, progress: bool = True) -> EvalSummary:
    """Upper bound: the same protocol on the whole real train split."""
    return evaluate_images(
        ds.train.images,
        ds.train.labels,
        ds,
        cfg,
        device,
        lr=cfg.eval.lr_default,
        epochs=cfg.eval.full_epochs,
        progress=progress,
        desc="eval full",
        batch_size=cfg.eval.full_batch_size,
        val_every=cfg.eval.full_val_every,
    )
