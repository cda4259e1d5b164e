"""Checks that a synthetic set is usable before it is evaluated or exported, so that an invalid
set (NaN images, no images, labels out of range, the wrong image shape, a non-positive lr,
soft labels that are not distributions) is a one-line error, never a result."""

from __future__ import annotations

import torch

from meddistill.errors import ArtifactError
from meddistill.synset import SynSet

SOFT_TOLERANCE = 1e-3  # soft-label rows must sum to 1 within this


class InvalidSynSet(ArtifactError):
    """A synthetic set that is readable but cannot be a training set for its dataset."""


def _image_problems(images: torch.Tensor, shape: tuple[int, int, int]) -> list[str]:
    if images.dim() != 4:
        return [f"images have shape {tuple(images.shape)}, expected (N, C, H, W)"]
    if images.shape[0] == 0:
        return ["it is empty (0 images)"]
    out = []
    if tuple(images.shape[1:]) != tuple(shape):
        got = "x".join(map(str, images.shape[1:]))
        out.append(f"images are {got} (channels x height x width) but the dataset's are {'x'.join(map(str, shape))}")
    if not images.is_floating_point():
        out.append(f"images are {images.dtype}, expected floating point")
    else:
        bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
        if bad:
            out.append(f"{bad} of {images.shape[0]} images contain NaN or infinite values")
    return out


def _label_problems(labels: torch.Tensor, n: int, num_classes: int) -> list[str]:
    if labels.dim() != 1 or labels.shape[0] != n:
        return [f"labels have shape {tuple(labels.shape)}, expected ({n},)"]
    if labels.is_floating_point() or labels.dtype == torch.bool:
        return [f"labels are {labels.dtype}, expected integer class ids"]
    lo, hi = (int(labels.min()), int(labels.max())) if n else (0, 0)
    if lo < 0 or hi >= num_classes:
        return [f"labels range over {lo}..{hi}, the dataset has classes 0..{num_classes - 1}"]
    return []


def _soft_problems(soft: torch.Tensor, n: int, num_classes: int) -> list[str]:
    if tuple(soft.shape) != (n, num_classes):
        return [f"soft labels have shape {tuple(soft.shape)}, expected ({n}, {num_classes})"]
    if not torch.isfinite(soft).all():
        return ["soft labels contain NaN or infinite values"]
    if (soft < 0).any():
        return ["soft labels contain negative probabilities"]
    worst = float((soft.double().sum(1) - 1).abs().max()) if n else 0.0
    if worst > SOFT_TOLERANCE:
        return [f"soft-label rows do not sum to 1 (off by up to {worst:.3g})"]
    return []


def _norm_problems(syn: SynSet, channels: int) -> list[str]:
    if tuple(syn.mean.shape) != (channels,) or tuple(syn.std.shape) != (channels,):
        return [f"mean/std have shapes {tuple(syn.mean.shape)}/{tuple(syn.std.shape)}, expected ({channels},)"]
    if not (torch.isfinite(syn.mean).all() and torch.isfinite(syn.std).all() and (syn.std > 0).all()):
        return ["mean/std are not finite with std > 0"]
    return []


def synset_problems(syn: SynSet, shape: tuple[int, int, int], num_classes: int) -> list[str]:
    """Everything wrong with ``syn`` as a training set of a dataset of ``shape`` (C, H, W) images."""
    out = _image_problems(syn.images, shape)
    if out and syn.images.dim() != 4:
        return out
    n = syn.images.shape[0]
    out += _label_problems(syn.labels, n, num_classes)
    if syn.lr is not None and not (syn.lr > 0 and syn.lr < float("inf")):
        out.append(f"its learned lr is {syn.lr}, expected a finite value > 0")
    if syn.soft_labels is not None:
        out += _soft_problems(syn.soft_labels, n, num_classes)
    return out + _norm_problems(syn, shape[0])


def check_synset(syn: SynSet, shape: tuple[int, int, int], num_classes: int, name: str = "the synthetic set") -> None:
    """Raise :class:`InvalidSynSet` (one line, every problem) unless ``syn`` is usable."""
    problems = synset_problems(syn, shape, num_classes)
    if problems:
        raise InvalidSynSet(f"{name} is not a valid synthetic set: {'; '.join(problems)}")
