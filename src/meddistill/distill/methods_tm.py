"""Trajectory-matching methods: MTT (baseline), PTM with and without DOM (ours), DATM-style.

Each method owns its config section (``distill.<name>``); they share :class:`TMConfig`, the
settings of the matching engine in :mod:`meddistill.distill.tm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meddistill.config import setting
from meddistill.distill.base import DistillContext, register_method
from meddistill.distill.dom import DOMConfig
from meddistill.distill.init import INIT_NAMES, INITS
from meddistill.distill.schedule import datm_schedule, mtt_schedule, ptm_schedule
from meddistill.distill.tm import TrajectoryMatching, epochs_read
from meddistill.errors import ConfigError
from meddistill.synset import SynSet

TM_READS = ("experts", "net", "dsa")


@dataclass
class TMConfig:
    """The trajectory-matching engine: a student starts at expert epoch ``t`` (drawn from
    ``[min_start_epoch, max_start_epoch)`` by the method's schedule), takes ``syn_steps`` SGD
    steps on the synthetic set and is pulled to expert epoch ``t + expert_epochs``.

    ``syn_steps`` and ``expert_epochs`` default to ``auto``: set from the number of expert SGD
    steps per epoch of the train split (:func:`meddistill.distill.scaling.auto_span`) when the
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
    init_k: int = setting(5, lo=5, neutral=5)  # init centroid: real images per centroid, at least
    init_iterations: int = setting(100, lo=1, neutral=100)  # init dm: iterations of DM from noise
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
        """DOM's choice of a real replacement (``reinit``, ``noise``) applies to a real start only:
        with a shareable init, DOM replaces images by that init's rule."""
        if INITS[self.init].replace is None or not self.dom.enabled:
            return
        for key, neutral in (("reinit", "random"), ("noise", 0.0)):
            if getattr(self.dom, key) != neutral:
                raise ConfigError(
                    f"{prefix}dom.{key} picks a real replacement image, which a run with init={self.init} does not "
                    f"use (DOM replaces by the init's rule); leave it at {neutral!r} or use init=real"
                )


@dataclass
class DATMConfig(TMConfig):
    """Difficulty-aligned anchored windows of width 1/stages, soft labels from an expert."""

    stages: int = setting(4, lo=1)
    lr_img: float = setting(1000.0, lo=0, lo_open=True)
    lr_label: float = setting(0.0, lo=0)  # 0: the expert's soft labels stay fixed
    soft_filter: bool = True  # start only from real images the soft-label expert classifies right
    soft_temperature: float = setting(1.0, lo=0, lo_open=True)  # soft labels = softmax(logits / T)


SCHEDULES = {"mtt": mtt_schedule, "ptm": ptm_schedule, "ptm_nodom": ptm_schedule, "datm": datm_schedule}


def _mtt(ctx: DistillContext) -> TrajectoryMatching:
    d: MTTConfig = ctx.cfg.distill.active
    return TrajectoryMatching(ctx, d, SCHEDULES["mtt"](d))


def _ptm(ctx: DistillContext) -> TrajectoryMatching:
    d: PTMConfig = ctx.cfg.distill.active
    return TrajectoryMatching(ctx, d, SCHEDULES["ptm"](d), dom=d.dom if d.dom.enabled else None)


def _ptm_nodom(ctx: DistillContext) -> TrajectoryMatching:
    d: StagedConfig = ctx.cfg.distill.active
    return TrajectoryMatching(ctx, d, SCHEDULES["ptm_nodom"](d))


def _datm(ctx: DistillContext) -> TrajectoryMatching:
    d: DATMConfig = ctx.cfg.distill.active
    return TrajectoryMatching(ctx, d, SCHEDULES["datm"](d), soft=d)


def expert_epochs_read(cfg) -> int:
    """How many expert epochs the active trajectory-matching method reads (what it trains); a
    schedule that reads past ``experts.epochs`` is a ConfigError."""
    d = cfg.distill.active
    schedule = SCHEDULES[cfg.distill.method](d)
    schedule.check(cfg.experts.epochs)
    return epochs_read(schedule, d, cfg.experts.epochs)


ENGINES = {"mtt": _mtt, "ptm": _ptm, "ptm_nodom": _ptm_nodom, "datm": _datm}


def build_engine(ctx: DistillContext) -> TrajectoryMatching:
    """The matching engine of the active trajectory-matching method, as the method runs it."""
    return ENGINES[ctx.cfg.distill.method](ctx)


@register_method("mtt", config=MTTConfig, reads=TM_READS, learns_lr=True, expert_epochs=expert_epochs_read)
def mtt(ctx: DistillContext) -> SynSet:
    """MTT (Cazenavette et al. 2022): uniform start epoch over the whole run, hard labels, no DOM."""
    return _mtt(ctx).run()


@register_method("ptm", config=PTMConfig, reads=TM_READS, learns_lr=True, expert_epochs=expert_epochs_read)
def ptm(ctx: DistillContext) -> SynSet:
    """PTM + DOM (ours): progressive trajectory matching with dynamic overlap mitigation."""
    return _ptm(ctx).run()


@register_method("ptm_nodom", config=StagedConfig, reads=TM_READS, learns_lr=True, expert_epochs=expert_epochs_read)
def ptm_nodom(ctx: DistillContext) -> SynSet:
    """Ablation: the progressive schedule of PTM alone, without DOM."""
    return _ptm_nodom(ctx).run()


@register_method(
    "datm", config=DATMConfig, reads=TM_READS, labels="soft", learns_lr=True, expert_epochs=expert_epochs_read
)
def datm(ctx: DistillContext) -> SynSet:
    """DATM-style (Guo et al. 2024): difficulty-aligned windows and expert soft labels."""
    return _datm(ctx).run()
