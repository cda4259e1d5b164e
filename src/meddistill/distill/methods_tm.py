"""Trajectory-matching methods: MTT (baseline), PTM with and without DOM (ours), DATM-style."""

from __future__ import annotations

from dataclasses import replace

from meddistill.distill.base import DistillContext, register_method
from meddistill.distill.schedule import Schedule, mtt_schedule, ptm_schedule
from meddistill.distill.tm import TrajectoryMatching
from meddistill.synset import SynSet


@register_method("mtt", trajectory=True)
def mtt(ctx: DistillContext) -> SynSet:
    """Cazenavette et al. 2022: uniform start epoch over the whole run, hard labels, no DOM."""
    d = ctx.cfg.distill
    return TrajectoryMatching(ctx, mtt_schedule(d), use_dom=False, soft_labels=d.soft_labels).run()


@register_method("ptm", trajectory=True)
def ptm(ctx: DistillContext) -> SynSet:
    """Progressive Trajectory Matching with Dynamic Overlap Mitigation (the project's method)."""
    d = ctx.cfg.distill
    return TrajectoryMatching(ctx, ptm_schedule(d), use_dom=True, soft_labels=d.soft_labels).run()


@register_method("ptm_nodom", trajectory=True)
def ptm_nodom(ctx: DistillContext) -> SynSet:
    """Ablation: the progressive schedule alone."""
    d = ctx.cfg.distill
    return TrajectoryMatching(ctx, ptm_schedule(d), use_dom=False, soft_labels=d.soft_labels).run()


@register_method("datm", trajectory=True)
def datm(ctx: DistillContext) -> SynSet:
    """DATM-style (Guo et al. 2024): difficulty-aligned window whose upper bound grows from
    the early epochs to ``max_start_epoch`` over the run, with learnable soft labels
    initialised from an expert's logits."""
    d = ctx.cfg.distill
    base: Schedule = ptm_schedule(d)
    sched = replace(base, window_frac=1.0 / max(1, d.stages), span_growth=0, anchored=True)
    return TrajectoryMatching(ctx, sched, use_dom=False, soft_labels=True).run()
