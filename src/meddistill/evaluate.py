"""The one evaluation protocol every method shares.

K fresh nets (per evaluation architecture) are trained on the given image set — synthetic,
coreset or the full train split — with SGD (momentum, weight decay, lr x0.1 at half the epochs),
DSA, and model selection on the **validation** split only: every ``val_every`` epochs
val ACC is measured, and the test metrics reported are those of the checkpoint with the best
val ACC (ties: the earlier one).  The test split never influences any choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from meddistill.augment import for_dataset
from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset, Split
from meddistill.metrics import medmnist_acc, medmnist_auc
from meddistill.nets import create_model, spec_for
from meddistill.train import TrainPlan, fit, sgd
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


@torch.no_grad()
def predict(net, split: Split, device, bf16: bool, bs: int = 1024) -> np.ndarray:
    net.eval()
    out = []
    with autocast(device, bf16):
        for i in range(0, len(split), bs):
            out.append(F.softmax(net(split.images[i : i + bs].to(device)).float(), 1).cpu())
    net.train()
    return torch.cat(out).numpy()


def eval_plan(cfg: RunConfig, ds: MedDataset, net_name: str, seed: int, lr: float, batch_size: int) -> TrainPlan:
    """The evaluation protocol's training settings for one net and seed."""
    ecfg = cfg.eval
    return TrainPlan(
        lr=lr,
        batch_size=batch_size,
        order_tag=(seed, "eval-order", net_name),
        dsa_tag=(seed, "eval-dsa", net_name),
        momentum=ecfg.momentum,
        weight_decay=ecfg.weight_decay,
        dsa=for_dataset(ds.info, cfg.dsa) if ecfg.dsa else None,
        bf16=ecfg.bf16,
    )


def train_and_select(
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
) -> tuple[NetResult, dict[str, torch.Tensor]]:
    """The evaluation protocol for one fresh net: train on (images, labels) (class ids or soft
    (N, C) targets), lr x0.1 at half the epochs, val ACC every ``val_every`` epochs; returns the
    result of the best-val checkpoint and that checkpoint's weights."""
    ecfg = cfg.eval
    plan = eval_plan(cfg, ds, net_name, seed, lr, batch_size or ecfg.batch_size)
    spec = spec_for(cfg.net, net_name)
    torch.manual_seed(derive_seed(seed, "eval-init", net_name))
    net = create_model(spec, ds.shape, ds.num_classes).to(device)
    opt = sgd(net, plan)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, epochs // 2)], gamma=0.1)
    val_every = max(1, min(val_every or ecfg.val_every, epochs))
    best = {"val": -1.0, "epoch": 0, "acc": math.nan, "auc": math.nan, "state": {}}

    def check(epoch: int) -> None:
        if epoch % val_every and epoch != epochs:
            return
        val_acc = medmnist_acc(ds.val.labels.numpy(), predict(net, ds.val, device, ecfg.bf16))
        if val_acc > best["val"]:
            prob = predict(net, ds.test, device, ecfg.bf16)
            y = ds.test.labels.numpy()
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            best.update(val=val_acc, epoch=epoch, acc=medmnist_acc(y, prob), auc=medmnist_auc(y, prob), state=state)

    fit(net, opt, images, labels, plan, range(1, epochs + 1), device, on_epoch=check, sched=sched)
    result = NetResult(net_name, seed, best["acc"], best["auc"], best["val"], best["epoch"])
    return result, best["state"]


def train_eval_net(*args, **kwargs) -> NetResult:
    """:func:`train_and_select` without the weights."""
    return train_and_select(*args, **kwargs)[0]


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
    with tqdm(total=len(ecfg.nets) * len(seeds), desc=desc, unit="net", disable=not progress) as bar:
        for net_name in ecfg.nets:
            for seed in seeds:
                res = train_eval_net(images, labels, ds, cfg, net_name, seed, lr, epochs, device, batch_size, val_every)
                summary.results.append(res)
                bar.update(1)
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
