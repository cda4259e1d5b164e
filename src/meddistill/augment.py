"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) with explicit seeds.

Every random draw comes from a ``torch.Generator`` seeded by the caller, so the same seed
applied to a real and a synthetic batch gives the same transformation (siamese), and a run
that is resumed re-creates exactly the same augmentations.  All ops are differentiable
w.r.t. the images: affine ops use ``grid_sample``, colour ops are arithmetic, cutout is a
multiplicative mask.  ``flip``/``rotate`` can be turned off per modality (organ CT labels
name a body side; flipping them would corrupt the label).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from meddistill.config import OPS, DSAConfig  # noqa: F401  (the dsa: section; OPS re-exported)
from meddistill.errors import ConfigError


def _rand(g: torch.Generator, n: int, cfg: DSAConfig, like: torch.Tensor) -> torch.Tensor:
    r = torch.rand(1 if cfg.batch_mode else n, generator=g)
    if cfg.batch_mode:
        r = r.expand(n)
    return r.to(device=like.device, dtype=like.dtype)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x, g, cfg):
    n = x.shape[0]
    sx = _rand(g, n, cfg, x) * (cfg.scale - 1 / cfg.scale) + 1 / cfg.scale
    sy = _rand(g, n, cfg, x) * (cfg.scale - 1 / cfg.scale) + 1 / cfg.scale
    z = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return _affine(x, theta)


def _rotate(x, g, cfg):
    n = x.shape[0]
    a = (_rand(g, n, cfg, x) - 0.5) * 2 * cfg.rotate_deg * math.pi / 180
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([c, s, z], 1), torch.stack([-s, c, z], 1)], 1)
    return _affine(x, theta)


def _crop(x, g, cfg):
    n = x.shape[0]
    tx = (_rand(g, n, cfg, x) - 0.5) * 4 * cfg.crop_ratio  # shift of up to ratio * size
    ty = (_rand(g, n, cfg, x) - 0.5) * 4 * cfg.crop_ratio
    one, z = torch.ones_like(tx), torch.zeros_like(tx)
    theta = torch.stack([torch.stack([one, z, tx], 1), torch.stack([z, one, ty], 1)], 1)
    return _affine(x, theta)


def _flip(x, g, cfg):
    m = _rand(g, x.shape[0], cfg, x) < 0.5
    return torch.where(m.view(-1, 1, 1, 1), x.flip(3), x)


def _color(x, g, cfg):
    n = x.shape[0]
    x = x + (_rand(g, n, cfg, x) - 0.5).view(-1, 1, 1, 1) * cfg.brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(g, n, cfg, x) * cfg.saturation).view(-1, 1, 1, 1) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(g, n, cfg, x) + cfg.contrast).view(-1, 1, 1, 1) + m


def _cutout(x, g, cfg):
    n, _, h, w = x.shape
    ch, cw = int(h * cfg.cutout_ratio + 0.5), int(w * cfg.cutout_ratio + 0.5)
    cy = (_rand(g, n, cfg, x) * h).long()
    cx = (_rand(g, n, cfg, x) * w).long()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (ys >= (cy - ch // 2).view(-1, 1, 1)) & (ys < (cy - ch // 2 + ch).view(-1, 1, 1))
    inside_x = (xs >= (cx - cw // 2).view(-1, 1, 1)) & (xs < (cx - cw // 2 + cw).view(-1, 1, 1))
    mask = (~(inside_y & inside_x)).to(x.dtype).unsqueeze(1)
    return x * mask


_FNS: dict[str, Callable[[torch.Tensor, torch.Generator, DSAConfig], torch.Tensor]] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def dsa(x: torch.Tensor, seed: int, cfg: DSAConfig | None) -> torch.Tensor:
    """Augment ``x`` (N, C, H, W) with the transformation fully determined by ``seed``."""
    if cfg is None:
        return x
    ops = cfg.ops()
    if not ops:
        return x
    g = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    if cfg.mode == "single":
        ops = [ops[int(torch.randint(len(ops), (1,), generator=g))]]
    elif cfg.mode != "all":
        raise ConfigError(f"unknown DSA mode {cfg.mode!r}; use 'single' or 'all'")
    for op in ops:
        x = _FNS[op](x, g, cfg)
    return x


def for_dataset(info, base: DSAConfig | None = None) -> DSAConfig:
    """A DSA config with flip/rotate set by the dataset's modality defaults."""
    cfg = DSAConfig(**(vars(base) if base else {}))
    cfg.flip = cfg.flip and info.flip
    cfg.rotate = cfg.rotate and info.rotate
    return cfg
