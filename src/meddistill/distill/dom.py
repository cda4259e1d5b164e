"""Dynamic Overlap Mitigation: find same-class synthetic images that collapsed together.

Overlap is cosine similarity between two images of the same class, in pixel space and in an
expert's feature space.  :func:`select_overlapping` greedily picks, per class, the images to
re-initialise: while some pair is above a threshold, the image involved in the most
overlapping pairs (ties: the later index) is chosen and removed from further consideration,
up to a budget.  One image of every overlapping group always survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meddistill.config import setting


@dataclass
class DOMConfig:
    """Dynamic Overlap Mitigation settings (PTM's ``dom`` sub-section)."""

    enabled: bool = True
    every: int = setting(20, lo=1)  # measure overlap every this many iterations
    start: float = setting(0.2, lo=0, hi=1)  # first check after this fraction of the run
    stop: float = setting(0.8, lo=0, hi=1)  # no replacement after this fraction (the rest re-trains them)
    pixel_threshold: float = setting(0.9, lo=-1, hi=1)  # same-class cosine similarity above which images overlap
    feature_threshold: float = setting(0.95, lo=-1, hi=1)
    max_replace_frac: float = setting(0.25, lo=0, hi=1)  # at most this fraction of a class's images per check
    noise: float = setting(0.0, lo=0)  # std of noise added to re-initialised images


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) → (n, n) cosine similarities of the flattened rows."""
    z = F.normalize(x.flatten(1).float(), dim=1, eps=1e-8)
    return z @ z.T


def select_overlapping(
    pixel_sim: torch.Tensor,
    feature_sim: torch.Tensor | None,
    pixel_threshold: float,
    feature_threshold: float,
    budget: int,
) -> list[int]:
    """Indices (within one class) to re-initialise; at most ``budget`` of them."""
    n = pixel_sim.shape[0]
    over = pixel_sim > pixel_threshold
    if feature_sim is not None:
        over = over | (feature_sim > feature_threshold)
    over = over & ~torch.eye(n, dtype=torch.bool, device=over.device)
    over = over & over.T
    alive = torch.ones(n, dtype=torch.bool, device=over.device)
    chosen: list[int] = []
    while len(chosen) < budget:
        live = over & alive.view(1, -1) & alive.view(-1, 1)
        counts = live.sum(1)
        if int(counts.max()) == 0:
            break
        top = int(counts.max())
        i = int(torch.nonzero(counts == top).view(-1)[-1])
        chosen.append(i)
        alive[i] = False
    return chosen


def class_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise (1 - cosine) between that class's images."""
    vals = []
    for c in labels.unique():
        x = images[labels == c]
        n = x.shape[0]
        if n < 2:
            continue
        sim = cosine_matrix(x)
        off = sim[~torch.eye(n, dtype=torch.bool, device=sim.device)]
        vals.append(float((1 - off).mean()))
    return float(sum(vals) / len(vals)) if vals else float("nan")


def max_overlap(images: torch.Tensor, labels: torch.Tensor) -> float:
    """The highest same-class pixel cosine similarity in the set (NaN if ipc = 1)."""
    best = float("nan")
    for c in labels.unique():
        x = images[labels == c]
        n = x.shape[0]
        if n < 2:
            continue
        sim = cosine_matrix(x)
        m = float(sim[~torch.eye(n, dtype=torch.bool, device=sim.device)].max())
        best = m if best != best else max(best, m)
    return best
