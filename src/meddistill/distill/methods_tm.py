"""Trajectory-matching methods: MTT (baseline), PTM with and without DOM (ours), DATM-style.

Each method owns its config section (``distill.<name>``); they share :class:`TMConfig`, the
settings of the matching engine in :mod:`meddistill.distill.tm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meddistill.config import RunConfig, setting
from meddistill.distill.base import DistillContext, register_method
from meddistill.distill.dom import DOMConfig
from meddistill.distill.init import INIT_NAMES, INITS
from meddistill.distill.schedule import Schedule, datm_schedule, mtt_schedule, ptm_schedule
from meddistill.distill.tm import TrajectoryMatching, epochs_read
from meddistill.distill.tm_auto import resolve_auto_span
from meddistill.errors import ConfigError
from meddistill.registry import Registry
from meddistill.synset import SynSet

TM_READS = ("experts", "net", "dsa")


@dataclass
class TMConfig:
    """The trajectory-matching engine: a student starts at expert epoch ``t`` (drawn from
    ``[min_start_epoch, max_start_epoch)`` by the method's schedule), takes ``syn_steps`` SGD
    steps on the synthetic set and is pulled to expert epoch ``t + expert_epochs``.

    ``syn_steps`` and ``expert_epochs`` default to ``auto``: set from the number of expert SGD
    steps per epoch of the train split (:func:`meddistill.distill.tm_auto.auto_span`) when the
    config is built, and recorded as numbers in the dumped config."""

    iterations: int = setting(200, lo=1)
    syn_steps: int | str = setting("auto", lo=1)  # N student steps
    expert_epochs: int | str = setting("auto", lo=1)  # M: target is expert epoch t + M
    min_start_epoch: int = setting(0, lo=0)
    max_start_epoch: int = setting(8, lo=1)
    lr_img: float = setting(100.0, lo=0, lo_open=True)
    lr_lr: float = setting(1e-7, lo=0)
    lr_init: float = setting(0.01, lo=0, lo_open=True)  # initial learnable student lr
    momentum: float = setting(0.5, lo=0, hi=1)
    batch_syn: int = setting(0, lo=0)  # 0: the whole synthetic set in every student step
    # where the set starts (distill/init.py): DM from noise, chosen on validation among the starts that
    # carry no single patient (docs/results/shareable-init.md); ``real`` for the real-image start
    init: str = setting("dm", choices=INIT_NAMES)
    init_k: int = setting(5, lo=5, keyless_at=5)  # init centroid: real images per centroid, at least
    init_iterations: int = setting(100, lo=1, keyless_at=100)  # init dm: iterations of DM from noise
    memory_saving: bool = False  # recompute the unroll step by step: memory flat in syn_steps, same gradients
    max_grad_norm: float = setting(0.0, lo=0)  # 0: no clipping of the image gradient
    explode_factor: float = setting(20.0, lo=1)  # skip a step whose loss exceeds this × running median


@dataclass
class MTTConfig(TMConfig):
    """Uniform start epochs over ``[min_start_epoch, max_start_epoch)``; its own image lr."""

    lr_img: float = setting(10.0, lo=0, lo_open=True)


@dataclass
class StagedConfig(TMConfig):
    """Progressive stages: the start-epoch window moves from early to late expert epochs."""

    stages: int = setting(4, lo=1)
    window: float = setting(0.25, lo=0, hi=1, lo_open=True)  # each stage's window, a fraction of [min, max)
    span_growth: int = setting(0, lo=0)  # M grows by this much per stage
    anchored: bool = True  # windows keep their lower end at min_start_epoch and grow (False: slide)


@dataclass
class PTMConfig(StagedConfig):
    dom: DOMConfig = field(default_factory=DOMConfig)

    def check_fields(self, prefix: str) -> None:
        """DOM's noise on a real replacement applies to a real start only: with a shareable
        init, DOM replaces images by that init's rule."""
        if INITS.get(self.init).replace is None or not self.dom.enabled:
            return
        if self.dom.noise != 0.0:
            raise ConfigError(
                f"{prefix}dom.noise picks a real replacement image, which a run with init={self.init} does not "
                f"use (DOM replaces by the init's rule); leave it at 0.0 or use init=real"
            )


@dataclass
class DATMConfig(TMConfig):
    """Difficulty-aligned anchored windows of width 1/stages, soft labels from an expert."""

    stages: int = setting(4, lo=1)
    lr_img: float = setting(1000.0, lo=0, lo_open=True)
    lr_label: float = setting(0.0, lo=0)  # 0: the expert's soft labels stay fixed
    soft_filter: bool = True  # start only from real images the soft-label expert classifies right
    soft_temperature: float = setting(1.0, lo=0, lo_open=True)  # soft labels = softmax(logits / T)


# Per-profile presets (the dataclass defaults are the cpu profile's): tiny runs every code path in
# seconds, paper is the GPU scale of the MTT/PTM papers.
_TM_TINY = {"iterations": 12, "syn_steps": 4, "expert_epochs": 1, "min_start_epoch": 0, "max_start_epoch": 3,
            "lr_img": 100.0, "lr_lr": 1.0e-5}  # fmt: skip
_TM_PAPER = {"iterations": 5000, "syn_steps": 40, "expert_epochs": 2, "min_start_epoch": 0, "max_start_epoch": 20,
             "lr_img": 1000.0, "lr_lr": 1.0e-5}  # fmt: skip


@dataclass(frozen=True)
class TMVariant:
    """How a trajectory-matching method drives the one engine: its start-epoch schedule, and
    whether DOM and soft labels are on (from its section)."""

    schedule: Callable[[Any], Schedule]
    dom: bool = False
    soft: bool = False

    def engine(self, ctx: DistillContext) -> TrajectoryMatching:
        d = ctx.cfg.distill.active
        dom = d.dom if self.dom and d.dom.enabled else None
        return TrajectoryMatching(ctx, d, self.schedule(d), dom=dom, soft=d if self.soft else None)


VARIANTS: Registry[TMVariant] = Registry("trajectory-matching method")


def expert_epochs_read(cfg: RunConfig) -> int:
    """How many expert epochs the active trajectory-matching method reads (what it trains); a
    schedule that reads past ``experts.epochs`` is a ConfigError."""
    d = cfg.distill.active
    schedule = VARIANTS.get(cfg.distill.method).schedule(d)
    schedule.check(cfg.experts.epochs)
    return epochs_read(schedule, d, cfg.experts.epochs)


def build_engine(ctx: DistillContext) -> TrajectoryMatching:
    """The matching engine of the active trajectory-matching method, as the method runs it."""
    return VARIANTS.get(ctx.cfg.distill.method).engine(ctx)


def register_tm(
    name: str, config: type, variant: TMVariant, presets: dict[str, dict[str, Any]], labels: str = "hard",
    not_private: str = "",
):  # fmt: skip
    """Register a trajectory-matching method: its variant of the engine, and the method itself.
    It reads real images only through the experts, so under ``--dp-epsilon`` (DP-SGD experts, a
    noise start) it is private, unless ``not_private`` says why not."""
    VARIANTS.add(name, variant)
    return register_method(
        name, config=config, reads=TM_READS, labels=labels, learns_lr=True, expert_epochs=expert_epochs_read,
        presets=presets, resolve=resolve_auto_span, private="" if not_private else "experts", not_private=not_private,
    )  # fmt: skip


@register_tm("mtt", MTTConfig, TMVariant(mtt_schedule), {"tiny": _TM_TINY, "paper": _TM_PAPER})
def mtt(ctx: DistillContext) -> SynSet:
    """MTT (Cazenavette et al. 2022): uniform start epoch over the whole run, hard labels, no DOM."""
    return build_engine(ctx).run()


_STAGED = {"tiny": {**_TM_TINY, "stages": 2, "window": 0.5}, "paper": {**_TM_PAPER, "stages": 4, "window": 0.4}}
_PTM = {
    "tiny": {**_STAGED["tiny"], "dom": {"every": 3, "start": 0.1, "stop": 0.9}},
    "paper": {**_STAGED["paper"], "dom": {"every": 100}},
}


@register_tm("ptm", PTMConfig, TMVariant(ptm_schedule, dom=True), _PTM)
def ptm(ctx: DistillContext) -> SynSet:
    """PTM + DOM (ours): progressive trajectory matching with dynamic overlap mitigation."""
    return build_engine(ctx).run()


@register_tm("ptm_nodom", StagedConfig, TMVariant(ptm_schedule), _STAGED)
def ptm_nodom(ctx: DistillContext) -> SynSet:
    """Ablation: the progressive schedule of PTM alone, without DOM."""
    return build_engine(ctx).run()


_DATM = {"tiny": {**_TM_TINY, "stages": 2}, "paper": {**_TM_PAPER, "stages": 4}}


@register_tm(
    "datm", DATMConfig, TMVariant(datm_schedule, soft=True), _DATM, labels="soft",
    not_private="its start filter reads the real train images the expert classifies",
)  # fmt: skip
def datm(ctx: DistillContext) -> SynSet:
    """DATM-style (Guo et al. 2024): difficulty-aligned windows and expert soft labels."""
    return build_engine(ctx).run()
