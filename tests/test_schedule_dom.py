from __future__ import annotations

import itertools
import math

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


@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_diversity_and_overlap_are_the_per_class_pair_statistics(classes, ipc, seed):
    from meddistill.distill.dom import max_overlap

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * ipc, 3, 4, 4, generator=g)
    y = torch.arange(classes).repeat_interleave(ipc)
    pairs = []
    for c in range(classes):
        s = cosine_matrix(x[y == c])
        pairs += [s[i, j] for i in range(ipc) for j in range(ipc) if i != j]
    per_class = [
        torch.stack([1 - cosine_matrix(x[y == c])[i, j] for i in range(ipc) for j in range(ipc) if i != j]).mean()
        for c in range(classes)
        if ipc > 1
    ]
    if ipc == 1:
        assert math.isnan(class_diversity(x, y)) and math.isnan(max_overlap(x, y))
    else:
        assert class_diversity(x, y) == pytest.approx(float(torch.stack(per_class).mean()), abs=1e-6)
        assert max_overlap(x, y) == pytest.approx(float(torch.stack(pairs).max()), abs=1e-6)
