"""Run health of an iterative distillation, read from its log (``metrics.jsonl``).

Accuracy says how good a set ended up; these numbers say how the optimisation got there:

- ``skipped``: steps rejected as exploded (loss far above its running median, or a gradient
  that is not finite), exact whatever the logging interval (the log carries the running total);
- ``lr_guarded``: logged steps whose learned student lr update was held (not finite) or clamped
  by the trust region;
- ``spikes``: logged losses above ``spike_factor`` × the median of up to ``window`` earlier
  logged losses **from the same start epoch** (the matching loss depends strongly on where on
  the trajectory a step starts, so a schedule that moves to later epochs is not a spike);
  ``spikes_after_dom``: those within ``window`` iterations after a DOM re-initialisation, which
  perturbs the set on purpose, counted apart;
- ``lr_ratio`` / ``lr_min_ratio``: the learned student lr at the end / at its lowest, over its
  initial value (``lr_init`` when given, else the first logged value); a run whose lr fell
  below :data:`COLLAPSE` of it has collapsed (its student barely moves any more);
- ``loss_end``: the median matching loss over the last tenth of the logged steps. The loss is
  normalised by the expert's own move, so 1 means the student's steps bring it no closer to
  the target than where it started: a value near 1 is a run that stopped learning.

``exact`` says whether every iteration was logged (``distill.log_every: 1``); otherwise the
counts other than ``skipped`` are over the logged iterations only (``logged``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from meddistill.utils import read_jsonl

HELD = ("lr_held", "lr_clamped")
LOG = "metrics.jsonl"  # a run folder's step log, written by the matching engine
COLLAPSE = 0.1  # lr_min_ratio below this: the learned student lr has collapsed


def _spike_iterations(steps: list[dict], factor: float, window: int, warmup: int = 5) -> list[int]:
    """Iterations whose loss spikes against earlier losses of the same start epoch."""
    seen: dict[object, list[float]] = defaultdict(list)
    out = []
    for r in steps:
        v, past = float(r["loss"]), seen[r.get("start")]
        if len(past) >= warmup and v > factor * statistics.median(past[-window:]):
            out.append(int(r["it"]))
        past.append(v)
    return out


def run_health(
    rows: Iterable[dict], lr_init: float | None = None, spike_factor: float = 2.0, window: int = 20
) -> dict | None:
    """The health of one run from its metrics rows; None when the log has no matching steps."""
    steps = sorted((r for r in rows if "loss" in r and "it" in r), key=lambda r: r["it"])
    if not steps:
        return None
    ok = [r for r in steps if r.get("status") != "skipped" and math.isfinite(float(r["loss"]))]
    spikes = _spike_iterations(ok, spike_factor, window)
    dom_its = [int(r["it"]) for r in steps if r.get("dom_replaced")]
    after_dom = [i for i in spikes if any(0 < i - d <= window for d in dom_its)]
    iterations = int(steps[-1]["it"]) + 1
    out = {
        "logged": len(steps),
        "iterations": iterations,
        "exact": len(steps) == iterations,
        "skipped": max(
            max(int(r.get("skipped_total", 0)) for r in steps), sum(r.get("status") == "skipped" for r in steps)
        ),
        "lr_guarded": sum(r.get("status") in HELD for r in steps),
        "spikes": len(spikes) - len(after_dom),
        "spikes_after_dom": len(after_dom),
    }
    if ok:
        out["loss_end"] = statistics.median(float(r["loss"]) for r in ok[-max(1, len(ok) // 10) :])
    lrs = [float(r["lr"]) for r in steps if "lr" in r and math.isfinite(float(r["lr"]))]
    base = lr_init if lr_init else (lrs[0] if lrs else None)
    if lrs and base and base > 0:
        out.update(lr_ratio=lrs[-1] / base, lr_min_ratio=min(lrs) / base)
    return out


def log_health(run_dir: str | Path, lr_init: float | None = None) -> dict | None:
    """:func:`run_health` of the log a run folder holds (``metrics.jsonl``); None without one."""
    return run_health(read_jsonl(Path(run_dir) / LOG), lr_init)


def summarize(healths: list[dict]) -> dict:
    """Several runs' health in one: runs, skipped steps (sum), loss spikes per 100 steps (from
    the runs with an exact log only; ``exact_runs`` of them), the median and lowest
    ``lr_ratio``, how many runs' lr collapsed, and the median ``loss_end``; empty when no run
    has a health block."""
    if not healths:
        return {}
    out: dict = {"runs": len(healths), "skipped": sum(h["skipped"] for h in healths)}
    exact = [h for h in healths if h.get("exact")]
    out["exact_runs"] = len(exact)
    if exact:
        out["spikes_per_100"] = 100 * sum(h["spikes"] for h in exact) / sum(h["iterations"] for h in exact)
    ratios = [h["lr_ratio"] for h in healths if "lr_ratio" in h]
    if ratios:
        out.update(lr_ratio_median=statistics.median(ratios), lr_ratio_min=min(ratios))
    lows = [h["lr_min_ratio"] for h in healths if "lr_min_ratio" in h]
    if lows:
        out["lr_collapsed"] = sum(v < COLLAPSE for v in lows)
    ends = [h["loss_end"] for h in healths if "loss_end" in h]
    if ends:
        out["loss_end_median"] = statistics.median(ends)
    return out
