from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from meddistill.audit import audit, ssim_matrix
from meddistill.cli import main
from meddistill.distill import get_method
from meddistill.export import export_run
from meddistill.pipeline import distill


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 28, 28, generator=g)
    s = ssim_matrix(a, a)
    assert torch.allclose(s.diag(), torch.ones(3), atol=1e-4)
    assert (s[~torch.eye(3, dtype=torch.bool)] < 0.5).all()


def test_audit_flags_copies_and_passes_a_distilled_set(breast, tiny, tmp_path):
    from tests.conftest import distill_ctx as _ctx

    cfg = tiny(**{"distill.ipc": 3})
    copy = get_method("random")(_ctx(breast, cfg, tmp_path / "copy"))
    rep_copy = audit(copy, breast, cfg, torch.device("cpu"))
    assert len(rep_copy.flagged) == 6 and min(rep_copy.max_ssim) > 0.99
    cfg_noise = tiny(**{"distill.ipc": 3, "method.init": "noise"})
    distilled = get_method("ptm")(_ctx(breast, cfg_noise, tmp_path / "noise"))
    rep = audit(distilled, breast, cfg_noise, torch.device("cpu"))
    assert rep.flagged == [] and max(rep.max_ssim) < 0.5
    assert 0 <= rep.mia_auc <= 1 and rep.mia_members == rep.mia_nonmembers == 156  # test split has 156


@pytest.mark.parametrize("threshold", [float("nan"), 2.0, -0.1])
def test_audit_refuses_an_ssim_threshold_outside_0_to_1(threshold):
    from meddistill.errors import ConfigError

    with pytest.raises(ConfigError, match="ssim_threshold must be between 0 and 1"):
        audit(None, None, None, torch.device("cpu"), threshold)


def test_audit_and_export_cli_make_a_standalone_folder(tmp_path, capsys, session_dirs, monkeypatch):
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    session_dirs["experts"].mkdir(parents=True, exist_ok=True)
    (proj / "experts").symlink_to(session_dirs["experts"])  # the session's expert cache, by a relative path
    monkeypatch.chdir(proj)
    args = ["--profile", "tiny", "--out", "runs", "--experts-dir", "experts", "--no-progress", "--device", "cpu"]
    assert main(["run", "breastmnist", "--ipc", "2", *args]) == 0
    run_dir = next((proj / "runs" / "breastmnist_28").iterdir())
    capsys.readouterr()
    # from another directory, the run's relative experts_dir is found next to its runs folder
    monkeypatch.chdir(elsewhere)
    assert main(["audit", str(run_dir), "--reference", "--device", "cpu", "--no-progress"]) == 0
    assert list(elsewhere.iterdir()) == []
    out = capsys.readouterr().out
    assert "membership-inference AUC" in out and "reference (random real images)" in out
    assert (run_dir / "audit.json").exists() and (run_dir / "audit.png").exists()
    exp = tmp_path / "export"
    assert main(["export", str(run_dir), str(exp)]) == 0
    with np.load(exp / "synset.npz", allow_pickle=False) as z:
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape == (4, 28, 28)
        assert z["train_labels"].shape == (4, 1)
    card = (exp / "card.md").read_text()
    assert "CC BY 4.0" in card and "test ACC" in card and "Membership-inference AUC" in card
    # the example trains with plain PyTorch, in the export folder, without importing meddistill
    code = (exp / "train_example.py").read_text()
    assert "meddistill" not in code.split('"""')[-1] and len(code.splitlines()) <= 25
    code = code.replace("range(300)", "range(3)")
    (exp / "train_example.py").write_text(code)
    res = subprocess.run([sys.executable, "train_example.py"], cwd=exp, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "final training loss" in res.stdout
    with pytest.raises(Exception, match="not empty"):
        export_run(run_dir, exp)


def test_export_refuses_a_folder_without_synset(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "no synthetic set" in capsys.readouterr().err
    _ = distill  # imported for the public API check


def test_audit_figure_shows_every_synthetic_image(breast, tiny, tmp_path):
    from meddistill.audit import audit_figure
    from tests.conftest import distill_ctx as _ctx

    cfg = tiny(**{"distill.ipc": 3})
    syn = get_method("random")(_ctx(breast, cfg, tmp_path / "r"))
    near = ssim_matrix(syn.pixels(), breast.denormalize(breast.train.images).clamp(0, 1))
    pages = audit_figure(syn, breast, near, tmp_path / "audit.png", per_page=4)
    assert [p.name for p in pages] == ["audit.png", "audit_2.png"] and all(p.exists() for p in pages)
