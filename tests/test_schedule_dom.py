from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.distill.dom import class_diversity, cosine_matrix, select_overlapping
from meddistill.distill.methods_tm import StagedConfig, TMConfig
from meddistill.distill.schedule import Schedule, mtt_schedule, ptm_schedule
from meddistill.errors import ConfigError


def test_mtt_is_one_uniform_window():
    s = mtt_schedule(TMConfig(iterations=100, min_start_epoch=0, max_start_epoch=10, expert_epochs=2))
    assert {(w.lo, w.hi, w.span) for w in map(s.window, range(100))} == {(0, 10, 2)}


@settings(max_examples=60, deadline=None)
@given(
    iters=st.integers(1, 500),
    lo=st.integers(0, 5),
    rng=st.integers(1, 30),
    stages=st.integers(1, 6),
    frac=st.floats(0.05, 1.0),
    growth=st.integers(0, 2),
)
def test_ptm_windows_move_forward_and_stay_in_range(iters, lo, rng, stages, frac, growth):
    d = StagedConfig(
        iterations=iters,
        min_start_epoch=lo,
        max_start_epoch=lo + rng,
        stages=stages,
        window=frac,
        span_growth=growth,
        expert_epochs=1,
    )
    s = ptm_schedule(d)
    wins = [s.window(i) for i in range(iters)]
    for a, b in itertools.pairwise(wins):
        assert b.lo >= a.lo and b.hi >= a.hi and b.stage >= a.stage and b.span >= a.span
    for w in wins:
        assert lo <= w.lo < w.hi <= lo + rng
    if stages > 1 and iters >= stages:
        assert wins[0].lo == lo and wins[-1].hi == lo + rng  # covers early to late epochs


def test_schedule_rejects_spans_beyond_the_experts():
    s = Schedule(10, 0, 10, 5)
    with pytest.raises(ConfigError, match="experts have 8 epochs"):
        s.check(8)


def test_dom_flags_duplicates_and_keeps_one_of_each_group():
    torch.manual_seed(0)
    base = torch.randn(4, 1, 8, 8)
    imgs = torch.cat([base, base[:1] + 1e-3, base[:1] * 2])  # 0, 4, 5 overlap
    sel = select_overlapping(cosine_matrix(imgs), None, 0.95, 1.0, budget=10)
    assert sorted(sel) in ([4, 5], [0, 4], [0, 5])  # two of the three, one survives
    assert select_overlapping(cosine_matrix(base), None, 0.95, 1.0, budget=10) == []
    assert len(select_overlapping(cosine_matrix(imgs), None, 0.95, 1.0, budget=1)) == 1


def test_diversity_is_zero_for_copies():
    x = torch.randn(1, 1, 8, 8).repeat(3, 1, 1, 1)
    assert abs(class_diversity(x, torch.zeros(3, dtype=torch.long))) < 1e-6
