"""Dynamic Overlap Mitigation: find same-class synthetic images that collapsed together and
re-initialise them.

One DOM event (every ``every`` iterations within ``[start, stop]`` of the run), per class:
the images' cosine similarities in pixel space and in the reference expert's features
(expert 0 at the epoch ``feature_epoch`` names) flag a pair when it is over its threshold in
either; while some flagged pair is left, the image in the most flagged pairs is removed (ties:
the later index), at most ``max(1, int(max_replace_frac · ipc))`` per class, so one image of
every overlapping group survives. The engine re-initialises the removed images
(:meth:`meddistill.distill.tm.TrajectoryMatching.dom_step`).

Variants of this rule (other spaces, a rate rule, k-center re-initialisation, retraining,
events at stage boundaries) were compared on validation and rejected; they are not part of the
package (docs/results/dom-variants.md names the commit that has them).

The selection functions are pure (tensors in, indices out) and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from meddistill.config import setting
from meddistill.errors import ConfigError

View = tuple[torch.Tensor, float]  # (m, m) cosine similarities of one class's images, threshold


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) → (n, n) cosine similarities of the flattened rows."""
    z = F.normalize(x.flatten(1).float(), dim=1, eps=1e-8)
    return z @ z.T


# ---------------------------------------------------------------------------- selection


def overlap_mask(views: list[View]) -> torch.Tensor:
    """(m, m) bool: pairs i ≠ j over the threshold in any view (and in both directions)."""
    over = None
    for sim, thr in views:
        hit = sim > thr
        over = hit if over is None else over | hit
    n = over.shape[0]
    over = over & ~torch.eye(n, dtype=torch.bool, device=over.device)
    return over & over.T


def greedy_overlapping(over: torch.Tensor, budget: int) -> list[int]:
    """While a flagged pair is left among the kept images, remove the image in the most flagged
    pairs (ties: the later index); at most ``budget`` images, in the order removed."""
    n = over.shape[0]
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


def select_overlapping(
    pixel_sim: torch.Tensor,
    feature_sim: torch.Tensor | None,
    pixel_threshold: float,
    feature_threshold: float,
    budget: int,
) -> list[int]:
    """The DOM selection within one class: at most ``budget`` indices."""
    views = [(pixel_sim, pixel_threshold)] + ([] if feature_sim is None else [(feature_sim, feature_threshold)])
    return greedy_overlapping(overlap_mask(views), budget)


def replace_budget(dc: DOMConfig, n: int) -> int:
    """At most this many of a class's ``n`` images are replaced per event."""
    return max(1, int(dc.max_replace_frac * n))


# --------------------------------------------------------------------------------- config


#: DOM variant options compared on validation and removed (docs/results/dom-variants.md; they live
#: at tag studies-2026-12) → the value at which each gave the one behaviour DOM keeps. A run folder
#: written before their removal stores them; at these values it still reads.
RETIRED = {
    "when": "every", "space": "reference", "gradient_threshold": 0.9, "rule": "threshold", "rate": 0.1,
    "reinit": "random", "retrain": "none", "retrain_boost": 10.0, "retrain_window": 20,
}  # fmt: skip


def drop_retired(section: dict[str, Any], where: str) -> dict[str, Any]:
    """A stored DOM section without the retired options at their kept values; another value is a
    one-line error naming the variant (it needs the version that had it)."""
    out = dict(section)
    for key, kept in RETIRED.items():
        if key in out:
            value = out.pop(key)
            if value != kept:
                raise ConfigError(
                    f"{where}.{key}={value!r} is a DOM variant removed after it lost on validation "
                    f"(docs/results/dom-variants.md); run it with the tagged version studies-2026-12"
                )
    return out


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
    # the reference expert epoch of the feature space: ``last`` — expert 0's final epoch
    # (experts.epochs: the run needs fully trained experts); ``read`` — the last epoch the run's
    # schedule reads (experts trained on demand suffice)
    feature_epoch: str = setting("read", choices=("last", "read"), keyless_at="last")

    def check_fields(self, prefix: str) -> None:
        """The checks across fields (:func:`meddistill.config.validate` calls it)."""
        if self.start > self.stop:
            raise ConfigError(f"{prefix}start ({self.start}) is after {prefix}stop ({self.stop}): DOM would never run")


# ----------------------------------------------------------------------------- monitoring


def _same_class_pairs(images: torch.Tensor, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Per class with two images or more: the cosine similarities of its distinct image pairs
    (the off-diagonal of its similarity matrix)."""
    for c in labels.unique():
        x = images[labels == c]
        n = x.shape[0]
        if n >= 2:
            yield cosine_matrix(x)[~torch.eye(n, dtype=torch.bool, device=x.device)]


def class_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise (1 - cosine) between that class's images."""
    vals = [float((1 - off).mean()) for off in _same_class_pairs(images, labels)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def max_overlap(images: torch.Tensor, labels: torch.Tensor) -> float:
    """The highest same-class pixel cosine similarity in the set (NaN if ipc = 1)."""
    peaks = [float(off.max()) for off in _same_class_pairs(images, labels)]
    return max((p for p in peaks if p == p), default=float("nan"))  # a NaN class is passed over
