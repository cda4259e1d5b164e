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

from meddistill.augment import dsa
from meddistill.config import setting
from meddistill.distill.base import DistillContext, distill_generator, register_method
from meddistill.distill.dpdm import NoisyMeans, match_noisy_means, noisy_class_means, plan_dpdm, random_net_factory
from meddistill.distill.embedding import fresh_net, image_step, match_embeddings, siamese_cfg, siamese_pair
from meddistill.distill.init import INIT_NAMES, InitOptions, make_start
from meddistill.dp import run_delta
from meddistill.synset import SynSet
from meddistill.utils import derive_seed

# a method matching real statistics itself has no use for DM's warm start
OWN_INITS = tuple(name for name in INIT_NAMES if name != "dm")


@dataclass
class DMConfig:
    iterations: int = setting(200, lo=1)
    batch_real: int = setting(128, lo=1)  # real images per class and iteration
    lr_img: float = setting(1.0, lo=0, lo_open=True)
    init: str = setting("real", choices=OWN_INITS, keyless_at="real")  # where the set starts (distill/init.py)
    init_k: int = setting(5, lo=5, keyless_at=5)  # init centroid: real images per centroid, at least


@dataclass
class DCConfig:
    iterations: int = setting(20, lo=1)  # each iteration is outer x (match, then inner net steps)
    batch_real: int = setting(128, lo=1)  # real images per class and matching step
    lr_img: float = setting(0.1, lo=0, lo_open=True)
    lr_net: float = setting(0.01, lo=0, lo_open=True)
    outer: int = setting(10, lo=1)
    inner: int = setting(5, lo=0)
    init: str = setting("real", choices=OWN_INITS, keyless_at="real")  # where the set starts (distill/init.py)
    init_k: int = setting(5, lo=5, keyless_at=5)  # init centroid: real images per centroid, at least


def _setup(ctx: DistillContext, d):
    """Shared start of DM and DC: seeded stream, the section's init, image optimizer, siamese DSA, class indices."""
    gen = distill_generator(ctx)
    start = make_start(ctx, gen, InitOptions.of(d))
    images = start.images.to(ctx.device).requires_grad_(True)
    opt = torch.optim.SGD([images], lr=d.lr_img, momentum=0.5)
    return gen, images, start.labels.to(ctx.device), opt, siamese_cfg(ctx), ctx.class_indices(), start.sources


def _dp_dm_nets(ctx: DistillContext):
    """The run's random nets, by iteration: the release and the synthesis must see the same ones."""
    return random_net_factory(ctx.cfg.net, ctx.ds.shape, ctx.ds.num_classes, ctx.cfg.seed, ctx.device)


def dp_dm_release(ctx: DistillContext) -> tuple[NoisyMeans, dict]:
    """DM under ``--dp-epsilon`` (DP-DM, distill/dpdm.py): the noisy class means of clipped
    embeddings under the run's random nets, one set per iteration — the only computation that
    reads the real train images; the synthesis then matches them. Returns them and the record."""
    cfg, ds = ctx.cfg, ctx.ds
    d: DMConfig = cfg.distill.active
    counts = [int((ds.train.labels == c).sum()) for c in range(ds.num_classes)]
    plan = plan_dpdm(
        counts, d.iterations, d.batch_real, cfg.dp.epsilon, run_delta(cfg, len(ds.train)), cfg.dp.max_grad_norm,
        cfg.dp.accountant,
    )  # fmt: skip
    assert plan.dp is not None
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "dp-dm-release"))
    train = ds.train
    released = noisy_class_means(train.images, train.labels, plan, _dp_dm_nets(ctx), gen, siamese_cfg(ctx), ctx.device)
    record = {**plan.dp.to_dict(), "mechanism": "DP-DM noisy class means", "class_rates": list(plan.rates),
              "class_counts": counts}  # fmt: skip
    return released, record


def _dp_distribution_matching(ctx: DistillContext, d: DMConfig) -> SynSet:
    """DP-DM's synthesis: from noise, one image step per released iteration (post-processing)."""
    start = make_start(ctx, distill_generator(ctx), InitOptions.of(d))
    images = start.images.to(ctx.device).requires_grad_(True)
    labels = start.labels.to(ctx.device)
    opt = torch.optim.SGD([images], lr=d.lr_img, momentum=0.5)
    match_noisy_means(images, labels, ctx.release, _dp_dm_nets(ctx), opt, ctx.cfg.dp.max_grad_norm, siamese_cfg(ctx))
    return ctx.make_synset(images, labels, init=d.init, sources=start.sources)


@register_method(
    "dm", config=DMConfig, reads=("net", "dsa"), private="release", release=dp_dm_release,
    presets={"tiny": {"iterations": 12, "batch_real": 32}, "paper": {"iterations": 5000}},
)  # fmt: skip
def distribution_matching(ctx: DistillContext) -> SynSet:
    """DM (Zhao & Bilen 2023): match mean embeddings of real and synthetic images under random nets."""
    d: DMConfig = ctx.cfg.distill.active
    if ctx.release is not None:
        return _dp_distribution_matching(ctx, d)
    gen, images, labels, opt, _aug, _classes, sources = _setup(ctx, d)
    match_embeddings(ctx, images, labels, gen, opt, d.iterations, d.batch_real)
    return ctx.make_synset(images, labels, init=d.init, sources=sources)


def _match(gr: list[torch.Tensor], gs: list[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise distance: sum over output units of (1 - cosine); 1-D params skipped."""
    total = gs[0].new_zeros(())
    for a, b in zip(gr, gs, strict=True):
        if b.dim() == 1:
            continue
        a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        total = total + (1 - F.cosine_similarity(a2, b2, dim=1, eps=1e-6)).sum()
    return total


@register_method(
    "dc", config=DCConfig, reads=("net", "dsa"),
    not_private="gradient matching reads real train images at every iteration; no DP variant here",
    presets={"tiny": {"iterations": 12, "batch_real": 32, "outer": 2, "inner": 1}, "paper": {"iterations": 5000}},
)  # fmt: skip
def gradient_matching(ctx: DistillContext) -> SynSet:
    """DC/DSA (Zhao et al. 2021): per-class gradient matching with siamese augmentation."""
    d: DCConfig = ctx.cfg.distill.active
    gen, images, labels, opt, aug, classes, sources = _setup(ctx, d)
    for it in tqdm(range(d.iterations), desc="distill dc", disable=not ctx.progress):
        net = fresh_net(ctx, "dc-net", it)
        params = list(net.parameters())
        net_opt = torch.optim.SGD(params, lr=d.lr_net)
        for ol in range(d.outer):
            loss = images.new_zeros(())
            for c, cls_idx in enumerate(classes):
                real, syn = siamese_pair(ctx, gen, aug, cls_idx, images[labels == c], d.batch_real)
                yr = torch.full((real.shape[0],), c, device=ctx.device)
                gr = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), yr), params)]
                ys = torch.full((syn.shape[0],), c, device=ctx.device)
                gs = torch.autograd.grad(F.cross_entropy(net(syn), ys), params, create_graph=True)
                loss = loss + _match(gr, gs)
            image_step(opt, loss, images)
            if ol == d.outer - 1:
                break
            x_syn, y_syn = images.detach(), labels
            for _ in range(d.inner):
                seed = int(torch.randint(2**62, (1,), generator=gen))
                net_loss = F.cross_entropy(net(dsa(x_syn, seed, aug)), y_syn)
                net_opt.zero_grad(set_to_none=True)
                net_loss.backward()
                net_opt.step()
    return ctx.make_synset(images, labels, init=d.init, sources=sources)
