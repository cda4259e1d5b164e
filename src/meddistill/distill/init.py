"""Where a synthetic set starts, and what replaces an image DOM re-initialises: one registry.

Every entry returns a :class:`Start` — images (normalised), labels and, for each image, its
*sources*: the train indices it was made from (``[]`` for none), which the privacy audit traces
(:mod:`meddistill.audit`). ``shareable`` entries carry no single patient's image:

- ``real`` — ``ipc`` random real train images per class: one patient each (traceable by
  construction; DOM then re-initialises from random unused real images of the class too);
- ``noise`` — standard Gaussian noise in the normalised space; no source;
- ``centroid`` — per class, k-means in pixel space into ``ipc`` clusters of at least ``k``
  images each (a cluster with fewer takes the images nearest its centre); each image is the
  mean of its cluster's images, its sources are those images;
- ``dm`` — noise, then distribution matching (DM's loop, :func:`~meddistill.distill.embedding.match_embeddings`)
  for ``iterations`` iterations: a warm start no single image determines; no source.

Every entry first draws the ``real`` start from the run's stream (``distill_generator``), so the
real start, and the draws that follow it for a real start, are those every method had before
inits existed (``noise`` and ``centroid`` then draw their own images from the same stream).
A shareable entry's ``replace`` makes the image a DOM event puts in place of an overlapping one
by the same rule (``noise`` and ``dm``: fresh noise; ``centroid``: the mean of ``k`` unused
real images of the class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from meddistill.distill.base import DistillContext, real_init
from meddistill.distill.embedding import match_embeddings
from meddistill.errors import ConfigError
from meddistill.registry import Registry
from meddistill.utils import derive_seed

DM_WARM_LR = 1.0  # DM's image lr and real batch (its section's defaults) for the ``dm`` warm start
DM_WARM_BATCH = 128


@dataclass
class Start:
    images: torch.Tensor  # (N, C, H, W), normalised, on the CPU
    labels: torch.Tensor  # (N,)
    drawn: torch.Tensor  # train indices of the real start drawn from the stream (marked used)
    sources: list[list[int]]  # per image, the train indices it was made from


@dataclass(frozen=True)
class InitOptions:
    """A method section's init settings (``init``, ``init_k``, ``init_iterations``)."""

    name: str = "real"
    k: int = 5
    iterations: int = 100

    @classmethod
    def of(cls, section) -> InitOptions:
        d = cls()
        return cls(
            getattr(section, "init", d.name),
            getattr(section, "init_k", d.k),
            getattr(section, "init_iterations", d.iterations),
        )


@dataclass
class ReplaceInputs:
    """What a replacement may use for one image of one class."""

    gen: torch.Generator
    train_images: torch.Tensor | None  # None under --dp-epsilon (the run reads no real image)
    cls_idx: torch.Tensor  # the class's indices into the train split
    used: torch.Tensor  # bool over the train split: real images already taken (updated in place)
    k: int
    shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of one image


StartFn = Callable[[DistillContext, torch.Generator, InitOptions, "torch.Tensor | None"], Start]
ReplaceFn = Callable[[ReplaceInputs], tuple[torch.Tensor, list[int]]]


@dataclass(frozen=True)
class InitSpec:
    name: str
    start: StartFn
    shareable: bool
    replace: ReplaceFn | None  # None: DOM re-initialises from random unused real images of the class
    summary: str


INITS: Registry[InitSpec] = Registry("init")


def register_init(name: str, *, shareable: bool, replace: ReplaceFn | None = None):
    def deco(fn: StartFn) -> StartFn:
        INITS.add(name, InitSpec(name, fn, shareable, replace, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return deco


def make_start(ctx: DistillContext, gen: torch.Generator, opts: InitOptions, eligible=None) -> Start:
    """The start of the active method's set under ``opts`` (``eligible``: DATM's real-image filter)."""
    return INITS.get(opts.name).start(ctx, gen, opts, eligible)


def _real_draw(ctx, gen, eligible) -> Start:
    images, labels, idx = real_init(ctx, gen, eligible)
    return Start(images, labels, idx, [[int(i)] for i in idx])


def noise_image(inp: ReplaceInputs) -> tuple[torch.Tensor, list[int]]:
    return torch.randn(inp.shape, generator=inp.gen), []


def centroid_image(inp: ReplaceInputs) -> tuple[torch.Tensor, list[int]]:
    """The mean of ``k`` random real images of the class, unused ones first."""
    free = inp.cls_idx[~inp.used[inp.cls_idx]]
    taken = inp.cls_idx[inp.used[inp.cls_idx]]
    order = torch.cat([part[torch.randperm(len(part), generator=inp.gen)] for part in (free, taken)])
    members = order[: inp.k]
    inp.used[members] = True
    return inp.train_images[members].mean(0), [int(i) for i in members]


@register_init("real", shareable=False)
def real_start(ctx: DistillContext, gen: torch.Generator, opts: InitOptions, eligible=None) -> Start:
    """ipc random real train images per class (one patient each)."""
    return _real_draw(ctx, gen, eligible)


@register_init("noise", shareable=True, replace=noise_image)
def noise_start(ctx: DistillContext, gen: torch.Generator, opts: InitOptions, eligible=None) -> Start:
    """Gaussian noise in the normalised space; no source."""
    if ctx.cfg.dp.on:  # the run may read neither the train images nor their labels: no real draw
        ipc, k = ctx.cfg.distill.ipc, ctx.ds.num_classes
        labels = torch.arange(k).repeat_interleave(ipc)
        images = torch.randn((k * ipc, *ctx.ds.shape), generator=gen)
        return Start(images, labels, torch.zeros(0, dtype=torch.long), [[] for _ in range(k * ipc)])
    real = _real_draw(ctx, gen, eligible)
    images = torch.randn(real.images.shape, generator=gen)
    return Start(images, real.labels, real.drawn, [[] for _ in real.sources])


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding drawn from ``gen``: (assignment (n,), centres (k, d))."""
    n = len(x)
    centres = [x[int(torch.randint(n, (1,), generator=gen))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):
        total = float(d2.sum())
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        j = int(torch.multinomial(probs.double(), 1, generator=gen))
        centres.append(x[j])
        d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(1))
    c = torch.stack(centres)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        new = c.clone()
        for j in range(k):
            members = assign == j
            if members.any():
                new[j] = x[members].mean(0)
        new_assign = torch.cdist(x, new).argmin(1)
        c = new
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign, c


def clusters_of_at_least(x: torch.Tensor, k_clusters: int, min_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``k_clusters`` groups of row indices of ``x``, each of at least ``min_size`` rows: k-means
    clusters, a smaller one topped up with the rows nearest its centre."""
    assign, centres = kmeans(x, k_clusters, gen)
    groups = []
    for j in range(k_clusters):
        members = torch.nonzero(assign == j).view(-1)
        if len(members) < min_size:
            near = torch.cdist(centres[j : j + 1], x)[0].argsort()
            extra = near[~torch.isin(near, members)][: min_size - len(members)]
            members = torch.cat([members, extra])
        groups.append(members.sort().values)
    return groups


def _centroid_sources(ctx: DistillContext, gen: torch.Generator, k: int) -> tuple[torch.Tensor, list[list[int]]]:
    ipc, train = ctx.cfg.distill.ipc, ctx.ds.train
    images, sources = [], []
    for c, cls_idx in enumerate(ctx.class_indices()):
        if len(cls_idx) < k:
            raise ConfigError(
                f"init centroid needs at least init_k={k} train images in class {c} ({ctx.ds.info.labels[c]!r}), "
                f"which has {len(cls_idx)}"
            )
        x = train.images[cls_idx].flatten(1)
        for group in clusters_of_at_least(x, ipc, k, gen):
            members = cls_idx[group]
            images.append(train.images[members].mean(0))
            sources.append([int(i) for i in members])
    return torch.stack(images), sources


@register_init("centroid", shareable=True, replace=centroid_image)
def centroid_start(ctx: DistillContext, gen: torch.Generator, opts: InitOptions, eligible=None) -> Start:
    """Per class, means of k-means clusters (pixel space) of at least k real images each."""
    real = _real_draw(ctx, gen, eligible)
    images, sources = _centroid_sources(ctx, gen, opts.k)
    return Start(images, real.labels, real.drawn, sources)


@register_init("dm", shareable=True, replace=noise_image)
def dm_start(ctx: DistillContext, gen: torch.Generator, opts: InitOptions, eligible=None) -> Start:
    """Noise, then distribution matching under random nets (a warm start); no source."""
    start = noise_start(ctx, gen, opts, eligible)
    dm_gen = torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, "init-dm"))
    images = start.images.to(ctx.device).requires_grad_(True)
    opt = torch.optim.SGD([images], lr=DM_WARM_LR, momentum=0.5)
    labels = start.labels.to(ctx.device)
    match_embeddings(ctx, images, labels, dm_gen, opt, opts.iterations, DM_WARM_BATCH, "init-dm-net", "init dm")
    return Start(images.detach().cpu(), start.labels, start.drawn, start.sources)


INIT_NAMES = tuple(INITS)
SHAREABLE = tuple(name for name, spec in INITS.items() if spec.shareable)
