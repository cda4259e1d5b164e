"""The trajectory-matching scaling rule (meddistill.distill.scaling)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.config import build_config, parse_override
from meddistill.distill.scaling import RULES, TMBase, expert_steps_per_span, rule_overrides, scale_tm

sizes = st.integers(1, 200_000)
alphas = st.floats(0.0, 1.0)
kappas = st.floats(1e-4, 1.0)


def test_expert_steps_per_span():
    assert expert_steps_per_span(11959, 64, 2) == 2 * 187
    assert expert_steps_per_span(546, 64, 2) == 18
    assert expert_steps_per_span(64, 64, 1) == 1
    assert expert_steps_per_span(65, 64, 1) == 2
    with pytest.raises(ValueError):
        expert_steps_per_span(0, 64, 2)


def test_alpha_zero_is_todays_rule():
    out = scale_tm(34561, 2, 10, 64, 0.01, 2, alpha=0.0, kappa=None)
    assert out["lr_init"] == 0.01 and out["lr_lr"] == TMBase().lr_lr
    assert out["syn_steps"] == 10 and out["batch_syn"] == 0 and out["iterations"] == 200
    assert out["expert_steps"] == 2 * 541


def test_known_values():
    # BloodMNIST, cpu profile: S = 374 expert steps for N = 10 student steps
    lin = scale_tm(11959, 8, 10, 64, 0.01, 2, alpha=1.0, kappa=0.03)
    assert lin["lr_init"] == pytest.approx(0.374)
    assert lin["lr_lr"] == pytest.approx(0.03 * 0.374**2, rel=1e-3)
    sq = scale_tm(11959, 8, 10, 64, 0.01, 2, alpha=0.5, kappa=0.03)
    assert sq["lr_init"] == pytest.approx(0.01 * math.sqrt(37.4), rel=1e-3)


@settings(max_examples=200, deadline=None)
@given(sizes, sizes, alphas, kappas)
def test_monotone_in_train_size(n1, n2, alpha, kappa):
    a, b = sorted((n1, n2))
    lo = scale_tm(a, 4, 10, 64, 0.01, 2, alpha=alpha, kappa=kappa)
    hi = scale_tm(b, 4, 10, 64, 0.01, 2, alpha=alpha, kappa=kappa)
    assert lo["expert_steps"] <= hi["expert_steps"]
    assert lo["lr_init"] <= hi["lr_init"]
    assert lo["lr_lr"] <= hi["lr_lr"]


@settings(max_examples=200, deadline=None)
@given(sizes, st.floats(0.0, 0.5), st.floats(0.5, 1.0))
def test_monotone_in_alpha_above_one_ratio(n, a1, a2):
    lo = scale_tm(n, 2, 10, 64, 0.01, 2, alpha=a1)
    hi = scale_tm(n, 2, 10, 64, 0.01, 2, alpha=a2)
    if lo["ratio"] >= 1:  # more expert than student steps: more alpha, larger lr
        assert lo["lr_init"] <= hi["lr_init"]
    else:
        assert lo["lr_init"] >= hi["lr_init"]


@settings(max_examples=300, deadline=None)
@given(
    sizes,
    st.integers(1, 100),
    st.integers(1, 100),
    st.integers(1, 512),
    st.floats(1e-4, 0.1),
    st.integers(1, 5),
    alphas,
    kappas,
    st.integers(1, 1024),
    st.floats(0.05, 1.0),
)
def test_ranges(n, classes, ipc, batch, lr, epochs, alpha, kappa, max_batch, gain):
    out = scale_tm(n, classes, ipc, batch, lr, epochs, alpha=alpha, kappa=kappa, gain=gain, max_batch_syn=max_batch)
    s, steps = out["expert_steps"], out["syn_steps"]
    assert out["ratio"] == pytest.approx(s / steps)
    # lr_init lies between gain × the expert lr and gain × expert_lr × S / N (alpha in [0, 1])
    lo, hi = sorted((gain * lr, gain * lr * s / steps))
    assert lo * (1 - 1e-3) <= out["lr_init"] <= min(1.0, hi) * (1 + 1e-3)
    assert out["lr_init"] > 0 and out["lr_lr"] > 0
    assert out["lr_lr"] == pytest.approx(kappa * out["lr_init"] ** 2, rel=1e-3)
    n_syn = classes * ipc
    assert out["batch_syn"] == (0 if n_syn <= max_batch else max_batch)
    assert 0 <= out["batch_syn"] <= max_batch
    assert steps == 10 and out["iterations"] == 200


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(10, 80))
def test_syn_steps_growth_is_capped(n, cap):
    out = scale_tm(n, 2, 10, 64, 0.01, 2, syn_steps_max=cap, max_ratio=10.0)
    assert 10 <= out["syn_steps"] <= cap
    assert out["syn_steps"] == min(cap, max(10, math.ceil(out["expert_steps"] / 10.0)))


def test_invalid_inputs():
    with pytest.raises(ValueError):
        scale_tm(100, 0, 10, 64, 0.01, 2)
    with pytest.raises(ValueError):
        scale_tm(100, 2, 10, 64, 0.0, 2)
    with pytest.raises(ValueError):
        scale_tm(100, 2, 10, 64, 0.01, 2, alpha=-1)
    with pytest.raises(ValueError):
        scale_tm(100, 2, 10, 64, 0.01, 2, gain=0.0)


def test_rule_overrides_are_valid_config():
    # the base pins the small-set values, so its cells do not follow the auto defaults
    assert rule_overrides("bloodmnist", 10, RULES["base"]) == ["method.syn_steps=10", "method.expert_epochs=2"]
    for name, rule in RULES.items():
        ov = rule_overrides("bloodmnist", 10, rule)
        cfg = build_config("cpu", None, ov)  # every override is a known key of the right type
        if rule is not None:
            keys = {"lr_init", "lr_lr", "syn_steps", "batch_syn", "iterations", "expert_epochs"} | (
                {"lr_img"} if rule.img_comp else set()
            )
            assert {next(iter(parse_override(o)["method"])) for o in ov} == keys
            expected = rule.gain * 0.01 * (374 / 10) ** rule.alpha
            assert cfg.distill.active.lr_init == pytest.approx(expected, rel=1e-3), name


@settings(max_examples=100, deadline=None)
@given(sizes, alphas, st.floats(0.05, 1.0))
def test_img_comp_keeps_lr_img_times_lr_init(n, alpha, gain):
    out = scale_tm(n, 2, 10, 64, 0.01, 2, TMBase(lr_img=100.0), alpha=alpha, gain=gain, img_comp=True)
    assert out["lr_img"] * out["lr_init"] == pytest.approx(100.0 * 0.01, rel=2e-3)
    assert "lr_img" not in scale_tm(n, 2, 10, 64, 0.01, 2, alpha=alpha, gain=gain)


@settings(max_examples=60, deadline=None)
@given(n_train=st.integers(1, 300_000), batch=st.sampled_from([32, 64, 128, 256]))
def test_auto_span_is_the_steps4_rule(n_train, batch):
    from meddistill.distill.scaling import RULES, auto_span, scale_tm

    rule = RULES["steps4"]
    steps, span = auto_span(n_train, batch)
    out = scale_tm(
        n_train, 2, 10, batch, 0.01, 2, alpha=rule.alpha, kappa=rule.kappa, syn_steps_max=rule.syn_steps_max,
        max_ratio=rule.max_ratio, short_span=rule.short_span,
    )  # fmt: skip
    assert (steps, span) == (out["syn_steps"], out["expert_epochs"])
    assert 10 <= steps <= 50 and span in (1, 2)
    assert expert_steps_per_span(n_train, batch, span) / steps <= 4 or steps == 50
