"""Matching real-image statistics under randomly initialised nets: the pieces distribution
matching (DM) and gradient matching (DC) share, and DM's loop, which the ``dm`` initialisation
of other methods also runs (DM from noise as a warm start, :mod:`meddistill.distill.init`).

Every random choice comes from the caller's generator and from nets seeded by
``derive_seed(run seed, tag, iteration)``, so a seed reproduces a run.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from meddistill.augment import DSAConfig, dsa, for_dataset
from meddistill.distill.base import DistillContext
from meddistill.nets import create_model
from meddistill.utils import derive_seed


def fresh_net(ctx: DistillContext, *tag) -> torch.nn.Module:
    """A randomly initialised ``cfg.net`` seeded by the run seed and ``tag`` (the caller's RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.cfg.seed, *tag))
        return create_model(ctx.cfg.net, ctx.ds.shape, ctx.ds.num_classes).to(ctx.device)


def siamese_cfg(ctx: DistillContext) -> DSAConfig:
    cfg = for_dataset(ctx.ds.info, ctx.cfg.dsa)
    cfg.batch_mode = True  # real and synthetic batches differ in size: one draw per batch
    return cfg


def real_batch(ctx: DistillContext, cls_idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    pick = cls_idx[torch.randperm(len(cls_idx), generator=gen)[:n]]
    return ctx.ds.train.images[pick].to(ctx.device)


def siamese_pair(ctx: DistillContext, gen, aug, cls_idx, syn_c, n_real: int):
    """A real batch of one class and that class's synthetic images, augmented with one shared seed."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    real = dsa(real_batch(ctx, cls_idx, n_real, gen), seed, aug)
    return real, dsa(syn_c, seed, aug)


def image_step(opt: torch.optim.Optimizer, loss: torch.Tensor, images: torch.Tensor) -> None:
    """One optimizer step on the images, skipped when the gradient is not finite."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if torch.isfinite(images.grad).all():
        opt.step()


def match_embeddings(
    ctx: DistillContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    opt: torch.optim.Optimizer,
    iterations: int,
    batch_real: int,
    tag: str = "dm-net",
    desc: str = "distill dm",
) -> None:
    """DM's loop, in place on ``images`` (a leaf the optimizer holds): each iteration a fresh
    net (seeded by ``tag`` and the iteration), and per class the squared distance between the
    mean penultimate features of a real batch and of the class's synthetic images."""
    aug, classes = siamese_cfg(ctx), ctx.class_indices()
    for it in tqdm(range(iterations), desc=desc, disable=not ctx.progress):
        net = fresh_net(ctx, tag, it)
        for p in net.parameters():
            p.requires_grad_(False)
        loss = images.new_zeros(())
        for c, cls_idx in enumerate(classes):
            real, syn = siamese_pair(ctx, gen, aug, cls_idx, images[labels == c], batch_real)
            fr, fs = net(real, features=True), net(syn, features=True)
            loss = loss + ((fr.mean(0) - fs.mean(0)) ** 2).sum()
        image_step(opt, loss, images)
