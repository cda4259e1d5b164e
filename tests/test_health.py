from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from meddistill.health import count_spikes, run_health


def _rows(losses, lrs=None, status=None, every=1):
    lrs = lrs or [0.01] * len(losses)
    status = status or ["ok"] * len(losses)
    skipped = 0
    out = []
    for i, (v, lr, s) in enumerate(zip(losses, lrs, status, strict=True)):
        skipped += s == "skipped"
        out.append({"it": i * every, "loss": v, "lr": lr, "status": s, "skipped_total": skipped})
    return out


def test_a_flat_loss_has_no_spikes_and_one_jump_is_one_spike():
    assert count_spikes([0.5] * 40) == 0
    assert count_spikes([0.5] * 20 + [1.2] + [0.5] * 20) == 1
    assert count_spikes([0.5] * 20 + [0.9] + [0.5] * 20) == 0  # below 2x the running median
    assert count_spikes([0.5, 5.0]) == 0  # too few previous losses to judge
    assert count_spikes([0.5] * 10 + [math.nan]) == 1


def test_health_counts_skips_guards_and_the_lr_fall():
    n = 30
    status = ["ok"] * n
    status[10], status[20], status[25] = "skipped", "lr_clamped", "lr_held"
    losses = [1.0] * 3 + [0.5] * (n - 3)
    losses[10] = 100.0  # the exploded step: skipped, so neither a spike nor part of the medians
    lrs = [0.01 * (0.9**i) for i in range(n)]
    h = run_health(_rows(losses, lrs, status))
    assert h["skipped"] == 1 and h["lr_guarded"] == 2 and h["spikes"] == 0
    assert h["iterations"] == n and h["logged"] == n
    assert math.isclose(h["lr_ratio"], 0.9 ** (n - 1)) and math.isclose(h["lr_min_ratio"], h["lr_ratio"])
    assert math.isclose(h["loss_ratio"], 0.5)


def test_skips_between_logged_rows_are_counted_from_the_running_total():
    rows = _rows([0.5] * 5, every=10)
    rows[-1]["skipped_total"] = 7  # seven steps skipped between log points
    h = run_health(rows)
    assert h["skipped"] == 7 and h["iterations"] == 41 and h["logged"] == 5


def test_a_log_without_matching_steps_has_no_health():
    assert run_health([]) is None
    assert run_health([{"it": 0, "acc": 0.5}]) is None


@given(st.lists(st.floats(0.01, 10.0), min_size=1, max_size=60))
def test_spikes_never_exceed_the_logged_steps(losses):
    h = run_health(_rows(losses))
    assert 0 <= h["spikes"] <= len(losses) - 5 or h["spikes"] == 0
    assert h["skipped"] == 0 and h["loss_ratio"] > 0


def test_summarize_scales_spikes_to_all_steps_and_sums_skips():
    from meddistill.health import summarize

    a = {"iterations": 200, "logged": 20, "spikes": 1, "skipped": 2, "lr_ratio": 0.5}
    b = {"iterations": 200, "logged": 200, "spikes": 4, "skipped": 0, "lr_ratio": 0.9}
    s = summarize([a, b])
    assert s["runs"] == 2 and s["skipped"] == 2
    assert math.isclose(s["spikes_per_100"], 100 * (10 + 4) / 400)  # a's one spike in 20 logged ≈ 10 in 200
    assert math.isclose(s["lr_ratio_median"], 0.7) and s["lr_ratio_min"] == 0.5
    assert summarize([]) == {}


def test_report_health_table_gives_seed_spread_and_worst_seed():
    from meddistill.bench.report import health_table

    h = {"iterations": 100, "logged": 100, "spikes": 0, "skipped": 1, "lr_ratio": 0.8}
    rows = [
        {"dataset": "d", "ipc": 2, "method": "ptm", "seed": s, "acc_mean": a, "health": h}
        for s, a in enumerate([0.70, 0.80, 0.90])
    ]
    rows.append({"dataset": "d", "ipc": 2, "method": "random", "seed": 0, "acc_mean": 0.5})
    md = health_table(rows)
    assert "| d | 2 | ptm | 3 | 3 | 0.00 | 0.80, 0.80 | 8.2 | -10.0 |" in md
    assert "random" not in md and health_table(rows[3:]) == ""
