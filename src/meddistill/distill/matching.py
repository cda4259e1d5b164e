"""Distribution matching (DM, Zhao & Bilen 2023) and gradient matching with DSA (DC/DSA,
Zhao et al. 2021), on the same data, nets and augmentation as trajectory matching.

Both draw fresh randomly initialised nets; every random choice comes from seeded
generators, so a seed reproduces a run.  Neither checkpoints mid-run: they are baselines
that finish in minutes on the CPU profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from meddistill.augment import DSAConfig, dsa, for_dataset
from meddistill.config import setting
from meddistill.distill.base import DistillContext, distill_generator, real_init, register_method
from meddistill.nets import create_model
from meddistill.synset import SynSet
from meddistill.utils import derive_seed


@dataclass
class DMConfig:
    iterations: int = setting(200, lo=1)
    batch_real: int = setting(128, lo=1)  # real images per class and iteration
    lr_img: float = setting(1.0, lo=0, lo_open=True)


@dataclass
class DCConfig:
    iterations: int = setting(20, lo=1)  # each iteration is outer x (match, then inner net steps)
    batch_real: int = setting(128, lo=1)  # real images per class and matching step
    lr_img: float = setting(0.1, lo=0, lo_open=True)
    lr_net: float = setting(0.01, lo=0, lo_open=True)
    outer: int = setting(10, lo=1)
    inner: int = setting(5, lo=0)


def _fresh_net(ctx: DistillContext, *tag) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.cfg.seed, *tag))
        return create_model(ctx.cfg.net, ctx.ds.shape, ctx.ds.num_classes).to(ctx.device)


def _siamese_cfg(ctx: DistillContext) -> DSAConfig:
    cfg = for_dataset(ctx.ds.info, ctx.cfg.dsa)
    cfg.batch_mode = True  # real and synthetic batches differ in size: one draw per batch
    return cfg


def _real_batch(ctx: DistillContext, cls_idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    pick = cls_idx[torch.randperm(len(cls_idx), generator=gen)[:n]]
    return ctx.ds.train.images[pick].to(ctx.device)


def _setup(ctx: DistillContext, lr_img: float):
    """Shared start of DM and DC: seeded stream, real init, image optimizer, siamese DSA, class indices."""
    gen = distill_generator(ctx)
    images, labels, _ = real_init(ctx, gen)
    images = images.to(ctx.device).requires_grad_(True)
    opt = torch.optim.SGD([images], lr=lr_img, momentum=0.5)
    return gen, images, labels.to(ctx.device), opt, _siamese_cfg(ctx), ctx.class_indices()


def _siamese_pair(ctx: DistillContext, gen, aug, cls_idx, syn_c, n_real: int):
    """A real batch of one class and that class's synthetic images, augmented with one shared seed."""
    seed = int(torch.randint(2**62, (1,), generator=gen))
    real = dsa(_real_batch(ctx, cls_idx, n_real, gen), seed, aug)
    return real, dsa(syn_c, seed, aug)


def _image_step(opt: torch.optim.Optimizer, loss: torch.Tensor, images: torch.Tensor) -> None:
    """One optimizer step on the images, skipped when the gradient is not finite."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if torch.isfinite(images.grad).all():
        opt.step()


@register_method("dm", config=DMConfig, reads=("net", "dsa"))
def distribution_matching(ctx: DistillContext) -> SynSet:
    """DM (Zhao & Bilen 2023): match mean embeddings of real and synthetic images under random nets."""
    d: DMConfig = ctx.cfg.distill.active
    gen, images, labels, opt, aug, classes = _setup(ctx, d.lr_img)
    for it in tqdm(range(d.iterations), desc="distill dm", disable=not ctx.progress):
        net = _fresh_net(ctx, "dm-net", it)
        for p in net.parameters():
            p.requires_grad_(False)
        loss = images.new_zeros(())
        for c, cls_idx in enumerate(classes):
            real, syn = _siamese_pair(ctx, gen, aug, cls_idx, images[labels == c], d.batch_real)
            fr, fs = net(real, features=True), net(syn, features=True)
            loss = loss + ((fr.mean(0) - fs.mean(0)) ** 2).sum()
        _image_step(opt, loss, images)
    return ctx.make_synset(images, labels)


def _match(gr: list[torch.Tensor], gs: list[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise distance: sum over output units of (1 - cosine); 1-D params skipped."""
    total = gs[0].new_zeros(())
    for a, b in zip(gr, gs, strict=True):
        if b.dim() == 1:
            continue
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        total = total + (1 - F.cosine_similarity(a2, b2, dim=1, eps=1e-6)).sum()
    return total


@register_method("dc", config=DCConfig, reads=("net", "dsa"))
def gradient_matching(ctx: DistillContext) -> SynSet:
    """DC/DSA (Zhao et al. 2021): per-class gradient matching with siamese augmentation."""
    d: DCConfig = ctx.cfg.distill.active
    gen, images, labels, opt, aug, classes = _setup(ctx, d.lr_img)
    for it in tqdm(range(d.iterations), desc="distill dc", disable=not ctx.progress):
        net = _fresh_net(ctx, "dc-net", it)
        params = list(net.parameters())
        net_opt = torch.optim.SGD(params, lr=d.lr_net)
        for ol in range(d.outer):
            loss = images.new_zeros(())
            for c, cls_idx in enumerate(classes):
                real, syn = _siamese_pair(ctx, gen, aug, cls_idx, images[labels == c], d.batch_real)
                yr = torch.full((real.shape[0],), c, device=ctx.device)
                gr = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), yr), params)]
                ys = torch.full((syn.shape[0],), c, device=ctx.device)
                gs = torch.autograd.grad(F.cross_entropy(net(syn), ys), params, create_graph=True)
                loss = loss + _match(gr, gs)
            _image_step(opt, loss, images)
            if ol == d.outer - 1:
                break
            x_syn, y_syn = images.detach(), labels
            for _ in range(d.inner):
                seed = int(torch.randint(2**62, (1,), generator=gen))
                net_loss = F.cross_entropy(net(dsa(x_syn, seed, aug)), y_syn)
                net_opt.zero_grad(set_to_none=True)
                net_loss.backward()
                net_opt.step()
    return ctx.make_synset(images, labels)
