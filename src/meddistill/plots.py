"""Figures: image grids (one row per class) and metric curves. Matplotlib with the Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch


def grid_array(pixels: torch.Tensor, labels: torch.Tensor, max_per_class: int = 10, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) pixels in [0, 1] → an (rows*H, cols*W, 3) array, one row per class."""
    classes = labels.unique().tolist()
    c, h, w = pixels.shape[1:]
    cols = min(max_per_class, max(int((labels == k).sum()) for k in classes))
    out = np.ones((len(classes) * (h + pad), cols * (w + pad), 3), dtype=np.float32)
    for r, k in enumerate(classes):
        imgs = pixels[labels == k][:cols]
        for j, im in enumerate(imgs):
            arr = im.detach().cpu().float().clamp(0, 1).numpy().transpose(1, 2, 0)
            if c == 1:
                arr = np.repeat(arr, 3, axis=2)
            out[r * (h + pad) : r * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = arr
    return out


def save_grid(pixels: torch.Tensor, labels: torch.Tensor, path: str | Path, class_names=None, title: str = "") -> Path:
    arr = grid_array(pixels, labels)
    classes = labels.unique().tolist()
    fig_h = max(1.5, 0.9 * len(classes))
    fig_w = max(3.0, fig_h * arr.shape[1] / arr.shape[0] + 1.5)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=120)
    ax.imshow(arr, interpolation="nearest")
    h = arr.shape[0] / len(classes)
    ax.set_yticks([h * (i + 0.5) for i in range(len(classes))])
    names = class_names or [str(k) for k in classes]
    ax.set_yticklabels([str(names[k])[:18] for k in classes], fontsize=7)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def save_curves(rows: list[dict], keys: list[str], path: str | Path, x: str = "it") -> Path | None:
    """One panel per key present in ``rows`` (e.g. loss, lr, diversity) against ``x``."""
    keys = [k for k in keys if any(k in r and r[k] is not None for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), dpi=120, squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        pts = [(r[x], r[k]) for r in rows if k in r and r[k] is not None and r[k] == r[k]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, lw=1)
        ax.set_xlabel(x)
        ax.set_title(k, fontsize=9)
        if k in ("loss",) and pts and min(ys) > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def save_figure(fig, path: str | Path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (a full disk is a one-line :class:`WriteError`,
    and never leaves a torn image)."""
    from meddistill.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
