"""The ``auto`` student steps and span of trajectory matching, from the size of the train split.

Every TM setting of the ``cpu`` profile was chosen on datasets of 546–4,708 train images, where
a 2-epoch expert span at batch 64 is 18–148 expert SGD steps; on BloodMNIST (11,959 images) it
is 374 and a student of 10 steps cannot cover it (the loss stays at its "no move" value). The
rule chosen on validation among the candidates of that study ("steps4",
[docs/results/tm-scaling.md](../../../docs/results/tm-scaling.md); the other candidate rules
live at the tag that page cites): keep the expert's lr and the lr's lr, shorten the span to one
epoch where one epoch already holds ``RATIO × BASE_STEPS`` expert steps, and grow the student's
steps towards ``ceil(S / RATIO)`` for the ``S`` expert steps of the span, at most ``MAX_STEPS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from meddistill.config import RunConfig

AUTO = "auto"
BASE_STEPS = 10  # student steps of the small sets the cpu profile was chosen on
BASE_SPAN = 2  # expert epochs per matched span there
RATIO = 4.0  # expert steps per student step the rule aims at (the regime where the loss fell)
MAX_STEPS = 50  # the unroll's cost is linear in the steps


def expert_steps_per_span(n_train: int, expert_batch: int, expert_epochs_per_span: int) -> int:
    """S: expert SGD steps between the start and the target of one matched span."""
    if n_train < 1 or expert_batch < 1 or expert_epochs_per_span < 1:
        raise ValueError("n_train, expert_batch and expert_epochs_per_span must be positive")
    return expert_epochs_per_span * math.ceil(n_train / expert_batch)


def auto_span(n_train: int, expert_batch: int) -> tuple[int, int]:
    """``(syn_steps, expert_epochs)`` of the ``auto`` settings for a train split of ``n_train``
    images: a 1-epoch span where one expert epoch holds at least ``RATIO × BASE_STEPS`` SGD
    steps, and ``ceil(S / RATIO)`` student steps for the S expert steps of the span, within
    ``[BASE_STEPS, MAX_STEPS]``."""
    span = BASE_SPAN
    if expert_steps_per_span(n_train, expert_batch, 1) >= RATIO * BASE_STEPS:
        span = 1
    s = expert_steps_per_span(n_train, expert_batch, span)
    steps = min(MAX_STEPS, max(BASE_STEPS, math.ceil(s / RATIO)))
    return steps, span


def resolve_auto_span(section: Any, cfg: RunConfig, train_size: Callable[[], int]) -> None:
    """Set a TM section's ``auto`` ``syn_steps`` / ``expert_epochs`` (``train_size()`` is called
    only if one of them is ``auto``: counting own images reads their folder)."""
    if AUTO not in (section.syn_steps, section.expert_epochs) or cfg.experts.batch_size < 1:
        return  # an invalid batch size is reported by the range check
    steps, span = auto_span(train_size(), cfg.experts.batch_size)
    if section.syn_steps == AUTO:
        section.syn_steps = steps
    if section.expert_epochs == AUTO:
        section.expert_epochs = span
