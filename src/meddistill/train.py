"""The one training loop: expert trajectories, evaluation nets and the audit's attack nets all
train with :func:`fit` (SGD, optional DSA and bf16 autocast, seeded minibatch order).

Every random draw derives from the caller's seed tags and the epoch (and batch) index, so an
epoch is the same whether the run started at it or resumed there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meddistill.augment import DSAConfig, dsa
from meddistill.errors import MeddistillError
from meddistill.utils import autocast, derive_seed


class Diverged(MeddistillError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainPlan:
    """How to train one net. ``order_tag``/``dsa_tag`` prefix the seed of every epoch's
    minibatch order and every batch's augmentation (``derive_seed(*tag, epoch[, batch])``)."""

    lr: float
    batch_size: int
    order_tag: tuple
    dsa_tag: tuple
    momentum: float = 0.0
    weight_decay: float = 0.0
    dsa: DSAConfig | None = None
    bf16: bool = False
    check_finite: bool = False  # raise :class:`Diverged` on a non-finite loss


def sgd(net: torch.nn.Module, plan: TrainPlan) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay)


def train_epoch(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: TrainPlan,
    epoch: int,
    device: torch.device,
) -> None:
    """One pass over (images, labels) in a seeded order; labels are class ids or soft targets."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(derive_seed(*plan.order_tag, epoch)))
    for b, i in enumerate(range(0, len(images), plan.batch_size)):
        idx = perm[i : i + plan.batch_size]
        xb, yb = images[idx].to(device), labels[idx].to(device)
        xb = dsa(xb, derive_seed(*plan.dsa_tag, epoch, b), plan.dsa)
        with autocast(device, plan.bf16):
            loss = F.cross_entropy(net(xb).float(), yb)
        if plan.check_finite and not torch.isfinite(loss):
            raise Diverged(f"loss {loss.item()} at epoch {epoch}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def fit(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: TrainPlan,
    epochs: Iterable[int],
    device: torch.device,
    on_epoch: Callable[[int], None] | None = None,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Train ``net`` for the given epoch indices; after each, step ``sched`` and call ``on_epoch``."""
    for epoch in epochs:
        train_epoch(net, opt, images, labels, plan, epoch, device)
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch)
