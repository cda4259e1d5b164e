from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from meddistill.health import run_health, summarize


def _rows(losses, lrs=None, status=None, starts=None, every=1):
    n = len(losses)
    lrs, status, starts = lrs or [0.01] * n, status or ["ok"] * n, starts or [0] * n
    skipped, out = 0, []
    for i in range(n):
        skipped += status[i] == "skipped"
        out.append(
            {"it": i * every, "loss": losses[i], "lr": lrs[i], "status": status[i], "start": starts[i]}
            | {"skipped_total": skipped}
        )
    return out


def test_a_flat_loss_has_no_spikes_and_one_jump_is_one_spike():
    assert run_health(_rows([0.5] * 40))["spikes"] == 0
    assert run_health(_rows([0.5] * 20 + [1.2] + [0.5] * 20))["spikes"] == 1
    assert run_health(_rows([0.5] * 20 + [0.9] + [0.5] * 20))["spikes"] == 0  # below 2x the running median
    assert run_health(_rows([0.5, 5.0]))["spikes"] == 0  # too few earlier losses to judge


def test_a_schedule_moving_to_later_start_epochs_is_not_a_spike():
    # later start epochs have a higher matching loss: a stage change, not instability
    losses = [0.4] * 30 + [1.0] * 30
    starts = [0] * 30 + [6] * 30
    assert run_health(_rows(losses, starts=starts))["spikes"] == 0
    assert run_health(_rows(losses))["spikes"] > 0  # judged against start-0 losses they would jump


def test_spikes_right_after_a_dom_event_are_counted_apart():
    rows = _rows([0.5] * 20 + [1.5] + [0.5] * 10 + [1.5] + [0.5] * 10)
    rows[18]["dom_replaced"] = 3  # DOM re-initialised images after iteration 18
    h = run_health(rows, window=5)
    assert h["spikes_after_dom"] == 1 and h["spikes"] == 1  # it 20 (after DOM) and it 31


def test_health_counts_skips_guards_and_the_lr_fall_from_lr_init():
    n = 30
    status = ["ok"] * n
    status[10], status[20], status[25] = "skipped", "lr_clamped", "lr_held"
    losses = [0.5] * n
    losses[10] = 100.0  # the exploded step: skipped, so neither a spike nor part of the medians
    lrs = [0.01 * (0.9 ** (i + 1)) for i in range(n)]  # the lr after each step
    h = run_health(_rows(losses, lrs, status), lr_init=0.01)
    assert h["skipped"] == 1 and h["lr_guarded"] == 2 and h["spikes"] == 0
    assert h["iterations"] == n and h["logged"] == n and h["exact"]
    assert math.isclose(h["lr_ratio"], 0.9**n) and math.isclose(h["lr_min_ratio"], h["lr_ratio"])
    assert h["loss_end"] == 0.5


def test_a_collapsed_lr_and_a_stalled_loss_are_visible():
    # the student's lr falls 30x and the normalised loss settles near 1 (the student no longer moves)
    stalled = run_health(_rows([2.0] * 10 + [0.95] * 90, [0.01] * 10 + [0.0003] * 90), lr_init=0.01)
    healthy = run_health(_rows([1.0] * 10 + [0.5] * 90, [0.01] * 10 + [0.004] * 90), lr_init=0.01)
    assert stalled["loss_end"] == 0.95 and healthy["loss_end"] == 0.5
    s = summarize([stalled, healthy])
    assert s["lr_collapsed"] == 1 and math.isclose(s["loss_end_median"], 0.725)


def test_a_sparse_log_is_not_exact_but_its_skips_are():
    rows = _rows([0.5] * 5, every=10)
    rows[-1]["skipped_total"] = 7  # seven steps skipped between log points
    h = run_health(rows)
    assert h["skipped"] == 7 and h["iterations"] == 41 and h["logged"] == 5 and not h["exact"]


def test_a_log_without_matching_steps_has_no_health():
    assert run_health([]) is None
    assert run_health([{"it": 0, "acc": 0.5}]) is None


@given(st.lists(st.floats(0.01, 10.0), min_size=6, max_size=60), st.integers(5, 59))
def test_one_planted_jump_on_a_constant_loss_is_exactly_one_spike(losses, at):
    flat = [losses[0]] * len(losses)
    at = min(at, len(flat) - 1)
    flat[at] = 3 * losses[0]
    assert run_health(_rows(flat))["spikes"] == 1


def test_summarize_uses_exact_logs_for_spikes_and_sums_skips():
    a = {"iterations": 200, "logged": 20, "exact": False, "spikes": 1, "skipped": 2, "lr_ratio": 0.5}
    b = {"iterations": 200, "logged": 200, "exact": True, "spikes": 4, "skipped": 0, "lr_ratio": 0.9}
    b |= {"lr_min_ratio": 0.05, "loss_end": 0.9}
    s = summarize([a, b])
    assert s["runs"] == 2 and s["skipped"] == 2 and s["exact_runs"] == 1
    assert math.isclose(s["spikes_per_100"], 2.0)  # b's 4 spikes in 200 steps; a's sparse log left out
    assert math.isclose(s["lr_ratio_median"], 0.7) and s["lr_ratio_min"] == 0.5
    assert s["lr_collapsed"] == 1 and s["loss_end_median"] == 0.9
    assert summarize([]) == {}
    assert "spikes_per_100" not in summarize([a])


def test_report_health_table_gives_seed_spread_and_worst_seed():
    from meddistill.bench.report import health_table

    h = {"iterations": 100, "logged": 100, "exact": True, "spikes": 0, "skipped": 1, "lr_ratio": 0.8}
    h |= {"lr_min_ratio": 0.8, "loss_end": 0.6}
    rows = [
        {"dataset": "d", "ipc": 2, "method": "ptm", "seed": s, "acc_mean": a, "health": h}
        for s, a in enumerate([0.70, 0.80, 0.90])
    ]
    rows.append({"dataset": "d", "ipc": 2, "method": "random", "seed": 0, "acc_mean": 0.5})
    md = health_table(rows)
    assert "| d | 2 | ptm | 3 | 3 | 0.00 | 0.80, 0.80 | 0 | 0.60 | 8.2 | -10.0 |" in md
    assert "random" not in md and health_table(rows[3:]) == ""
    # a seed stored twice counts once (the last row wins, as in the ACC table)
    assert "| d | 2 | ptm | 3 | 3 |" in health_table([rows[0], *rows])
