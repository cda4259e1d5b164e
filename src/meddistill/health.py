"""Run health of an iterative distillation, read from its log (``metrics.jsonl``).

Accuracy says how good a set ended up; these numbers say how the optimisation got there:

- ``skipped``: steps rejected as exploded (loss far above its running median, or a gradient
  that is not finite), exact whatever the logging interval (the log carries the running total);
- ``lr_guarded``: logged steps whose learned student lr update was held (not finite) or clamped
  by the trust region;
- ``spikes``: logged losses above ``spike_factor`` × the median of the previous ``window``
  logged losses (a step that was not skipped but jumped);
- ``lr_ratio`` / ``lr_min_ratio``: the learned student lr at the end / at its lowest, over its
  first logged value (how far it fell);
- ``loss_ratio``: median loss of the last tenth of the log over that of the first tenth.

Counts other than ``skipped`` are over the logged iterations (``logged``); a run logged at
every iteration (``distill.log_every: 1``) has them exact.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

HELD = ("lr_held", "lr_clamped")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def count_spikes(losses: list[float], factor: float = 2.0, window: int = 20, warmup: int = 5) -> int:
    """Losses above ``factor`` × the median of up to ``window`` previous finite losses (at least
    ``warmup`` of them); a non-finite loss always counts."""
    n, seen = 0, []
    for v in losses:
        if not math.isfinite(v):
            n += 1
            continue
        if len(seen) >= warmup and v > factor * _median(seen[-window:]):
            n += 1
        seen.append(v)
    return n


def run_health(rows: Iterable[dict], spike_factor: float = 2.0, window: int = 20) -> dict | None:
    """The health of one run from its metrics rows; None when the log has no matching steps."""
    steps = sorted((r for r in rows if "loss" in r and "it" in r), key=lambda r: r["it"])
    if not steps:
        return None
    losses = [float(r["loss"]) for r in steps]
    ok = [v for r, v in zip(steps, losses, strict=True) if r.get("status") != "skipped" and math.isfinite(v)]
    tenth = max(1, len(ok) // 10)
    lrs = [float(r["lr"]) for r in steps if "lr" in r and math.isfinite(float(r["lr"]))]
    out = {
        "logged": len(steps),
        "iterations": int(steps[-1]["it"]) + 1,
        "skipped": max(int(r.get("skipped_total", 0)) for r in steps),
        "lr_guarded": sum(r.get("status") in HELD for r in steps),
        "spikes": count_spikes(ok, spike_factor, window),
        "loss_ratio": _median(ok[-tenth:]) / _median(ok[:tenth]) if ok and _median(ok[:tenth]) > 0 else None,
    }
    out["skipped"] = max(out["skipped"], sum(r.get("status") == "skipped" for r in steps))
    if lrs and lrs[0] > 0:
        out.update(lr_first=lrs[0], lr_last=lrs[-1], lr_ratio=lrs[-1] / lrs[0], lr_min_ratio=min(lrs) / lrs[0])
    return out


def summarize(healths: list[dict]) -> dict:
    """Several runs' health in one: runs, skipped steps (sum), loss spikes per 100 steps, and the
    median and lowest ``lr_ratio``; empty when no run has a health block."""
    if not healths:
        return {}
    steps = sum(h["iterations"] for h in healths)
    spikes = sum(h["spikes"] * h["iterations"] / h["logged"] for h in healths)  # scaled to all steps
    ratios = [h["lr_ratio"] for h in healths if "lr_ratio" in h]
    out = {"runs": len(healths), "skipped": sum(h["skipped"] for h in healths), "spikes_per_100": 100 * spikes / steps}
    if ratios:
        out.update(lr_ratio_median=statistics.median(ratios), lr_ratio_min=min(ratios))
    return out
