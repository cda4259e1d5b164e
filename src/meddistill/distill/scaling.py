"""Scale trajectory-matching settings with the size of the expert's steps.

Every TM setting of the ``cpu`` profile was chosen on datasets of 546–4,708 train images.
There an expert span of ``M = 2`` epochs at batch 64 is 18–148 expert SGD steps; on
BloodMNIST (11,959 images) it is 374, on a 34k-image set ~1,080. The student takes
``syn_steps`` (10) steps at a learned lr that starts at the expert's lr (0.01) and, with
``lr_lr = 1e-7``, cannot move: it cannot cover the expert's distance, the matching loss stays
at the "no move" value (~1) and the images barely change (docs/results.md, "Trajectory
matching at scale").

:func:`scale_tm` derives the student's settings from ``S`` = expert SGD steps per matched
span (``expert_epochs × ceil(n_train / expert_batch)``) and ``N`` = student steps:

- ``lr_init = gain × expert_lr × (S / N) ** alpha`` — ``alpha = 1``, ``gain = 1`` lets N
  steps cover the distance of S expert steps if every step went the same way; expert steps
  are stochastic mini-batch steps that partly cancel (and a full-batch step on real images
  moves further than a mini-batch step), so ``gain < 1`` or ``alpha < 1`` damps it.
  ``alpha = 0``, ``gain = 1`` is today's rule (the expert's lr).
- ``lr_lr = kappa × lr_init ** 2`` — the gradient of the normalised matching loss w.r.t. the
  lr scales like ``1 / lr``, so the *relative* change of the lr per iteration is
  ``∝ lr_lr / lr ** 2``; a fixed ``kappa`` gives the same relative mobility at every scale
  (MTT's reference, lr_lr 1e-5 with lr 0.01, is ``kappa = 0.1``; the cpu profile's 1e-7 is
  0.001). ``kappa = None`` keeps the base lr_lr.
- ``batch_syn`` — the whole synthetic set per student step up to ``max_batch_syn`` images,
  mini-batches of ``max_batch_syn`` above that (memory and time of the unroll grow with it).
- ``syn_steps`` — the base value, grown towards ``ceil(S / max_ratio)`` only up to
  ``syn_steps_max`` (default: the base value, i.e. unchanged: the unroll's cost is linear
  in it, and it was not swept on this 2-core CPU).
- ``lr_img`` (only with ``img_comp``) — ``base lr_img × expert_lr / lr_init``: the image
  gradient of the unrolled loss grows about linearly with the student lr, so this keeps the
  image step of the regime where lr_img was tuned (lr_init = expert lr).
- ``iterations`` — the base value (with mini-batches every image is still in most
  iterations' unroll: P = 1 − (1 − b/n)^N).
- ``expert_epochs`` (only with ``short_span``) — 1 when one expert epoch alone already holds
  ``max_ratio × syn_steps`` (base) expert steps: the shortest span the per-epoch buffer has,
  so that fewer student steps reach the ratio ``max_ratio``.

The function is pure (no I/O); :func:`rule_overrides` turns it into ``method.*=value``
overrides for one dataset and ipc, so the same rule is applied unchanged to MTT, PTM and
DATM-style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TMBase:
    """The small-dataset settings the rule starts from (the ``cpu`` profile's)."""

    syn_steps: int = 10
    lr_lr: float = 1e-7
    iterations: int = 200
    batch_syn: int = 0
    lr_img: float = 100.0
    expert_epochs: int = 2


@dataclass(frozen=True)
class Rule:
    """A candidate scaling rule (see the module docstring for the formulas)."""

    name: str
    alpha: float = 0.5
    kappa: float | None = 0.03
    gain: float = 1.0
    img_comp: bool = False  # scale lr_img by expert_lr / lr_init
    max_batch_syn: int = 256
    syn_steps_max: int | None = None  # None: keep the base syn_steps
    max_ratio: float = 10.0  # expert steps per student step that syn_steps growth aims at
    lr_init_max: float = 1.0
    short_span: bool = False  # match a 1-epoch span where one epoch is long


# Candidates compared on validation accuracy (docs/results/tm-scaling.md).
RULES: dict[str, Rule | None] = {
    "base": None,  # the cpu profile as it is: lr_init = expert lr, lr_lr 1e-7
    "learn": Rule("learn", alpha=0.0, kappa=0.03),  # only make the lr learnable
    "sqrt": Rule("sqrt", alpha=0.5, kappa=0.03),
    "linear": Rule("linear", alpha=1.0, kappa=0.03),
    "linear4": Rule("linear4", alpha=1.0, kappa=0.03, gain=0.25),
    "linear4i": Rule("linear4i", alpha=1.0, kappa=0.03, gain=0.25, img_comp=True),
    # after kappa 0.03 let MTT's lr collapse on BloodMNIST (to 2.5e-44): a 10x smaller kappa
    "linear4ik": Rule("linear4ik", alpha=1.0, kappa=0.003, gain=0.25, img_comp=True),
    # keep the expert's lr and lr_lr; shorten the span and add student steps until
    # S / N <= 4 (the regime of the small sets, where the loss fell), at most 50 steps
    "steps4": Rule("steps4", alpha=0.0, kappa=None, syn_steps_max=50, max_ratio=4.0, short_span=True),
}


AUTO = "auto"
AUTO_RULE = "steps4"  # what ``syn_steps: auto`` / ``expert_epochs: auto`` apply (docs/results.md)


def auto_span(n_train: int, expert_batch: int, base: TMBase | None = None) -> tuple[int, int]:
    """``(syn_steps, expert_epochs)`` of the ``auto`` settings for a train split of ``n_train``
    images: the :data:`AUTO_RULE` rule from the small-set base (10 student steps, a 2-epoch
    span) — a 1-epoch span where one expert epoch holds at least 4 × 10 SGD steps, and
    ``ceil(S / 4)`` student steps for the S expert steps of the span, within [10, 50]."""
    base = base or TMBase()
    rule = RULES[AUTO_RULE]
    assert rule is not None
    steps, span, _ = _steps_and_span(
        n_train, expert_batch, base.expert_epochs, base.syn_steps, rule.short_span, rule.syn_steps_max, rule.max_ratio
    )
    return steps, span


def _steps_and_span(
    n_train: int,
    expert_batch: int,
    span: int,
    steps: int,
    short_span: bool,
    syn_steps_max: int | None,
    max_ratio: float,
) -> tuple[int, int, int]:
    """(student steps, span in epochs, expert steps S of the span) from the base ``steps`` and
    ``span``: a 1-epoch span with ``short_span`` where one epoch holds ``max_ratio × steps``
    expert steps; the steps grown towards ``ceil(S / max_ratio)``, at most ``syn_steps_max``."""
    if short_span and expert_steps_per_span(n_train, expert_batch, 1) >= max_ratio * steps:
        span = 1
    s = expert_steps_per_span(n_train, expert_batch, span)
    if syn_steps_max is not None and syn_steps_max > steps:
        steps = min(syn_steps_max, max(steps, math.ceil(s / max_ratio)))
    return steps, span, s


def resolve_tm_auto(cfg) -> None:
    """Set every ``auto`` ``syn_steps`` / ``expert_epochs`` of the config's trajectory-matching
    sections from the size of ``cfg.dataset``'s train split (read only if one is ``auto``)."""
    keys = ("syn_steps", "expert_epochs")
    sections = [s for s in cfg.distill.sections.values() if any(getattr(s, k, None) == AUTO for k in keys)]
    if not sections or cfg.experts.batch_size < 1:  # an invalid batch size is reported by the range check
        return
    from meddistill.data.sources import train_size

    steps, span = auto_span(train_size(cfg), cfg.experts.batch_size)
    for s in sections:
        if s.syn_steps == AUTO:
            s.syn_steps = steps
        if s.expert_epochs == AUTO:
            s.expert_epochs = span


def expert_steps_per_span(n_train: int, expert_batch: int, expert_epochs_per_span: int) -> int:
    """S: expert SGD steps between the start and the target of one matched span."""
    if n_train < 1 or expert_batch < 1 or expert_epochs_per_span < 1:
        raise ValueError("n_train, expert_batch and expert_epochs_per_span must be positive")
    return expert_epochs_per_span * math.ceil(n_train / expert_batch)


def _sig(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits (stable config values, hence stable run hashes)."""
    return float(f"{x:.{digits}g}")


def scale_tm(
    n_train: int,
    num_classes: int,
    ipc: int,
    expert_batch: int,
    expert_lr: float,
    expert_epochs_per_span: int,
    base: TMBase | None = None,
    *,
    alpha: float = 0.5,
    kappa: float | None = 0.03,
    gain: float = 1.0,
    img_comp: bool = False,
    max_batch_syn: int = 256,
    syn_steps_max: int | None = None,
    max_ratio: float = 10.0,
    lr_init_max: float = 1.0,
    short_span: bool = False,
) -> dict[str, Any]:
    """Trajectory-matching settings for one dataset size (pure; see the module docstring).

    Returns the ``distill`` keys ``lr_init``, ``lr_lr``, ``syn_steps``, ``batch_syn``,
    ``iterations`` and, for reports, ``expert_steps`` (S) and ``ratio`` (S / syn_steps)."""
    base = base or TMBase()
    if num_classes < 1 or ipc < 1:
        raise ValueError("num_classes and ipc must be positive")
    if expert_lr <= 0 or gain <= 0 or alpha < 0 or (kappa is not None and kappa <= 0) or max_batch_syn < 1:
        raise ValueError("expert_lr, gain and kappa must be > 0, alpha >= 0, max_batch_syn >= 1")
    steps, span, s = _steps_and_span(
        n_train, expert_batch, expert_epochs_per_span, base.syn_steps, short_span, syn_steps_max, max_ratio
    )
    ratio = s / steps
    lr_init = _sig(min(lr_init_max, gain * expert_lr * ratio**alpha))
    lr_lr = base.lr_lr if kappa is None else _sig(kappa * lr_init**2)
    n_syn = ipc * num_classes
    batch_syn = base.batch_syn if n_syn <= max_batch_syn else max_batch_syn
    out = {
        "lr_init": lr_init,
        "lr_lr": lr_lr,
        "syn_steps": steps,
        "batch_syn": batch_syn,
        "iterations": base.iterations,
        "expert_steps": s,
        "ratio": ratio,
    }
    if short_span:
        out["expert_epochs"] = span
    if img_comp:
        out["lr_img"] = _sig(base.lr_img * expert_lr / lr_init)
    return out


DISTILL_KEYS = ("lr_init", "lr_lr", "syn_steps", "batch_syn", "iterations", "lr_img", "expert_epochs")


def rule_overrides(dataset: str, ipc: int, rule: Rule | None, profile: str = "cpu", overrides=()) -> list[str]:
    """``method.*=value`` overrides (the active trajectory-matching method's section) that apply
    ``rule`` to ``dataset`` at ``ipc``. The student steps and the span start from the small-set
    base (:class:`TMBase`: 10 steps, 2 epochs) and are always written out, so a rule's cells do
    not follow the ``auto`` defaults; ``rule=None`` is that base itself. The expert settings and
    the other base values come from the resolved profile's PTM section (every TM method has
    these keys; MTT's own image lr default differs, so ``img_comp`` rules scale PTM's)."""
    small = TMBase()
    pins = [f"method.syn_steps={small.syn_steps}", f"method.expert_epochs={small.expert_epochs}"]
    if rule is None:
        return pins
    from meddistill.config import build_config
    from meddistill.data import get_info

    cfg = build_config(profile, None, [*overrides, *pins], **{"distill.method": "ptm"})
    info = get_info(dataset)
    d = cfg.distill.active
    base = TMBase(d.syn_steps, d.lr_lr, d.iterations, d.batch_syn, d.lr_img, d.expert_epochs)
    out = scale_tm(
        info.n_samples[0],
        info.num_classes,
        ipc,
        cfg.experts.batch_size,
        cfg.experts.lr,
        d.expert_epochs,
        base,
        alpha=rule.alpha,
        kappa=rule.kappa,
        gain=rule.gain,
        img_comp=rule.img_comp,
        max_batch_syn=rule.max_batch_syn,
        syn_steps_max=rule.syn_steps_max,
        max_ratio=rule.max_ratio,
        lr_init_max=rule.lr_init_max,
        short_span=rule.short_span,
    )
    out.setdefault("expert_epochs", d.expert_epochs)
    return [f"method.{k}={out[k]!r}" for k in DISTILL_KEYS if k in out]
