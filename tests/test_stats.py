"""Diversity and coverage metrics (stats.py): hand-made cases with known answers, the cached
feature net, the run-folder cache, the benchmark row block and the ``meddistill stats`` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meddistill import stats
from meddistill.cli import main
from meddistill.stats import (
    class_coverage,
    knn_precision_recall,
    knn_radii,
    mean_pairwise_cosine_distance,
    per_class,
    vendi_score,
)
from meddistill.synset import SynSet

# ---------------------------------------------------------------------------- pure metrics


def test_identical_images_have_no_diversity():
    x = torch.randn(1, 3, 8, 8).repeat(5, 1, 1, 1)
    assert mean_pairwise_cosine_distance(x) == pytest.approx(0.0, abs=1e-9)
    assert vendi_score(x) == pytest.approx(1.0, abs=1e-9)


def test_orthogonal_features_count_as_n_distinct_images():
    f = torch.eye(6)[:5] * torch.arange(1, 6).view(-1, 1)  # orthogonal rows of different norms
    assert vendi_score(f) == pytest.approx(5.0, rel=1e-9)
    assert mean_pairwise_cosine_distance(f) == pytest.approx(1.0, abs=1e-9)
    # more images than dimensions (the d×d path): 3 copies of each of 2 orthogonal directions
    g = torch.eye(2).repeat(3, 1)
    assert vendi_score(g) == pytest.approx(2.0, rel=1e-9)


def test_opposite_features_are_at_distance_two_and_one_image_is_undefined():
    assert mean_pairwise_cosine_distance(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert mean_pairwise_cosine_distance(torch.ones(1, 4)) is None
    assert vendi_score(torch.ones(1, 4)) == 1.0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_vendi_is_between_one_and_n_for_random_features(n, d, seed):
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    v = vendi_score(f)
    assert 1.0 <= v <= n and math.isfinite(v)
    dist = mean_pairwise_cosine_distance(f)
    assert dist is None if n == 1 else 0.0 <= dist <= 2.0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_vendi_of_a_set_repeated_twice_is_unchanged(n, seed):
    """Repeating every image adds no distinct image (the eigenvalues of K/n are the same)."""
    f = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    assert vendi_score(torch.cat([f, f])) == pytest.approx(vendi_score(f), rel=1e-6)


def test_per_class_applies_the_metric_to_each_class_and_marks_absent_ones():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert per_class(vendi_score, x, y, 3) == [pytest.approx(2.0), pytest.approx(1.0), None]


def _clusters(per_cluster: int = 20, noise: float = 0.05, classes: int = 2, clusters: int = 4, seed: int = 0):
    """Real points around ``classes × clusters`` orthogonal centres (cluster j of class c is
    centre ``c * clusters + j``); returns centres, real features, real labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes * clusters, 32) * 10
    jitter = noise * 10 * torch.randn(len(centres) * per_cluster, 32, generator=g)
    real = centres.repeat_interleave(per_cluster, 0) + jitter
    labels = torch.arange(classes).repeat_interleave(clusters * per_cluster)
    return centres, real, labels


def test_one_synthetic_image_per_cluster_covers_everything():
    centres, real, yr = _clusters()
    ys = torch.arange(2).repeat_interleave(4)
    assert class_coverage(real, yr, centres, ys, 2) == [1.0, 1.0]
    pr = knn_precision_recall(real, yr, centres, ys, 2, k=3)
    assert pr["recall"] == [1.0, 1.0] and pr["precision"] == [1.0, 1.0] and pr["k_syn"] == [3, 3]


def test_synthetic_images_in_one_cluster_have_low_recall():
    centres, real, yr = _clusters()
    g = torch.Generator().manual_seed(1)
    # all 4 synthetic images of a class sit tightly at the first cluster of that class
    syn = centres[[0, 0, 0, 0, 4, 4, 4, 4]] + 0.01 * torch.randn(8, 32, generator=g)
    ys = torch.arange(2).repeat_interleave(4)
    pr = knn_precision_recall(real, yr, syn, ys, 2, k=3)
    assert max(pr["recall"]) < 0.3  # at most the one cluster (a quarter of the class) is recalled
    assert pr["precision"] == [1.0, 1.0]  # but they are realistic


def test_synthetic_images_of_the_wrong_class_lose_coverage_and_precision():
    centres, real, yr = _clusters()
    ys = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])  # every synthetic image labelled as the other class
    assert class_coverage(real, yr, centres, ys, 2) == [0.0, 0.0]
    pr = knn_precision_recall(real, yr, centres, ys, 2, k=3)
    assert pr["precision"] == [0.0, 0.0]
    # (recall stays high here: 4 spread-out synthetic images have radii spanning the whole sphere,
    # the known weakness of k-NN recall for sparse sets — class coverage is the metric that sees it)


@pytest.mark.parametrize("ipc", [1, 2, 3])
def test_precision_recall_with_ipc_at_most_k_do_not_crash(ipc):
    _, real, yr = _clusters()
    syn = torch.cat([real[yr == 0][:ipc], real[yr == 1][:ipc]])  # copies of real images
    ys = torch.arange(2).repeat_interleave(ipc)
    pr = knn_precision_recall(real, yr, syn, ys, 2, k=3)
    assert pr["k_syn"] == [ipc - 1, ipc - 1]
    assert pr["precision"] == [1.0, 1.0]  # copies of real images lie on the real manifold
    assert all(0.0 < r <= 1.0 for r in pr["recall"])
    if ipc == 1:  # radius 0: a lone image recalls only itself
        assert pr["recall"] == [pytest.approx(1 / 80), pytest.approx(1 / 80)]


def test_knn_radii_are_the_kth_neighbour_distance():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    r = knn_radii(x, k=1)
    assert r.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2), math.sqrt(2)])
    assert knn_radii(x, k=2).tolist() == pytest.approx([2.0, math.sqrt(2), 2.0])
    assert knn_radii(x, k=5).tolist() == pytest.approx([2.0, math.sqrt(2), 2.0])  # k lowered to n - 1
    assert knn_radii(x[:1], k=3).tolist() == [0.0]


def test_a_class_without_synthetic_images_is_uncovered():
    centres, real, yr = _clusters()
    ys = torch.zeros(4, dtype=torch.long)
    assert class_coverage(real, yr, centres[:4], ys, 2) == [1.0, 0.0]
    pr = knn_precision_recall(real, yr, centres[:4], ys, 2, k=3)
    assert pr["precision"] == [1.0, None] and pr["recall"] == [1.0, 0.0] and pr["k_syn"] == [3, None]


# ---------------------------------------------------------------------------- real data


def _coreset(ds, ipc: int) -> SynSet:
    idx = torch.cat([torch.nonzero(ds.train.labels == c).view(-1)[:ipc] for c in range(ds.num_classes)])
    return SynSet(ds.train.images[idx], ds.train.labels[idx], ds.mean, ds.std)


def test_set_stats_on_breastmnist_trains_the_feature_net_once(breast, tiny, tmp_path, monkeypatch):
    from meddistill.experts import expert_dir

    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    calls = []
    real_fit = stats.fit
    monkeypatch.setattr(stats, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    syn = _coreset(breast, 4)
    out = stats.set_stats(syn, breast, cfg, torch.device("cpu"))
    folder = stats.stats_net_dir(cfg)
    assert calls == [1] and folder != expert_dir(cfg) and folder.name.startswith("stats-")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["identity"]["tag"] == "stats-net" and 0.0 <= meta["val_acc"] <= 1.0
    mtime = (folder / "net.safetensors").stat().st_mtime_ns
    again = stats.set_stats(syn, breast, cfg, torch.device("cpu"))
    assert calls == [1] and (folder / "net.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    assert again == out
    assert out["n_syn"] == 8 and out["n_real"] == len(breast.train)  # 546 < 1000 per class: all of them
    assert 1.0 <= out["vendi"] <= 4.0 and 0.25 <= out["vendi_norm"] <= 1.0
    for key in ("intra_dist_feat", "intra_dist_pixel"):
        assert 0.0 < out[key] <= 2.0
    for key in ("class_coverage", "precision", "recall"):
        assert 0.0 <= out[key] <= 1.0
    assert out["precision"] == 1.0  # real train images are on the real manifold
    assert out["per_class"]["k_syn"] == [3, 3]
    json.dumps(out, allow_nan=False)  # strict JSON
    # a different expert seed is a different feature net
    other = tiny(experts_dir=str(tmp_path / "ex"))
    other.experts.seed = 1
    assert stats.stats_net_dir(other) != folder


def test_set_stats_sees_the_collapse_of_a_set_of_copies(breast, tiny, tmp_path):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    diverse = _coreset(breast, 4)
    pick = [0, 0, 0, 0, 4, 4, 4, 4]  # one image of each class, four times
    same = SynSet(diverse.images[pick], diverse.labels[pick], breast.mean, breast.std)
    a = stats.set_stats(diverse, breast, cfg, torch.device("cpu"))
    b = stats.set_stats(same, breast, cfg, torch.device("cpu"))
    assert b["vendi"] == pytest.approx(1.0) and b["intra_dist_feat"] == pytest.approx(0.0, abs=1e-6)
    assert b["intra_dist_pixel"] == pytest.approx(0.0, abs=1e-6)
    assert a["vendi"] > b["vendi"] and a["recall"] > b["recall"]


def test_run_stats_is_cached_in_the_run_folder(breast, tiny, tmp_path, monkeypatch):
    cfg = tiny(experts_dir=str(tmp_path / "ex"))
    first = stats.run_stats(cfg, tmp_path, _coreset(breast, 2), breast)
    assert json.loads((tmp_path / "stats.json").read_text()) == first

    def fail(*_a, **_k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(stats, "set_stats", fail)
    assert stats.run_stats(cfg, tmp_path, _coreset(breast, 2), breast) == first
    other = tiny(experts_dir=str(tmp_path / "ex2"))
    other.experts.lr = 0.02  # another feature net: the cached stats do not apply
    with pytest.raises(AssertionError, match="recomputed"):
        stats.run_stats(other, tmp_path, _coreset(breast, 2), breast)


def test_benchmark_rows_gain_a_stats_block_and_keep_their_keys(tmp_path, monkeypatch):
    from meddistill.bench.executors import run_one
    from meddistill.bench.grid import Grid, expand

    grid = Grid(
        "g",
        "tiny",
        ["breastmnist"],
        [2],
        ["random"],
        [0],
        full=False,
        out_dir=str(tmp_path / "runs"),
        experts_dir=str(tmp_path / "ex"),
        store=str(tmp_path / "s.jsonl"),
    )
    (cell,) = expand(grid, device="cpu")
    row = run_one(cell)
    run_dir = Path(row["run_dir"])
    (cached,) = run_dir.glob("eval_*.json")
    assert set(row) - {"stats", "privacy", "cell_key", "seconds", "machine"} == set(json.loads(cached.read_text()))
    assert row["stats"] == json.loads((run_dir / "stats.json").read_text())
    # the privacy block: the run folder's audit (a random coreset is its own source: traced, not shareable)
    from meddistill.audit import AuditReport, read_audit

    assert row["privacy"] == AuditReport(**read_audit(run_dir)).summary()
    assert row["privacy"]["traced_ssim"] == 4 and not row["privacy"]["shareable"]
    import meddistill.audit as audit_mod

    monkeypatch.setattr(audit_mod, "audit", lambda *a, **k: pytest.fail("the audit of an audited set ran again"))
    assert run_one(cell)["privacy"] == row["privacy"]  # read back from audit.json


def test_stats_cli_prints_one_line_and_writes_stats_json(tmp_path, capsys):
    common = ["--experts-dir", str(tmp_path / "ex"), "--device", "cpu", "--no-progress"]
    argv = ["distill", "breastmnist", "--method", "random", "--ipc", "2", "--profile", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "runs"), *common]) == 0
    run_dir = next((tmp_path / "runs" / "breastmnist_28").iterdir())
    capsys.readouterr()
    assert main(["stats", str(run_dir), *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "Vendi" in lines[0] and "stats.json" in lines[0]
    saved = json.loads((run_dir / "stats.json").read_text())
    assert saved["n_syn"] == 4 and (tmp_path / "ex" / "breastmnist_28").is_dir()
    assert main(["stats", str(run_dir), "--json", *common]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line) == saved


def test_stats_cli_on_a_folder_without_config_is_one_error_line(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_feature_net_of_own_images_is_kept_under_experts_dir(tmp_path):
    # the folder was "<cfg.dataset>_<size>", an absolute path for own images: the net went beside them
    from meddistill.build import build_config
    from tests.own_images_data import npz_arrays, write_pngs

    images = tmp_path / "scans"
    arrays = npz_arrays(Path(os.environ["MEDDISTILL_DATA"]) / "breastmnist.npz", {"train": 8, "val": 4, "test": 4})
    write_pngs(arrays, images, ("malignant", "benign"))
    cfg = build_config("tiny", dataset=str(images), experts_dir=str(tmp_path / "experts"))
    assert stats.stats_net_dir(cfg).parent == tmp_path / "experts" / "scans_28"
