"""Start-epoch schedules: which expert epochs a trajectory-matching iteration may start from.

MTT draws the start epoch ``t`` uniformly from ``[min_start, max_start)`` for the whole run
and matches ``M`` epochs ahead.  PTM splits the run into ``stages``; the upper end of stage
``s``'s window moves from the earliest towards the latest expert epochs; with ``anchored``
(the default) its lower end stays at ``min_start`` (the window grows), otherwise the window
slides.  The matched span grows by ``span_growth`` per stage.  All are the same function with
different stage counts, so plain MTT is literally PTM with one full-width stage and no growth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meddistill.errors import ConfigError


@dataclass(frozen=True)
class Window:
    stage: int
    lo: int  # inclusive
    hi: int  # exclusive
    span: int  # M


@dataclass(frozen=True)
class Schedule:
    iterations: int
    min_start: int
    max_start: int
    span: int
    stages: int = 1
    window_frac: float = 1.0
    span_growth: int = 0
    anchored: bool = False  # window always starts at min_start; only its upper end moves

    def stage_of(self, it: int) -> int:
        return min(self.stages - 1, it * self.stages // max(1, self.iterations))

    def window(self, it: int) -> Window:
        s = self.stage_of(it)
        rng = self.max_start - self.min_start
        width = max(1, round(self.window_frac * rng))
        if self.stages == 1:
            lo = self.min_start
        else:
            lo = self.min_start + round(s * (rng - width) / (self.stages - 1))
        hi = lo + width
        if self.anchored:
            lo = self.min_start
        return Window(s, lo, hi, self.span + s * self.span_growth)

    def epochs_needed(self) -> int:
        """The last expert epoch any iteration matches (its target epoch)."""
        if self.max_start <= self.min_start:
            raise ConfigError(f"max_start_epoch ({self.max_start}) must exceed min_start_epoch ({self.min_start})")
        return max(w.hi - 1 + w.span for w in (self.window(0), self.window(self.iterations - 1)))

    def check(self, num_epochs: int) -> None:
        need = self.epochs_needed()
        if need > num_epochs:
            raise ConfigError(
                f"the schedule matches up to expert epoch {need} but experts have "
                f"{num_epochs} epochs; lower the method's max_start_epoch or expert_epochs, or raise experts.epochs"
            )


def mtt_schedule(d: Any) -> Schedule:
    """One full-width window for the whole run (``d``: a :class:`TMConfig`)."""
    return Schedule(d.iterations, d.min_start_epoch, d.max_start_epoch, d.expert_epochs)


def ptm_schedule(d: Any) -> Schedule:
    """``d.stages`` windows of width ``d.window`` (``d``: a :class:`StagedConfig`)."""
    return Schedule(
        d.iterations,
        d.min_start_epoch,
        d.max_start_epoch,
        d.expert_epochs,
        d.stages,
        d.window,
        d.span_growth,
        d.anchored,
    )


def datm_schedule(d: Any) -> Schedule:
    """DATM-style: anchored windows of width ``1 / d.stages``, no span growth."""
    return Schedule(
        d.iterations, d.min_start_epoch, d.max_start_epoch, d.expert_epochs, d.stages, 1.0 / d.stages, 0, True
    )
