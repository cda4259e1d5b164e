"""Dynamic Overlap Mitigation: find same-class synthetic images that collapsed together,
re-initialise them from real images and (optionally) retrain them harder for a while.

One DOM event, per class: measure overlap in a *space* (:data:`SPACES`), let a *rule*
(:data:`SELECTION_RULES`) pick the images to replace, draw each one's new real image by a
*reinit* strategy (:data:`REINITS`), and mark it for a *retrain* policy (:data:`RETRAINS`,
a per-image lr multiplier in the engine's image update for ``retrain_window`` iterations).
*When* an event happens is :data:`TRIGGERS`. The defaults of all five are the original DOM
(every ``every`` iterations; pixel + reference-expert feature cosine over fixed thresholds;
random unused real images; no retraining), and at their defaults the options are left out of
the run identity, so runs stored before they existed keep their keys.

A space turns the class's images into one or more cosine-similarity matrices, each with its
threshold (a *view*). The threshold rule flags a pair when it is over the threshold in any
view and greedily removes, while some flagged pair is left, the image in the most flagged
pairs (ties: the later index), up to a budget; one image of every overlapping group survives.
The rate rule ranks by redundancy instead: ``max_j (sim_ij − threshold)`` over the other
images j still kept and over the views (for a one-view space: the highest same-class
similarity, shifted by a constant), and removes the most redundant image, ``k`` times
(ties: the later index), so it fires at a known rate however high or low similarities are.

All selection and k-center functions are pure (tensors in, indices out) and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from meddistill.config import setting
from meddistill.errors import ConfigError
from meddistill.nets import FlatParams, call_flat
from meddistill.registry import Registry

View = tuple[torch.Tensor, float]  # (m, m) cosine similarities of one class's images, threshold


# ------------------------------------------------------------------------ similarity spaces


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) → (n, n) cosine similarities of the flattened rows."""
    z = F.normalize(x.flatten(1).float(), dim=1, eps=1e-8)
    return z @ z.T


@dataclass(frozen=True)
class Probe:
    """The net at one trajectory point (a flat parameter vector): what a space and the
    k-center re-initialisation measure images with."""

    net: nn.Module
    spec: FlatParams
    theta: torch.Tensor

    def features(self, x: torch.Tensor, index: torch.Tensor | None = None, bs: int = 1024) -> torch.Tensor:
        """Penultimate features of ``x`` in one forward pass, or of ``x[index]`` ``bs`` images
        per pass (indexed a chunk at a time, never copied at once), on ``theta``'s device."""
        dev = self.theta.device
        n = len(x) if index is None else len(index)
        bs = max(1, n) if index is None else bs  # the synthetic set: one pass, as DOM always did
        with torch.no_grad():
            parts = [
                call_flat(
                    self.net,
                    self.spec,
                    self.theta,
                    (x[i : i + bs] if index is None else x[index[i : i + bs]]).to(dev),
                    features=True,
                )
                for i in range(0, n, bs)
            ]
        return torch.cat(parts)

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, P): each image's gradient of its own cross-entropy (target ``y[i]``: a class id
        or a distribution) w.r.t. the parameters, one image at a time, without augmentation."""
        rows = []
        with torch.enable_grad():
            for i in range(len(x)):
                theta = self.theta.detach().requires_grad_(True)
                out = call_flat(self.net, self.spec, theta, x[i : i + 1].detach().to(theta.device))
                (g,) = torch.autograd.grad(F.cross_entropy(out, y[i : i + 1]), theta)
                rows.append(g)
        return torch.stack(rows)


Views = Callable[[torch.Tensor], list[View]]  # a class's indices into the set → its views


def _reference_views(images: torch.Tensor, targets: torch.Tensor, probe: Probe, dc: DOMConfig) -> Views:
    feats = probe.features(images)
    return lambda ids: [
        (cosine_matrix(images[ids]), dc.pixel_threshold),
        (cosine_matrix(feats[ids]), dc.feature_threshold),
    ]


def _feature_views(images: torch.Tensor, targets: torch.Tensor, probe: Probe, dc: DOMConfig) -> Views:
    feats = probe.features(images)
    return lambda ids: [(cosine_matrix(feats[ids]), dc.feature_threshold)]


def _gradient_views(images: torch.Tensor, targets: torch.Tensor, probe: Probe, dc: DOMConfig) -> Views:
    # per class, so at most ipc × P gradient floats are held at once
    return lambda ids: [(cosine_matrix(probe.gradients(images[ids], targets[ids])), dc.gradient_threshold)]


@dataclass(frozen=True)
class Space:
    """``point``: the parameters the space measures with — ``reference`` (expert 0's last
    epoch) or ``current`` (the expert and start epoch of the iteration DOM follows, the
    trajectory point that iteration's student started from); ``views``: builds the views."""

    point: str
    views: Callable[[torch.Tensor, torch.Tensor, Probe, DOMConfig], Views]


SPACES: Registry[Space] = Registry("DOM space")
SPACES.add("reference", Space("reference", _reference_views))  # pixel cosine + reference-expert feature cosine
SPACES.add("feature", Space("current", _feature_views))  # feature cosine at the current trajectory point
SPACES.add("gradient", Space("current", _gradient_views))  # cosine of per-image student-loss gradients there


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
    """The original DOM selection within one class: at most ``budget`` indices."""
    views = [(pixel_sim, pixel_threshold)] + ([] if feature_sim is None else [(feature_sim, feature_threshold)])
    return greedy_overlapping(overlap_mask(views), budget)


def redundancy_margin(views: list[View]) -> torch.Tensor:
    """(m, m): ``max over views of (sim_ij − threshold)``, made exactly symmetric; −inf on the
    diagonal (an image is not redundant with itself)."""
    m = torch.stack([sim.float() - thr for sim, thr in views]).amax(0)
    m = (m + m.T) / 2
    return m.fill_diagonal_(-math.inf)


def rate_count(rate: float, n: int) -> int:
    """Images the rate rule replaces in a class of ``n``: ``ceil(rate · n)`` (the product
    rounded to 9 decimals first, so 0.14 · 50 is 7, not 8), at most ``n − 1``; 0 when n < 2."""
    if n < 2:
        return 0
    return min(n - 1, math.ceil(round(rate * n, 9)))


def select_most_redundant(margin: torch.Tensor, k: int) -> list[int]:
    """``k`` indices, greedily: the image whose highest margin to another still-kept image is
    largest (ties: the later index) is removed, then the next among the rest. Of two near
    copies the first removal takes one; the other is then no longer redundant with it."""
    n = margin.shape[0]
    alive = torch.ones(n, dtype=torch.bool, device=margin.device)
    chosen: list[int] = []
    for _ in range(min(k, n - 1)):
        red = margin.masked_fill(~alive.view(1, -1), -math.inf).amax(1)
        red = red.masked_fill(~alive, -math.inf)
        i = int(torch.nonzero(red == red.max()).view(-1)[-1])
        chosen.append(i)
        alive[i] = False
    return chosen


def _threshold_rule(views: list[View], dc: DOMConfig) -> list[int]:
    n = views[0][0].shape[0]
    return greedy_overlapping(overlap_mask(views), max(1, int(dc.max_replace_frac * n)))


def _rate_rule(views: list[View], dc: DOMConfig) -> list[int]:
    n = views[0][0].shape[0]
    return select_most_redundant(redundancy_margin(views), rate_count(dc.rate, n))


SELECTION_RULES: Registry[Callable[[list[View], DOMConfig], list[int]]] = Registry("DOM rule")
SELECTION_RULES.add("threshold", _threshold_rule)  # pairs over a threshold; budget max(1, int(max_replace_frac · ipc))
SELECTION_RULES.add("rate", _rate_rule)  # the ceil(rate · ipc) most redundant images of every class


# ------------------------------------------------------------------------------ triggers

TRIGGERS: Registry[Callable[[int, DOMConfig, Callable[[int], int]], bool]] = Registry("DOM trigger")
    # (iterations done, settings, the schedule's stage_of) → an event now (within [start, stop])
TRIGGERS.add("every", lambda it, dc, stage_of: it % dc.every == 0)
TRIGGERS.add("stages", lambda it, dc, stage_of: stage_of(it) != stage_of(it - 1))  # a PTM stage boundary


# ------------------------------------------------------------------------ re-initialisation


class FarthestFirst:
    """Greedy k-center over the rows of ``real`` (features): each call returns the allowed row
    farthest, in cosine distance, from its nearest center (ties: the lower index); the row then
    becomes a center. ``centers``: the features of the images that stay."""

    def __init__(self, real: torch.Tensor, centers: torch.Tensor) -> None:
        self.real = F.normalize(real.flatten(1).float(), dim=1, eps=1e-8)
        c = F.normalize(centers.flatten(1).float(), dim=1, eps=1e-8)
        far = torch.full((len(self.real),), math.inf, device=self.real.device)
        self.dist = (1 - self.real @ c.T).amin(1) if len(c) else far

    def __call__(self, allowed: torch.Tensor) -> int:
        d = self.dist.masked_fill(~allowed.to(self.dist.device), -math.inf)
        j = int(torch.nonzero(d == d.max()).view(-1)[0])
        self.dist = torch.minimum(self.dist, 1 - self.real @ self.real[j])
        return j


def farthest_first(real: torch.Tensor, centers: torch.Tensor, allowed: torch.Tensor, k: int) -> list[int]:
    """``k`` rows of ``real`` by :class:`FarthestFirst`, each pick then no longer allowed; when no
    allowed row is left, every row is allowed again (as the engine does when a class's unused
    real images run out)."""
    pick, allowed, out = FarthestFirst(real, centers), allowed.clone(), []
    for _ in range(k):
        j = pick(allowed if allowed.any() else torch.ones_like(allowed))
        out.append(j)
        allowed[j] = False
    return out


@dataclass
class ReinitInputs:
    """What a re-initialisation strategy may use for one class: the run's generator, the train
    split's images and the class's indices into it (``cls_idx``, the order of the positions a
    picker returns), the set's images of that class that stay (``kept``) and the event's probe."""

    gen: torch.Generator
    train_images: torch.Tensor
    cls_idx: torch.Tensor
    kept: torch.Tensor
    probe: Probe


Picker = Callable[[torch.Tensor], int]  # allowed mask over the class's real images → a position


def _random_picker(inp: ReinitInputs) -> Picker:
    def pick(allowed: torch.Tensor) -> int:
        pool = torch.nonzero(allowed).view(-1)
        return int(pool[int(torch.randint(len(pool), (1,), generator=inp.gen))])

    return pick


def _kcenter_picker(inp: ReinitInputs) -> Picker:
    return FarthestFirst(inp.probe.features(inp.train_images, inp.cls_idx), inp.probe.features(inp.kept))


REINITS: Registry[Callable[[ReinitInputs], Picker]] = Registry("DOM reinit")
REINITS.add("random", _random_picker)  # a random unused real image of the class (the run's generator)
REINITS.add("kcenter", _kcenter_picker)  # the unused real image worst covered by the kept images (probe features)


# --------------------------------------------------------------------------------- retrain


def _boost(in_window: torch.Tensor, boost: float) -> torch.Tensor:
    return torch.where(in_window, boost, 1.0)


def _exclusive(in_window: torch.Tensor, boost: float) -> torch.Tensor:
    if not bool(in_window.any()):
        return torch.ones(in_window.shape)
    return torch.where(in_window, boost, 0.0)


RETRAINS: Registry[Callable[[torch.Tensor, float], torch.Tensor] | None] = Registry("DOM retrain")
RETRAINS.add("none", None)  # replaced images train like the others
RETRAINS.add("boost", _boost)  # lr × retrain_boost for replaced images inside their window, × 1 for the rest
# while any image is in its window only those move (× retrain_boost), the rest × 0
RETRAINS.add("exclusive", _exclusive)


def lr_multipliers(dc: DOMConfig, boost_until: torch.Tensor, it: int) -> torch.Tensor | None:
    """Per-image image-lr multipliers for the update of iteration ``it`` (None: all 1, no
    retrain policy). ``boost_until[i]``: the first iteration after image ``i``'s window."""
    fn = RETRAINS.get(dc.retrain)
    return None if fn is None else fn(boost_until > it, dc.retrain_boost).float()


# --------------------------------------------------------------------------------- config


@dataclass
class DOMConfig:
    """Dynamic Overlap Mitigation settings (PTM's ``dom`` sub-section).

    The variants below are off at their defaults, which are the original DOM, and
    then left out of the run identity:

    - ``when``: ``every`` — an event every ``every`` iterations; ``stages`` — at each PTM stage
      boundary (the first iteration of stages 2, 3, …). Both only within ``[start, stop]``.
    - ``space``: ``reference`` — same-class cosine in pixel space (``pixel_threshold``) and in
      the reference expert's last-epoch features (``feature_threshold``); ``feature`` — in the
      features of the net at the current trajectory point (the expert and start epoch of the
      iteration the event follows; ``feature_threshold``); ``gradient`` — cosine between the
      images' own cross-entropy gradients w.r.t. the parameters at that point, no augmentation
      (``gradient_threshold``): two images with parallel gradients teach the student the same.
    - ``rule``: ``threshold`` — pairs over the thresholds, at most
      ``max(1, int(max_replace_frac · ipc))`` per class and event; ``rate`` — exactly
      ``min(ipc − 1, ceil(rate · ipc))`` per class and event, the most redundant
      (:func:`select_most_redundant`), thresholds only shifting the views against each other.
    - ``reinit``: ``random`` — a random unused real image of the class; ``kcenter`` — greedy
      k-center: the unused real image of the class farthest (cosine distance, in the features
      of the space's point; ``reference`` space: expert 0's last epoch) from its nearest kept
      synthetic image, then the next counting the first as covered. Deterministic.
    - ``retrain``: ``none``; ``boost`` — the replaced images' image lr × ``retrain_boost`` for
      the ``retrain_window`` iterations after their replacement; ``exclusive`` — in those
      windows only the replaced images are updated (× ``retrain_boost``), the others not.
      Momentum is reset on replacement in every case; the windows are checkpointed.
    """

    enabled: bool = True
    every: int = setting(20, lo=1)  # measure overlap every this many iterations
    start: float = setting(0.2, lo=0, hi=1)  # first check after this fraction of the run
    stop: float = setting(0.8, lo=0, hi=1)  # no replacement after this fraction (the rest re-trains them)
    pixel_threshold: float = setting(0.9, lo=-1, hi=1)  # same-class cosine similarity above which images overlap
    feature_threshold: float = setting(0.95, lo=-1, hi=1)
    max_replace_frac: float = setting(0.25, lo=0, hi=1)  # at most this fraction of a class's images per check
    noise: float = setting(0.0, lo=0)  # std of noise added to re-initialised images
    # variants (see the docstring); each at its default is the original DOM
    when: str = setting("every", choices=tuple(TRIGGERS), keyless_at="every")
    space: str = setting("reference", choices=tuple(SPACES), keyless_at="reference")
    gradient_threshold: float = setting(0.9, lo=-1, hi=1, keyless_at=0.9)  # space=gradient, rule=threshold
    rule: str = setting("threshold", choices=tuple(SELECTION_RULES), keyless_at="threshold")
    rate: float = setting(0.1, lo=0, hi=1, keyless_at=0.1)  # rule=rate: this fraction of every class per event
    reinit: str = setting("random", choices=tuple(REINITS), keyless_at="random")
    retrain: str = setting("none", choices=tuple(RETRAINS), keyless_at="none")
    retrain_boost: float = setting(10.0, lo=0, keyless_at=10.0)  # lr multiplier of replaced images
    retrain_window: int = setting(20, lo=1, keyless_at=20)  # iterations after a replacement
    # the reference expert epoch of the ``reference`` space (and of k-center in it): ``last`` —
    # expert 0's final epoch (experts.epochs: the run needs fully trained experts); ``read`` —
    # the last epoch the run's schedule reads (experts trained on demand suffice)
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
