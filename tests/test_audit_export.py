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
from meddistill.pipeline import distill_set


def test_ssim_is_one_for_identical_images_and_lower_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 28, 28, generator=g)
    s = ssim_matrix(a, a)
    assert torch.allclose(s.diag(), torch.ones(3), atol=1e-4)
    assert (s[~torch.eye(3, dtype=torch.bool)] < 0.5).all()


def test_a_copy_is_traced_at_rank_1_and_flagged_and_a_noise_start_is_not(breast, tiny, tmp_path):
    from tests.conftest import distill_ctx as _ctx

    cpu = torch.device("cpu")
    cfg = tiny(**{"distill.ipc": 3})
    copy = get_method("random")(_ctx(breast, cfg, tmp_path / "copy"))
    rep = audit(copy, breast, cfg, cpu, screen=False)
    assert rep.sources_recorded and rep.traceability["ssim"]["traced"] == list(range(6))
    assert rep.traceability["cos"]["traced"] == list(range(6))  # an exact copy: cosine 1 with its source
    assert not rep.traceability["at_chance"] and rep.traceability["ssim"]["p_value"] < 1e-6
    assert rep.closeness["flagged"] == list(range(6)) and not rep.shareable
    assert min(rep.closeness["ssim"]["percentile_of_test"]) == 100.0
    assert rep.closeness["excluded_duplicates"] == 1  # BreastMNIST stores one train image in its test split too
    cfg_noise = tiny(**{"distill.ipc": 3, "method.init": "noise"})
    distilled = get_method("ptm")(_ctx(breast, cfg_noise, tmp_path / "noise"))
    rep = audit(distilled, breast, cfg_noise, cpu)
    assert rep.init == "noise" and rep.traceability["ssim"]["n_with_sources"] == 0
    assert rep.traceability["at_chance"] and rep.closeness["flagged"] == [] and rep.shareable
    assert 0 <= rep.loss_screen["auc"] <= 1 and rep.loss_screen["members"] == 156  # test split has 156


def test_closeness_is_calibrated_on_the_test_split(breast, tiny, tmp_path, monkeypatch):
    """With a test split made of train images, the reference scores 1 and nothing is above it."""
    from dataclasses import replace

    from meddistill import audit as audit_mod
    from tests.conftest import distill_ctx as _ctx

    cfg = tiny(**{"distill.ipc": 3})
    copy = get_method("random")(_ctx(breast, cfg, tmp_path / "copy"))
    leaky = replace(breast, test=breast.train)
    monkeypatch.setattr(audit_mod, "_ref_path", lambda cfg, n: tmp_path / f"ref_{n}.json")
    monkeypatch.setattr(audit_mod, "duplicates_of", lambda px, train: torch.zeros(len(px), dtype=torch.bool))
    rep = audit(copy, leaky, cfg, torch.device("cpu"), screen=False)
    assert rep.closeness["n_reference"] == min(audit_mod.REF_MAX, len(breast.train))
    assert rep.closeness["ssim"]["limit"] > 0.99 and rep.closeness["ssim"]["above"] == []
    assert not rep.traceability["at_chance"]  # traceability does not depend on the reference


def test_a_test_image_stored_in_the_train_split_too_is_no_reference():
    from meddistill.audit import duplicates_of

    train = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    near = (train[2:3] + 0.5 / 255).clamp(0, 1)
    other = (train[3:4] + 3 / 255).clamp(0, 1)
    assert duplicates_of(torch.cat([near, other]), train).tolist() == [True, False]


def test_traced_at_chance_is_a_poisson_tail():
    from meddistill.audit import poisson_tail, traceability

    assert poisson_tail(0, 0.3) == 1.0
    assert poisson_tail(1, 0.3) == pytest.approx(1 - np.exp(-0.3))
    labels = torch.tensor([0, 0, 1])
    train = torch.tensor([0] * 100 + [1] * 50)
    t = traceability([1, 40, None], labels, train, [[0], [1], []])
    assert t["traced"] == [0] and t["n_with_sources"] == 2 and t["median_rank"] == 20.5
    assert t["p_value"] == pytest.approx(1 - np.exp(-0.02)) and t["at_chance"]  # one trace: p ≈ 0.02
    two = traceability([1, 1, None], labels, train, [[0], [1], []])
    assert two["p_value"] == pytest.approx(1 - np.exp(-0.02) * 1.02) and not two["at_chance"]
    assert traceability([30, 40, None], labels, train, [[0], [1], []])["p_value"] == 1.0


@pytest.mark.parametrize("percentile", [0.0, 100.0, float("nan")])
def test_audit_refuses_a_percentile_outside_0_to_100(percentile):
    from meddistill.errors import ConfigError

    with pytest.raises(ConfigError, match="percentile must be between 0 and 100"):
        audit(None, None, None, torch.device("cpu"), percentile)


def test_audit_and_export_cli_make_a_standalone_folder(tmp_path, capsys, session_dirs, monkeypatch):
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    session_dirs["experts"].mkdir(parents=True, exist_ok=True)
    (proj / "experts").symlink_to(session_dirs["experts"])  # the session's expert cache, by a relative path
    monkeypatch.chdir(proj)
    args = ["--profile", "tiny", "--out", "runs", "--experts-dir", "experts", "--no-progress", "--device", "cpu"]
    assert main(["run", "breastmnist", "--ipc", "2", *args, "--set", "method.init=real"]) == 0  # traceable
    run_dir = next((proj / "runs" / "breastmnist_28").iterdir())
    capsys.readouterr()
    # from another directory, the run's relative experts_dir is found next to its runs folder
    monkeypatch.chdir(elsewhere)
    assert main(["audit", str(run_dir), "--reference", "--device", "cpu", "--no-progress"]) == 0
    assert list(elsewhere.iterdir()) == []
    out = capsys.readouterr().out
    assert "loss-attack screen AUC" in out and "reference (random real images): NOT shareable" in out
    assert (run_dir / "audit.json").exists() and (run_dir / "audit.png").exists()
    exp = tmp_path / "export"
    assert main(["export", str(run_dir), str(exp)]) == 2  # a real-image start is traceable
    assert "is not shareable" in capsys.readouterr().err and not exp.exists()
    assert main(["export", str(run_dir), str(exp), "--allow-traceable"]) == 0
    assert (exp / "card.md").read_text().splitlines()[2].startswith("> **Not shown to be free of patient images")
    exp = tmp_path / "export_noise"
    monkeypatch.chdir(proj)
    assert main(["run", "breastmnist", "--ipc", "2", *args]) == 0  # the default start: DM from noise
    noise_dir = next(d for d in (proj / "runs" / "breastmnist_28").iterdir() if d != run_dir)
    assert main(["export", str(noise_dir), str(exp)]) == 2  # not audited yet
    assert "no privacy audit" in capsys.readouterr().err
    assert main(["audit", str(noise_dir), "--device", "cpu", "--no-progress"]) == 0
    assert main(["export", str(noise_dir), str(exp)]) == 0
    assert "Not shown" not in (exp / "card.md").read_text()
    # the audit's figures show the nearest real train images, and audit.json indexes them: never exported
    assert (noise_dir / "audit.png").exists() and not list(exp.glob("audit*"))
    exp = tmp_path / "export"
    with np.load(exp / "synset.npz", allow_pickle=False) as z:
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape == (4, 28, 28)
        assert z["train_labels"].shape == (4, 1)
    card = (exp / "card.md").read_text()
    assert "CC BY 4.0" in card and "test ACC" in card and "Traceability" in card and "Loss-attack screen" in card
    # the example trains with plain PyTorch, in the export folder, without importing meddistill
    code = (exp / "train_example.py").read_text()
    assert "meddistill" not in code.split('"""')[-1] and len(code.splitlines()) <= 25
    code = code.replace("range(300)", "range(3)")
    (exp / "train_example.py").write_text(code)
    res = subprocess.run([sys.executable, "train_example.py"], cwd=exp, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "final training loss" in res.stdout
    with pytest.raises(Exception, match="not empty"):
        export_run(run_dir, exp, allow_traceable=True)


def test_export_refuses_a_folder_without_synset(tmp_path, capsys):
    assert main(["export", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "no synthetic set" in capsys.readouterr().err
    _ = distill_set  # imported for the public API check


def test_audit_figure_shows_every_synthetic_image(breast, tiny, tmp_path):
    from meddistill.audit import audit_figure
    from tests.conftest import distill_ctx as _ctx

    cfg = tiny(**{"distill.ipc": 3})
    syn = get_method("random")(_ctx(breast, cfg, tmp_path / "r"))
    near = ssim_matrix(syn.pixels(), breast.denormalize(breast.train.images).clamp(0, 1))
    pages = audit_figure(syn, breast, near, tmp_path / "audit.png", per_page=4)
    assert [p.name for p in pages] == ["audit.png", "audit_2.png"] and all(p.exists() for p in pages)


def test_audit_with_shadows_runs_lira_and_the_card_reports_it(tmp_path, capsys, session_dirs):
    args = ["--profile", "tiny", "--out", str(tmp_path / "runs"), "--experts-dir", str(session_dirs["experts"])]
    common = ["--no-progress", "--device", "cpu"]
    assert main(["run", "breastmnist", "--ipc", "1", "--method", "random", *args, *common]) == 0
    run_dir = next((tmp_path / "runs" / "breastmnist_28").iterdir())
    assert main(["audit", str(run_dir), "--shadows", "1", *common]) == 2
    assert "LiRA needs at least 2 shadows" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--shadows", "2", *common]) == 0
    assert "LiRA (2 shadows, offline) AUC" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "lira_k2").iterdir()) == ["lira.json", "shadow_0", "shadow_1"]
    assert main(["export", str(run_dir), str(tmp_path / "exp"), "--allow-traceable"]) == 0
    assert "LiRA membership inference (2 shadow distillations, offline)" in (tmp_path / "exp" / "card.md").read_text()


def test_the_poisson_tail_holds_for_sets_with_hundreds_of_traced_images():
    from meddistill.audit import poisson_tail

    # math.factorial overflowed a float from 171 traced images on (an ipc-50 coreset has 400)
    assert poisson_tail(400, 3.0) == 0.0 and poisson_tail(172, 200.0) == pytest.approx(0.98, abs=0.01)
    assert poisson_tail(1, 0.0) == 0.0 and poisson_tail(0, 0.0) == 1.0


def _audit_json(percentile: float, shareable: bool, recorded: bool = True) -> dict:
    from meddistill.audit import AUDIT_FORMAT

    trace = {"ssim": {"traced": []}, "cos": {"traced": []}, "at_chance": True}
    return {
        "format": AUDIT_FORMAT,
        "synset_hash": "h",
        "shareable": shareable,
        "sources_recorded": recorded,
        "traceability": trace,
        "closeness": {"percentile": percentile, "flagged": []},
    }


@pytest.mark.parametrize(
    ("percentile", "shareable", "recorded", "why"),
    [(99.99, True, True, "only above the test split's 99.99th"), (99.0, False, False, "records no sources")],
)
def test_export_refuses_an_audit_laxer_than_the_default_or_without_sources(
    tmp_path, monkeypatch, percentile, shareable, recorded, why
):
    import json as _json

    from meddistill import export as export_mod
    from meddistill.errors import ArtifactError

    (tmp_path / "audit.json").write_text(_json.dumps(_audit_json(percentile, shareable, recorded)))

    class Syn:
        def content_hash(self):
            return "h"

    with pytest.raises(ArtifactError, match=why):
        export_mod._audit_of(tmp_path, Syn(), allow_traceable=False)
    assert export_mod._audit_of(tmp_path, Syn(), allow_traceable=True)["closeness"]["percentile"] == percentile
    (tmp_path / "audit.json").write_text(_json.dumps(_audit_json(95.0, True)))  # stricter than the default: fine
    assert export_mod._audit_of(tmp_path, Syn(), allow_traceable=False)["shareable"]
