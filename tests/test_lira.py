"""LiRA against a distillation pipeline (meddistill.lira): the statistic, the halves, the
attack's unbiasedness, and end to end on BreastMNIST at the tiny profile with a set that holds
members verbatim (found), a set of test images (not found) and an interrupted run (resumed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill.errors import ConfigError
from meddistill.lira import balanced_halves, lira_attack, phi, run_lira, tpr_at_fpr
from meddistill.synset import SynSet
from tests.conftest import tiny_config

CPU = torch.device("cpu")
# nets that fit their few images (no augmentation, a larger lr) in few steps: the test is fast
FAST_EVAL = {"eval.epochs": 40, "eval.val_every": 20, "eval.dsa": False, "eval.lr": 0.05, "distill.ipc": 1}
K = 8


def _cfg(root, method="random", **flags):
    flags = {"distill.method": method, **FAST_EVAL, **flags}
    return tiny_config("breastmnist", root / "runs", root / "experts", **flags)


def _without_seconds(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("shadow_seconds", "total_seconds")}


# --- the statistic and the halves ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000))
def test_phi_is_log_p_y_over_the_rest(classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, classes, generator=g) * 4
    y = torch.randint(0, classes, (16,), generator=g)
    p = torch.softmax(logits.double(), 1)
    p_y = p[torch.arange(16), y]
    assert torch.allclose(phi(logits, y), torch.log(p_y) - torch.log(1 - p_y), atol=1e-8)


def test_phi_is_finite_where_the_softmax_saturates():
    logits = torch.tensor([[1000.0, 0.0, -5.0], [0.0, 800.0, 1.0], [-700.0, 0.0, 0.0]])
    out = phi(logits, torch.tensor([0, 1, 0]))
    assert torch.isfinite(out).all()
    assert out[0] == pytest.approx(1000.0 - np.log(1 + np.exp(-5.0)))
    assert out[1] == pytest.approx(800.0 - np.log(1 + np.e)) and out[2] == pytest.approx(-700.0 - np.log(2.0))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.integers(1, 300), st.integers(0, 10**6))
def test_each_train_image_is_in_exactly_half_the_shadows(shadows, n, seed):
    keep = balanced_halves(n, shadows, seed)
    assert keep.shape == (shadows, n) and (keep.sum(0) == shadows // 2).all()
    assert np.array_equal(keep, balanced_halves(n, shadows, seed))  # seeded, never the clock


def test_tpr_at_fpr_reads_the_roc_with_ties_together():
    member = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    score = np.array([9, 8, 8, 7, 6, 5, 4, 3, 2, 1], float)
    assert tpr_at_fpr(member, score, 0.0) == pytest.approx(1 / 3)  # the tie at 8 brings a false positive
    assert tpr_at_fpr(member, score, 1 / 7) == pytest.approx(1.0)
    assert np.isnan(tpr_at_fpr(np.zeros(3, bool), np.arange(3.0), 0.01))


@pytest.mark.parametrize("shadows", [4, 8])
def test_without_a_membership_signal_the_scores_are_at_chance(shadows):
    """Leaving the target out gives its members one IN observation fewer than its non-members;
    with unequal counts the online score read that as a signal (AUC 0.45 at K = 8)."""
    rng = np.random.default_rng(0)
    n = 3000
    keep = balanced_halves(n, shadows, 0)
    phis = rng.normal(0, 2, (1, n)) + rng.normal(0, 1, (shadows, n)) * rng.uniform(0.5, 2, (1, n))
    att = lira_attack(phis, keep, [None] * shadows)
    for a in ("online", "offline"):
        assert att[a]["all"].auc == pytest.approx(0.5, abs=0.02), a
        assert att[a]["sources"] is None


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 7), st.integers(0, 10_000))
def test_the_attack_gives_figures_from_two_shadows_on(shadows, seed):
    rng = np.random.default_rng(seed)
    n = 60
    keep = balanced_halves(n, shadows, seed)
    sources = [list(np.nonzero(row)[0][:3]) for row in keep]
    att = lira_attack(rng.normal(0, 1, (shadows, n)), keep, sources)
    assert att["n_sources"] == 3 * shadows
    for a in ("online", "offline"):
        for m in att[a].values():
            assert 0 <= m.auc <= 1 and 0 <= m.tpr_at_fpr_0_1pct <= m.tpr_at_fpr_1pct <= 1


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verbatim(breast, tmp_path_factory):
    """LiRA on the random coreset: every synthetic image is a member of its shadow's half."""
    root = tmp_path_factory.mktemp("lira")
    cfg = _cfg(root)
    return cfg, run_lira(cfg, breast, CPU, K, root / "lira", progress=False)


def test_lira_finds_members_a_set_holds_verbatim(verbatim):
    _, res = verbatim
    assert res.n_sources == K * 2  # ipc 1, two classes, every shadow
    src = res.offline_sources
    assert src.tpr_at_fpr_1pct > 0.2 and src.auc > 0.8
    assert res.shadows == K and len(res.shadow_seconds) == K and res.total_seconds >= sum(res.shadow_seconds)
    assert res.experts_per_shadow is False and res.method == "random" and res.global_variance is True


def test_lira_finds_nothing_in_a_set_of_test_images(breast, tmp_path):
    def test_images(cfg_k, ds_k):
        g = torch.Generator().manual_seed(cfg_k.seed)
        y = ds_k.test.labels
        per_class = [torch.nonzero(y == c).view(-1) for c in (0, 1)]
        idx = torch.cat([i[torch.randperm(len(i), generator=g)[:2]] for i in per_class])
        return SynSet(ds_k.test.images[idx], y[idx], ds_k.mean, ds_k.std)

    res = run_lira(_cfg(tmp_path), breast, CPU, K, tmp_path / "lira", progress=False, distill_fn=test_images)
    for m in (res.online, res.offline):
        assert m.auc == pytest.approx(0.5, abs=0.05) and m.tpr_at_fpr_1pct < 0.05
    assert res.n_sources == 0 and res.to_dict()["offline_sources"] == "n/a"


def test_an_interrupted_lira_resumes_without_redoing_finished_shadows(breast, tmp_path, verbatim):
    from meddistill.lira import _default_distill

    _, whole = verbatim
    cfg = _cfg(tmp_path)  # the same pipeline, another work folder
    calls = []

    def counting(cfg_k, ds_k):
        calls.append(cfg_k.seed)
        return _default_distill(cfg_k, ds_k)

    def failing(cfg_k, ds_k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return counting(cfg_k, ds_k)

    with pytest.raises(KeyboardInterrupt):
        run_lira(cfg, breast, CPU, K, tmp_path / "lira", progress=False, distill_fn=failing)
    done = json.loads((tmp_path / "lira" / "shadow_0" / "shadow.json").read_text())
    assert not (tmp_path / "lira" / "shadow_2" / "shadow.json").exists()
    calls.clear()
    res = run_lira(cfg, breast, CPU, K, tmp_path / "lira", progress=False, distill_fn=counting)
    assert len(calls) == K - 2  # shadows 2 .. K-1 only
    assert res.shadow_seconds[0] == done["seconds"]
    assert _without_seconds(res.to_dict()) == _without_seconds(whole.to_dict())
    saved = json.loads((tmp_path / "lira" / "lira.json").read_text())
    assert _without_seconds(saved) == _without_seconds(json.loads(json.dumps(whole.to_dict())))
    with pytest.raises(ConfigError, match="another pipeline or K"):  # a folder belongs to one pipeline and K
        run_lira(cfg, breast, CPU, K + 2, tmp_path / "lira", progress=False)


def test_a_half_without_ipc_images_of_a_class_is_a_config_error(breast, tmp_path):
    cfg = _cfg(tmp_path, **{"distill.ipc": 100})  # class 0 of BreastMNIST has 147 train images: halves hold ~73
    with pytest.raises(ConfigError, match=r"shadow 0's half .* fewer than ipc 100"):
        run_lira(cfg, breast, CPU, 4, tmp_path / "lira", progress=False)
    assert not (tmp_path / "lira").exists()
    with pytest.raises(ConfigError, match="at least 2 shadows"):
        run_lira(cfg, breast, CPU, 1, tmp_path / "lira", progress=False)

