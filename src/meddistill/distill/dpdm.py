"""DP-DM: distribution matching with differential privacy (the NDPDC / Dosser lineage, as DM:
mean embeddings under randomly initialised nets), in two stages so that synthesis never reads
a real image.

1. :func:`noisy_class_means` — the only stage that reads the train split. Each iteration ``t``:
   a fresh random net (``make_net(t)``, data-independent), one DSA seed drawn from the
   generator, and per class ``c`` a Poisson sample (each image of the class independently with
   rate ``q_c``); each sampled image's penultimate embedding is clipped to L2 norm ``C``; the
   class's sum gets N(0, σ²C²) noise and is divided by the *expected* count ``q_c·N_c``. The
   released object (:class:`NoisyMeans`) is the (T, K, D) tensor of noisy class means plus the
   per-iteration DSA seeds (data-independent).
2. :func:`match_noisy_means` — moves a synthetic set so that, under the same net and the same
   augmentation, the mean of its *clipped* embeddings per class matches the released means
   (clipping both sides matches like with like).

Accounting. One image belongs to one class, so adding or removing it changes one class's sum by
at most ``C``; within an iteration that is one Poisson-subsampled Gaussian with the rate of its
class. The worst case over images is the largest per-class rate, so the accountant is given
``max_c q_c`` for ``T`` steps (:func:`plan_dpdm`): with ``q_c = b / N_c`` (``b`` expected images
per class and iteration) the smallest class sets ε — MedMNIST is imbalanced. The per-class rates
are computed from the class counts N_c, which are treated as public (MedMNIST publishes them;
they are recorded with the set); a user who wants them private passes rates of their own.

DM runs as DP-DM under ``--dp-epsilon`` (``distill/dm_dc.py``: ``dp_dm_release`` is its
registration's ``release``, computed before the train split is sealed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from meddistill.augment import DSAConfig, dsa
from meddistill.dp import DEFAULT_ACCOUNTANT, DPSettings, check_per_sample, clip_rows, gaussian_noise, poisson_sample
from meddistill.errors import ConfigError
from meddistill.nets import NetSpec, create_model
from meddistill.utils import derive_seed


def class_rates(class_counts: Sequence[int], batch_per_class: float) -> tuple[float, ...]:
    """Per-class Poisson rates ``min(1, b / N_c)``: ``b`` expected real images per class and
    iteration (all of a class smaller than ``b``)."""
    if batch_per_class <= 0:
        raise ConfigError(f"DP-DM needs a positive expected batch per class, got {batch_per_class}")
    if not class_counts or min(class_counts) < 1:
        raise ConfigError(f"DP-DM needs at least one train image in every class, got counts {list(class_counts)}")
    return tuple(min(1.0, batch_per_class / n) for n in class_counts)


@dataclass(frozen=True)
class DPDMPlan:
    """DP-DM's mechanism: ``iterations`` releases, per-class ``rates``, clipping norm
    ``max_norm``, noise multiplier ``noise_multiplier`` (0 = no noise), and the accounting
    (``dp``: None when ε = inf)."""

    iterations: int
    rates: tuple[float, ...]
    max_norm: float
    noise_multiplier: float
    dp: DPSettings | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dp"] = None if self.dp is None else self.dp.to_dict()
        return d


def plan_dpdm(
    class_counts: Sequence[int],
    iterations: int,
    batch_per_class: float,
    epsilon: float,
    delta: float,
    max_norm: float,
    accountant: str = DEFAULT_ACCOUNTANT,
    rates: Sequence[float] | None = None,
) -> DPDMPlan:
    """Calibrate DP-DM for (ε, δ): the accountant sees ``max(rates)`` (the smallest class's rate
    by default) for ``iterations`` steps. ``rates`` overrides :func:`class_rates`."""
    if iterations < 1:
        raise ConfigError(f"DP-DM needs at least one iteration, got {iterations}")
    rates = tuple(float(r) for r in rates) if rates is not None else class_rates(class_counts, batch_per_class)
    if len(rates) != len(class_counts) or not all(0 < r <= 1 for r in rates):
        raise ConfigError(f"DP-DM needs one rate in (0, 1] per class, got {list(rates)}")
    dp = DPSettings.plan(epsilon, delta, max_norm, max(rates), iterations, accountant)
    sigma = 0.0 if dp is None else dp.noise_multiplier
    return DPDMPlan(int(iterations), rates, float(max_norm), sigma, dp)


@dataclass(frozen=True)
class NoisyMeans:
    """What DP-DM releases: ``means`` (T, K, D) noisy class means of clipped embeddings, and the
    DSA seed of each iteration (drawn from the generator, independent of the data)."""

    means: torch.Tensor
    aug_seeds: tuple[int, ...]


def random_net_factory(
    spec: NetSpec,
    in_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    device: torch.device,
    tag: str = "dpdm-net",
) -> Callable[[int], nn.Module]:
    """``make_net(t)``: a frozen random net seeded by ``derive_seed(seed, tag, t)`` (the caller's
    RNG untouched), as DM's ``fresh_net``; both stages call it with the same ``t``."""

    def make_net(t: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, tag, t))
            net = create_model(spec, in_shape, num_classes).to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    return make_net


def _embed(net: nn.Module, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    return torch.cat([net(x[i : i + chunk], features=True) for i in range(0, len(x), chunk)])


@torch.no_grad()
def noisy_class_means(
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: DPDMPlan,
    make_net: Callable[[int], nn.Module],
    generator: torch.Generator,
    aug: DSAConfig | None = None,
    device: torch.device | None = None,
) -> NoisyMeans:
    """Stage 1 (the DP mechanism): the noisy per-class means of clipped embeddings for every
    iteration of ``plan``. ``generator`` (CPU) draws the DSA seeds, the Poisson samples and the
    noise. ``aug`` should have ``batch_mode`` on (one draw per batch, as DM's siamese DSA); each
    image's augmentation depends on the seed only, so it is part of its per-sample computation.
    A class sampled empty contributes noise only."""
    device = device or images.device
    num_classes = len(plan.rates)
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    out = []
    seeds = []
    for t in range(plan.iterations):
        net = make_net(t)
        check_per_sample(net)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        seeds.append(seed)
        row = []
        for c, idx in enumerate(members):
            if not len(idx):
                raise ConfigError(f"DP-DM: class {c} has no train image")
            pick = idx[poisson_sample(len(idx), plan.rates[c], generator)]
            x = images[pick].to(device)
            if len(x):
                total = clip_rows(_embed(net, dsa(x, seed, aug)).float(), plan.max_norm).sum(0)
            else:  # every registered net declares feature_dim (the net contract)
                total = torch.zeros(net.feature_dim, device=device)
            total = total + gaussian_noise(total.numel(), plan.noise_multiplier * plan.max_norm, generator, device)
            row.append(total / (plan.rates[c] * len(idx)))
        out.append(torch.stack(row))
    return NoisyMeans(torch.stack(out), tuple(seeds))


def match_noisy_means(
    images: torch.Tensor,
    labels: torch.Tensor,
    released: NoisyMeans,
    make_net: Callable[[int], nn.Module],
    opt: torch.optim.Optimizer,
    max_norm: float,
    aug: DSAConfig | None = None,
    iterations: Sequence[int] | None = None,
) -> list[float]:
    """Stage 2 (post-processing): for each released iteration ``t`` (default all, in order) one
    step of ``opt`` on ``images`` (a leaf it holds), loss Σ_c ||released_c − mean clip(f(DSA(syn_c)))||²
    under ``make_net(t)`` and the iteration's DSA seed. Reads no real image. Returns the losses;
    a step whose gradient is not finite is skipped (as DM's ``image_step``)."""
    losses = []
    ts = range(released.means.shape[0]) if iterations is None else iterations
    for t in ts:
        net = make_net(t)
        loss = images.new_zeros(())
        for c in range(released.means.shape[1]):
            syn = images[labels == c]
            if not len(syn):
                continue
            f = clip_rows(net(dsa(syn, released.aug_seeds[t], aug), features=True).float(), max_norm)
            loss = loss + ((released.means[t, c].to(f.device) - f.mean(0)) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if images.grad is not None and torch.isfinite(images.grad).all():
            opt.step()
        losses.append(float(loss.detach()))
    return losses


def expected_noise_std(plan: DPDMPlan, class_count: int, c: int) -> float:
    """Per-coordinate std of the noise on class ``c``'s released mean: σ·C / (q_c·N_c)."""
    return plan.noise_multiplier * plan.max_norm / (plan.rates[c] * class_count) if class_count else math.inf
