"""Coreset baselines: random real images, herding and k-center in an expert's feature space."""

from __future__ import annotations

import torch

from meddistill.distill.base import REFERENCE_EXPERT, DistillContext, distill_generator, real_init, register_method
from meddistill.experts import ExpertBuffer
from meddistill.nets import FlatParams, call_flat, create_model
from meddistill.synset import SynSet


def expert_features(ctx: DistillContext, x: torch.Tensor, bs: int = 1024) -> torch.Tensor:
    """Penultimate features of the reference expert at its last epoch."""
    theta = ExpertBuffer(ctx.experts_folder()).get(REFERENCE_EXPERT)[-1].to(ctx.device)
    net = create_model(ctx.cfg.net, ctx.ds.shape, ctx.ds.num_classes).to(ctx.device)
    spec = FlatParams.of(net)
    with torch.no_grad():
        return torch.cat(
            [
                call_flat(net, spec, theta, x[i : i + bs].to(ctx.device), features=True).cpu()
                for i in range(0, len(x), bs)
            ]
        )


def herding(f: torch.Tensor, k: int) -> list[int]:
    """Welling 2009: greedily keep the running mean of the chosen features close to the class mean."""
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    avail = torch.ones(len(f), dtype=torch.bool)
    for i in range(k):
        cand = (total + f) / (i + 1)
        d = (cand - mu).norm(dim=1)
        d[~avail] = float("inf")
        j = int(d.argmin())
        chosen.append(j)
        avail[j] = False
        total += f[j]
    return chosen


def kcenter(f: torch.Tensor, k: int) -> list[int]:
    """Greedy k-center (Sener & Savarese 2018), seeded with the point nearest the class mean.

    That seed is herding's first pick too, so at k = 1 both select the same image."""
    first = int((f - f.mean(0)).norm(dim=1).argmin())
    chosen = [first]
    dist = (f - f[first]).norm(dim=1)
    for _ in range(k - 1):
        j = int(dist.argmax())
        chosen.append(j)
        dist = torch.minimum(dist, (f - f[j]).norm(dim=1))
    return chosen


def _selected(idx: torch.Tensor) -> dict:
    """A coreset's provenance: the train indices selected, each image its own source."""
    return {"train_indices": idx.tolist(), "init": "real", "sources": [[int(i)] for i in idx]}


def _select(ctx: DistillContext, pick) -> SynSet:
    ctx.check_ipc()
    train = ctx.ds.train
    idx = []
    for cls_idx in ctx.class_indices():
        f = expert_features(ctx, train.images[cls_idx])
        idx.append(cls_idx[torch.tensor(pick(f, ctx.cfg.distill.ipc))])
    idx_t = torch.cat(idx)
    return ctx.make_synset(train.images[idx_t], train.labels[idx_t], **_selected(idx_t))


@register_method("random", synthesizes=False)
def random_real(ctx: DistillContext) -> SynSet:
    """ipc random real images per class (the images the other methods start from)."""
    images, labels, idx = real_init(ctx, distill_generator(ctx))
    return ctx.make_synset(images, labels, **_selected(idx))


@register_method("herding", reads=("experts",), synthesizes=False)
def herding_method(ctx: DistillContext) -> SynSet:
    """Herding (Welling 2009) per class in the reference expert's feature space."""
    return _select(ctx, herding)


@register_method("kcenter", reads=("experts",), synthesizes=False)
def kcenter_method(ctx: DistillContext) -> SynSet:
    """Greedy k-center (Sener & Savarese 2018) per class in the reference expert's feature space."""
    return _select(ctx, kcenter)
