"""Formal differential privacy: accounting, Poisson sampling, DP-SGD and DP expert training,
and the guard that keeps the real train images out of a DP distillation.

The pieces, wired in by the ``dp:`` config section (``--dp-epsilon``), ``experts.train_experts``
and ``pipeline.private_context`` (docs/privacy.md):

- **Accounting** (:func:`calibrate_noise`, :func:`spent_epsilon`, :class:`DPSettings`) on
  Opacus's accountants (RDP by default, PRV optional; ``pip install 'meddistill[dp]'``). Opacus
  is imported only when a budget is accounted, so nothing else loads it.
- **Poisson sampling** (:func:`poisson_sample`): every example in every step independently
  with probability ``q`` — a variable, possibly empty batch, which is what the accountants'
  subsampled-Gaussian analysis assumes (a shuffled fixed-size batch is not).
- **DP-SGD** (:func:`per_sample_grads`, :func:`clip_rows`, :func:`noisy_gradient`): per-sample
  gradients from ``torch.func``, each clipped to ``max_grad_norm`` C, Gaussian noise of std
  σ·C on their sum, divided by the *expected* batch size q·N (Opacus's ``expected_batch_size``
  normalisation: dividing by the drawn size would make the divisor depend on the data).
- **DP experts** (:func:`train_dp_expert`): one expert's trajectory (epochs + 1, P), seeded and
  resumable like :func:`meddistill.experts.train_one_expert`.
- **The guard** (:class:`SealedSplit`, :func:`seal_train`): the train split with its images
  and labels replaced by a :class:`~meddistill.errors.PrivacyError` on access.

Scope of the guarantee: (ε, δ)-DP under add/remove-one adjacency of the train split, for
everything computed from the train images through these mechanisms (every checkpoint of every
expert, composed). Public by assumption: N and the class counts (they set δ, the sample rates
and DP-DM's divisors). Not covered yet: ``MedDataset.mean``/``std``, which the loader measures
on the train split and every image is normalised with — a DP run must normalise with fixed
values (or a DP estimate) for the guarantee to hold. Two honest limits, both also true of
Opacus without its ``secure_mode``:
the noise comes from torch's seeded Mersenne-Twister generator (reproducible and resumable,
not a cryptographic RNG), and floating-point effects on the Gaussian sampler (Mironov 2012)
are not defended against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from meddistill.augment import DSAConfig, dsa
from meddistill.errors import ConfigError, PrivacyError
from meddistill.nets.functional import FlatParams, flatten_params, load_flat
from meddistill.utils import derive_seed

ACCOUNTANTS = ("rdp", "prv")  # Opacus's "gdp" is an asymptotic approximation, not a bound: left out
DEFAULT_ACCOUNTANT = "rdp"
CLIP_EPS = 1e-6  # as Opacus: factor C / (norm + 1e-6), so a clipped norm is strictly below C


# --------------------------------------------------------------------------------------------
# accounting


def _accountant(name: str):
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown DP accountant {name!r}; choose one of {ACCOUNTANTS}")
    try:
        from opacus.accountants import create_accountant
    except ImportError:
        raise ConfigError("differential privacy needs Opacus (>= 1.5): pip install 'meddistill[dp]'") from None
    return create_accountant(mechanism=name)


def _check_budget(delta: float, sample_rate: float, steps: int) -> None:
    if not 0 < delta < 1:
        raise ConfigError(f"DP delta must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"DP sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError(f"DP steps must be at least 1, got {steps}")


def total_steps(num_experts: int, epochs: int, steps_per_epoch: int) -> int:
    """The noisy steps every released checkpoint together took: each expert is trained on the
    same train split, so its whole history counts, and the experts' histories compose."""
    return int(num_experts) * int(epochs) * int(steps_per_epoch)


def poisson_schedule(n_train: int, batch_size: int) -> tuple[float, int]:
    """(sample rate q, steps per epoch) for a nominal ``batch_size``, as Opacus's
    ``DPDataLoader`` derives them: ``ceil(N / B)`` steps per epoch and q = 1 / that, so an
    epoch sees each example once in expectation and the expected batch is about B."""
    if n_train < 1 or batch_size < 1:
        raise ConfigError(f"DP needs at least one train image and a batch of one (N={n_train}, B={batch_size})")
    steps = math.ceil(n_train / batch_size)
    return 1.0 / steps, steps


def default_delta(n_train: int) -> float:
    """δ for ``n_train`` train images: 1/(10·N) rounded *down* to one significant digit
    (N = 4708 → 2e-05, N = 546 → 1e-04, N = 60000 → 1e-06).

    δ bounds the probability that the guarantee fails outright; a mechanism that publishes one
    random record in full is (0, 1/N)-DP, so δ must be well below 1/N. A tenth of 1/N is the
    common margin, and rounding down (never up) to one digit keeps it below 1/(10·N) while
    giving a number a reader recognises in config.yaml and on an export card."""
    if n_train < 1:
        raise ConfigError(f"default DP delta needs at least one train image, got N={n_train}")
    m = 10 * int(n_train)
    k = len(str(m))  # 10**(k-1) <= m < 10**k
    digit = 10**k // m  # 1..10 (10 only when m is a power of ten)
    return float(f"{digit}e-{k}")


def spent_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = DEFAULT_ACCOUNTANT
) -> float:
    """ε the accountant gives for ``steps`` Poisson-subsampled Gaussian steps at
    (σ = ``noise_multiplier``, q = ``sample_rate``) and ``delta``; ``inf`` without noise.

    ``steps`` is the total over everything released (:func:`total_steps`). One history per
    expert with equal (σ, q) composes to one history entry of the summed steps — what Opacus's
    own ``accountant.step`` does with consecutive equal steps — so the history is that entry."""
    _check_budget(delta, sample_rate, steps)
    if noise_multiplier is None or noise_multiplier <= 0:
        return math.inf
    acc = _accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=float(delta)))


def calibrate_noise(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = DEFAULT_ACCOUNTANT
) -> float | None:
    """The noise multiplier σ with which ``steps`` steps at ``sample_rate`` spend at most
    ``epsilon`` (and within Opacus's tolerance 0.01 of it); ``None`` for ``epsilon = inf`` (no
    DP). Opacus's ``get_noise_multiplier`` (a bisection on the same accountant)."""
    if epsilon is None or math.isinf(epsilon):
        return None
    if not epsilon > 0 or math.isnan(epsilon):
        raise ConfigError(f"DP epsilon must be positive (or inf for no DP), got {epsilon}")
    _check_budget(delta, sample_rate, steps)
    _accountant(accountant)  # the name and the installation, checked in one line
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=float(epsilon),
                target_delta=float(delta),
                sample_rate=float(sample_rate),
                steps=int(steps),
                accountant=accountant,
            )
        )
    except ValueError as exc:  # "The privacy budget is too low."
        raise ConfigError(
            f"DP epsilon {epsilon} cannot be reached in {steps} steps at q={sample_rate:.4g}: {exc}"
        ) from None


@dataclass(frozen=True)
class DPSettings:
    """A planned DP mechanism, everything an accountant needs to recompute its ε.

    ``epsilon`` is the ε spent, as :func:`spent_epsilon` computes it from the other fields (at
    most ``target_epsilon``), so ``recompute()`` equals it exactly; ``steps`` is the total over
    every released checkpoint (:func:`total_steps`) or DP-DM iteration."""

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    target_epsilon: float

    @classmethod
    def plan(
        cls,
        target_epsilon: float,
        delta: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> DPSettings | None:
        """Calibrate σ for the target; ``None`` for ``target_epsilon = inf`` (no DP)."""
        if not max_grad_norm > 0 or math.isinf(max_grad_norm):
            raise ConfigError(f"DP clipping norm must be positive and finite, got {max_grad_norm}")
        sigma = calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant)
        if sigma is None:
            return None
        eps = spent_epsilon(sigma, sample_rate, steps, delta, accountant)
        return cls(
            eps,
            float(delta),
            float(max_grad_norm),
            accountant,
            sigma,
            float(sample_rate),
            int(steps),
            float(target_epsilon),
        )

    def recompute(self) -> float:
        """ε recomputed by the accountant from the recorded parameters."""
        return spent_epsilon(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DPSettings:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------------------------
# sampling, per-sample gradients, clipping, noise


def poisson_sample(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of ``n`` examples independently with
    probability ``sample_rate`` (the batch may be empty). ``generator`` is a CPU generator."""
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


def check_per_sample(net: nn.Module) -> None:
    """Refuse a net whose output for one example depends on the others (batch norm in
    training mode): per-sample gradients, hence clipping and the guarantee, are undefined."""
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"DP needs per-sample computation, but {type(m).__name__} {name or 'net'} mixes the examples of a "
                "batch; use net.norm=instance (or group/none)"
            )


def per_sample_grads(
    net: nn.Module, spec: FlatParams, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """(B, P) gradients of each example's cross-entropy w.r.t. the flat parameters ``flat``.

    ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) rather than Opacus's
    ``GradSampleModule``: every meddistill net already runs on one flat parameter vector through
    ``functional_call`` (nets/functional.py; trajectories, trajectory matching and the stored
    experts are that vector), so the per-sample gradient *is* a row of the flat layout,
    clipping is one norm per row, and the DP step is the same function of the same vector on
    every registered net, CPU or CUDA. ``GradSampleModule`` wraps a module with per-layer hooks
    that need a grad sampler for each layer type (its functorch fallback is this same
    ``vmap``), keeps per-parameter ``grad_sample`` tensors, and its ``PrivacyEngine`` swaps the
    optimizer and data loader — none of which meets the flat form. Instance norm here is
    ``GroupNorm`` with one group per channel: per-sample, so ``vmap`` over single examples is
    exact (batch norm is refused by :func:`check_per_sample`)."""

    def loss_one(p: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, spec.unflatten(p), (xi.unsqueeze(0),))
        return F.cross_entropy(out.float(), yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="error")(flat, x, y)


def clip_rows(rows: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``max_norm`` (rows already within it are kept, up to
    Opacus's factor ``C / (norm + 1e-6)`` capped at 1)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)


def gaussian_noise(size: int, std: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """N(0, std²) of ``size`` drawn on the CPU ``generator`` (the same draws on every device),
    then moved to ``device``."""
    return (torch.randn(size, generator=generator) * std).to(device)


def noisy_gradient(
    net: nn.Module,
    flat: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch: float,
    generator: torch.Generator,
    chunk: int = 64,
) -> torch.Tensor:
    """DP-SGD's gradient for one Poisson batch (x, y), possibly empty: (Σ clip(g_i) + N(0, σ²C²))
    / (q·N). Per-sample gradients are computed ``chunk`` examples at a time (memory B×P)."""
    spec = FlatParams.of(net)
    total = torch.zeros(spec.total, device=flat.device, dtype=torch.float32)
    flat = flat.detach()
    for i in range(0, len(x), chunk):
        g = per_sample_grads(net, spec, flat, x[i : i + chunk], y[i : i + chunk])
        total += clip_rows(g.float(), max_grad_norm).sum(0)
    total += gaussian_noise(spec.total, noise_multiplier * max_grad_norm, generator, flat.device)
    return total / expected_batch


# --------------------------------------------------------------------------------------------
# DP experts


@dataclass(frozen=True)
class DPSGDPlan:
    """How one DP expert trains (the expert settings plus the DP mechanism).

    ``sample_rate``/``steps_per_epoch`` as :func:`poisson_schedule` gives them; ``noise_multiplier``
    from :class:`DPSettings` (0 trains with clipping and no noise, for tests and ε = inf
    comparisons of the clipping alone)."""

    lr: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    dsa: DSAConfig | None = None
    chunk: int = 64  # examples per per-sample-gradient call

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dsa"] = None if self.dsa is None else asdict(self.dsa)
        return d


@dataclass(frozen=True)
class DPExpertState:
    """What resuming a DP expert needs: the trajectory so far (epochs done + 1, P) and the SGD
    momentum buffer as one flat vector (None without momentum)."""

    trajectory: torch.Tensor
    momentum: torch.Tensor | None = None

    @property
    def epochs_done(self) -> int:
        return int(self.trajectory.shape[0]) - 1


def epoch_generator(seed: int, k: int, epoch: int) -> torch.Generator:
    """The CPU generator of expert ``k``'s epoch ``epoch``: its Poisson batches and its noise.
    Seeded per (expert, epoch), so an epoch draws the same whether the run started there or not."""
    return torch.Generator().manual_seed(derive_seed(seed, "dp-expert", k, epoch))


def _momentum_flat(opt: torch.optim.Optimizer, net: nn.Module) -> torch.Tensor | None:
    bufs = [opt.state[p].get("momentum_buffer") for p in net.parameters()]
    if any(b is None for b in bufs):
        return None
    return torch.cat([b.reshape(-1) for b in bufs]).detach().cpu()


def train_dp_expert(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: DPSGDPlan,
    seed: int,
    k: int,
    epochs: int,
    device: torch.device,
    resume: DPExpertState | None = None,
    on_epoch: Callable[[int, DPExpertState], None] | None = None,
) -> torch.Tensor:
    """Train expert ``k`` with DP-SGD to epoch ``epochs``; its (epochs + 1, P) float32 trajectory.

    ``net`` holds the initial parameters (row 0): the caller seeds its construction as
    ``train_one_expert`` does (``torch.manual_seed(derive_seed(experts.seed, "expert-init", k))``).
    Each epoch draws its Poisson batches and noise from :func:`epoch_generator` and its DSA seeds
    from ``derive_seed(seed, "dp-expert-dsa", k, epoch, step)`` (DSA acts on each sampled image
    before its gradient: part of the per-sample computation). ``resume`` continues from a state
    ``on_epoch`` handed out; the result is bit for bit the uninterrupted one. SGD (momentum,
    weight decay) acts on the noisy gradient only, so it is post-processing. fp32 only."""
    check_per_sample(net)
    net = net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay)
    if resume is not None:
        rows = list(resume.trajectory.float().unbind(0))
        load_flat(net, rows[-1].to(device))
        if resume.momentum is not None:
            views = FlatParams.of(net).unflatten(resume.momentum.to(device))
            for name, p in net.named_parameters():
                opt.state[p]["momentum_buffer"] = views[name].clone()
    else:
        rows = [flatten_params(net).cpu()]
    n = len(images)
    expected = plan.sample_rate * n
    for epoch in range(len(rows) - 1, epochs):
        gen = epoch_generator(seed, k, epoch)
        for step in range(plan.steps_per_epoch):
            idx = poisson_sample(n, plan.sample_rate, gen)
            xb, yb = images[idx].to(device), labels[idx].to(device)
            if len(idx):
                xb = dsa(xb, derive_seed(seed, "dp-expert-dsa", k, epoch, step), plan.dsa)
            flat = flatten_params(net).to(device)
            g = noisy_gradient(net, flat, xb, yb, plan.max_grad_norm, plan.noise_multiplier, expected, gen, plan.chunk)
            views = FlatParams.of(net).unflatten(g)
            for name, p in net.named_parameters():
                p.grad = views[name].clone()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rows.append(flatten_params(net).cpu())
        if on_epoch is not None:
            on_epoch(epoch, DPExpertState(torch.stack(rows), _momentum_flat(opt, net)))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------
# the guard

SEALED_WHY = (
    "under differential privacy the distillation may not touch the real train images: they reach it only "
    "through the DP mechanism that accounts for them (the DP experts or DP-DM's noisy means)"
)


class SealedSplit:
    """Stands in for a :class:`~meddistill.data.loader.Split` (the train split) under DP: its
    length (N, public: it sets δ and the sample rate) is kept; reading its images, its labels
    or anything else raises :class:`PrivacyError` in one line."""

    __slots__ = ("_n", "_why")

    def __init__(self, n: int, why: str = SEALED_WHY) -> None:
        object.__setattr__(self, "_n", int(n))
        object.__setattr__(self, "_why", why)

    def __len__(self) -> int:
        return self._n

    def _refuse(self, what: str):
        raise PrivacyError(f"train split {what} sealed: {self._why}")

    @property
    def images(self) -> torch.Tensor:
        self._refuse("images")

    @property
    def labels(self) -> torch.Tensor:
        self._refuse("labels")

    def __getitem__(self, item):
        self._refuse("indexing")

    def __iter__(self):
        self._refuse("iteration")

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle protocol look-ups
            raise AttributeError(name)
        self._refuse(f"attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        self._refuse(f"assignment to {name!r}")

    def __reduce__(self):  # picklable: forked expert workers and Ray cells receive the dataset
        return type(self), (self._n, self._why)

    def __repr__(self) -> str:
        return f"SealedSplit(n={self._n})"


def seal_train(ds):
    """A copy of the :class:`~meddistill.data.loader.MedDataset` ``ds`` whose train split is sealed
    (val and test stay readable). ``ds.mean``/``ds.std`` were measured on the train split: a DP
    run must normalise with data-independent values (see the module docstring)."""
    return replace(ds, train=SealedSplit(len(ds.train)))


# --------------------------------------------------------------------------------------------
# the run: normalisation, the experts' budget, what may run under DP

PUBLIC_MEAN = 0.5  # data-independent normalisation of a DP run: pixels in [0, 1] → [-1, 1]
PUBLIC_STD = 0.5


def public_normalisation(ds):
    """``ds`` re-expressed with the fixed :data:`PUBLIC_MEAN`/:data:`PUBLIC_STD` per channel
    instead of the train split's mean and std (which are statistics of the patients' images
    that no accountant covers). Same pixels, another affine map; every split alike."""
    mean = torch.full_like(ds.mean, PUBLIC_MEAN)
    std = torch.full_like(ds.std, PUBLIC_STD)

    def renorm(split):
        return replace(split, images=(ds.denormalize(split.images) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))

    return replace(ds, train=renorm(ds.train), val=renorm(ds.val), test=renorm(ds.test), mean=mean, std=std)


def check_public(ds) -> None:
    """Refuse data normalised with the train split's statistics under DP (``pipeline.load_data``
    applies :func:`public_normalisation`; a caller passing its own dataset must too)."""
    if not (bool((ds.mean == PUBLIC_MEAN).all()) and bool((ds.std == PUBLIC_STD).all())):
        raise ConfigError(
            "under --dp-epsilon the data must be normalised with fixed values (meddistill.dp.public_normalisation; "
            "pipeline.load_data does it), not the train split's mean and std"
        )


def run_delta(cfg, n_train: int) -> float:
    """The run's δ: ``dp.delta``, or :func:`default_delta` when it is 0."""
    return cfg.dp.delta if cfg.dp.delta > 0 else default_delta(n_train)


def expert_settings(cfg, n_train: int) -> DPSettings:
    """The DP-SGD mechanism of a run's expert buffer: Poisson rate and steps from the expert
    batch size, noise calibrated so that every epoch of every one of ``experts.num_experts``
    experts together spends ``dp.epsilon`` (all checkpoints are released to distillation)."""
    e = cfg.experts
    rate, per_epoch = poisson_schedule(n_train, e.batch_size)
    steps = total_steps(e.num_experts, e.epochs, per_epoch)
    delta = run_delta(cfg, n_train)
    settings = DPSettings.plan(cfg.dp.epsilon, delta, cfg.dp.max_grad_norm, rate, steps, cfg.dp.accountant)
    assert settings is not None  # epsilon > 0 is finite (the config's range)
    return settings


def refusal(cfg, spec) -> str | None:
    """Why the run ``cfg`` of the method ``spec`` (a :class:`~meddistill.methods.MethodSpec`)
    cannot be differentially private, in one line; None when it can."""
    name = spec.name
    if spec.private == "":
        why = spec.not_private or (
            "it selects real train images" if not spec.synthesizes else "it reads real train images at every iteration"
        )
        return f"--dp-epsilon: method {name!r} cannot be differentially private ({why})"
    section = cfg.distill.section()
    init = getattr(section, "init", None)
    if init is not None and init != "noise":
        return (
            f"--dp-epsilon: init={init} starts from real train images (or from DM on them), which the budget "
            "does not cover; start from noise: --set method.init=noise"
        )
    if cfg.net.norm == "batch":
        return "--dp-epsilon: net.norm=batch mixes examples within a batch (no per-sample gradients); use instance"
    return None
