"""Differential privacy end to end (``--dp-epsilon``): what is refused, the guard on the real
train images, the recorded budget (recomputed by the accountant), resume, DP-DM, the export card.
The mechanisms themselves are tested in tests/test_dp.py."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
import torch
import yaml

from meddistill import dp
from meddistill.build import build_config
from meddistill.checks import check_method
from meddistill.cli import main
from meddistill.data.sources import create_dataset
from meddistill.distill import METHODS, DistillContext, MethodSpec, register_method
from meddistill.distill import tm as tm_mod
from meddistill.errors import ArtifactError, ConfigError, PrivacyError
from meddistill.experts import train_experts
from meddistill.export import dp_statement
from meddistill.pipeline import distill_set, load_data
from meddistill.synset import SynSet
from tests.conftest import tiny_config

DP = {"dp.epsilon": 8.0}
NOISE = ["method.init=noise"]


def _dp_cfg(tmp_path, method: str = "ptm", **flags):
    base = {"dataset": "breastmnist", "device": "cpu", "out_dir": str(tmp_path / "runs"),
            "experts_dir": str(tmp_path / "experts"), "distill.method": method, "distill.ipc": 1,
            **DP, **flags}  # fmt: skip
    return build_config("tiny", None, NOISE if method in ("ptm", "mtt", "dm") else [], **base)


@pytest.mark.parametrize(
    "method, overrides, match",
    [
        ("herding", [], "method 'herding' cannot be differentially private (it selects real train images)"),
        ("random", [], "cannot be differentially private"),
        ("dc", [], "gradient matching reads real train images"),
        ("datm", [], "its start filter reads the real train images"),
        ("ptm", ["method.init=real"], "init=real starts from real train images"),
        ("ptm", [], "init=dm starts from real train images"),  # the default start: DM on real images
        ("mtt", ["method.init=centroid"], "init=centroid"),
        ("dm", [], "init=real"),  # DM's own default start
        ("ptm", ["method.init=noise", "method.dom.noise=0.5"], "dom.noise picks a real replacement"),
        ("ptm", ["method.init=noise", "net.norm=batch"], "net.norm=batch"),
    ],
)
def test_a_run_that_cannot_be_private_is_refused_in_one_line(method, overrides, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        check_method(build_config("tiny", None, overrides, **{"distill.method": method, **DP}))


def test_experts_alone_train_under_dp_whatever_the_method_would_start_from():
    check_method(build_config("tiny", None, ["method.init=noise"], **DP))  # the method is private
    cfg = build_config("tiny", **DP)  # the experts command builds this config: ptm's default start is dm
    assert cfg.dp.on and cfg.distill.active.init == "dm"  # refused only when the method runs


def test_dp_settings_enter_the_keys_only_when_on():
    from meddistill.identity import cell_key, expert_identity

    off, on = build_config("tiny"), build_config("tiny", None, NOISE, **DP)
    assert "dp" not in expert_identity(off) and expert_identity(on)["dp"]["num_experts"] == 2
    assert cell_key(build_config("tiny", None, ["dp.epsilon=0"])) == cell_key(off)
    assert cell_key(build_config("tiny", None, NOISE, **{"dp.epsilon": 4.0})) != cell_key(on)


def test_public_normalisation_keeps_the_pixels(breast):
    pub = dp.public_normalisation(breast)
    assert torch.allclose(pub.denormalize(pub.test.images[:8]), breast.denormalize(breast.test.images[:8]), atol=1e-5)
    assert float(pub.mean[0]) == dp.PUBLIC_MEAN and float(pub.std[0]) == dp.PUBLIC_STD


def test_a_dp_run_records_a_budget_the_accountant_recomputes(tmp_path, data_dir, capsys):
    code = main(
        ["run", "breastmnist", "--profile", "tiny", "--ipc", "1", "--dp-epsilon", "8", "--set", "method.init=noise",
         "--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "experts"), "--data-root", str(data_dir),
         "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    (run,) = (tmp_path / "runs" / "breastmnist_28").iterdir()
    record = SynSet.load(run).meta["dp"]
    settings = dp.DPSettings.from_dict(record)
    assert settings.recompute() == record["epsilon"] <= 8.0
    assert settings.delta == dp.default_delta(546) and settings.steps == 2 * 4 * 5  # 2 experts × 4 epochs × ⌈546/128⌉
    (meta,) = (tmp_path / "experts").rglob("meta.json")
    assert yaml.safe_load(meta.read_text())["dp"] == record
    assert yaml.safe_load((run / "config.yaml").read_text())["dp"]["epsilon"] == 8.0
    assert dp_statement(record, {"dp": {"epsilon": 8.0}})[1]
    # exported without an audit (a DP set's statement is its guarantee), without the audit's figures
    assert main(["audit", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert main(["export", str(run), str(tmp_path / "exp")]) == 0
    card = (tmp_path / "exp" / "card.md").read_text()
    assert "-differentially private**" in card and "outside the privacy budget" in card
    assert not list((tmp_path / "exp").glob("audit*"))


def test_the_card_claims_no_guarantee_the_parameters_do_not_give():
    record = dp.DPSettings.plan(8.0, 1e-4, 1.0, 0.2, 40).to_dict()
    lines, private = dp_statement(record, None)
    assert private and "**(7.99, 0.0001)-differentially private**" in lines[0]
    assert dp_statement({**record, "epsilon": 1.0}, None) == (dp_statement({**record, "epsilon": 1.0}, None)[0], False)
    assert "no guarantee is claimed" in dp_statement({**record, "epsilon": 1.0}, None)[0][0]
    assert not dp_statement(record, {"dp": {"epsilon": 4.0}})[1]  # not the run's target
    assert not dp_statement({**record, "accountant": "gdp"}, None)[1]  # cannot be verified
    assert not dp_statement({k: v for k, v in record.items() if k != "steps"}, None)[1]  # incomplete
    assert dp_statement(None, None) == (dp_statement(None, None)[0], False)


@dataclass
class PeekConfig:
    init: str = "noise"


def peek(ctx: DistillContext) -> SynSet:
    """Peek: reads a real train image (as a careless method would)."""
    return ctx.make_synset(ctx.ds.train.images[:2].clone(), torch.tensor([0, 1]))


def test_the_distillation_has_no_handle_on_the_real_train_images(tmp_path):
    spec = MethodSpec("peek", peek, PeekConfig, ("experts", "net", "dsa"), private="experts")
    with METHODS.temporarily("peek", spec):
        cfg = _dp_cfg(tmp_path, "peek")
        with pytest.raises(PrivacyError, match="train"):
            distill_set(cfg, load_data(cfg), progress=False)
        cfg.dp.epsilon = 0.0  # the same method without DP reads them
        assert len(distill_set(cfg, load_data(cfg), progress=False)[1].images) == 2


def test_dp_data_must_be_publicly_normalised(tmp_path):
    """A caller passing its own dataset (train-split statistics) is refused, not silently used."""
    cfg = _dp_cfg(tmp_path, "ptm")
    with pytest.raises(ConfigError, match="normalised with fixed values"):
        distill_set(cfg, create_dataset(cfg), progress=False)


def test_experts_trained_under_another_dp_mechanism_are_not_reused(tmp_path):
    cfg = _dp_cfg(tmp_path, "ptm")
    ds = load_data(cfg)
    folder = train_experts(ds, cfg, torch.device("cpu"), progress=False, epochs=1)
    meta = json.loads((folder / "meta.json").read_text())
    meta["dp"]["noise_multiplier"] *= 0.5  # as another Opacus version might calibrate
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="another DP mechanism"):
        train_experts(ds, cfg, torch.device("cpu"), progress=False, epochs=1)


def test_dm_key_under_dp_does_not_hold_the_number_of_experts():
    from meddistill.identity import distill_identity

    a = build_config("tiny", None, ["method.init=noise"], **{"distill.method": "dm", **DP})
    b = build_config("tiny", None, ["method.init=noise", "experts.num_experts=3"], **{"distill.method": "dm", **DP})
    assert distill_identity(a) == distill_identity(b) and "dp" in distill_identity(a)


def test_a_release_method_must_bring_its_release():
    with pytest.raises(ValueError, match="bad registration"):
        register_method("nope", private="release")(peek)


def test_a_dp_run_resumes_exactly_like_an_uninterrupted_one(tmp_path):
    cfg = _dp_cfg(tmp_path, "ptm")
    ds = load_data(cfg)
    whole = distill_set(cfg, ds, progress=False)[1]
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(tm_mod.RunStopped):
        distill_set(cfg, ds, progress=False, stop_at=5)
    resumed = distill_set(cfg, ds, progress=False)[1]
    assert torch.equal(resumed.images, whole.images) and resumed.lr == whole.lr
    assert resumed.meta["dp"] == whole.meta["dp"]


def test_dp_dm_is_accounted_at_the_largest_class_rate(tmp_path):
    cfg = _dp_cfg(tmp_path, "dm")
    syn = distill_set(cfg, load_data(cfg), progress=False)[1]
    record = syn.meta["dp"]
    assert record["class_counts"] == [147, 399]  # BreastMNIST: the small class sets ε
    assert record["sample_rate"] == max(record["class_rates"]) == pytest.approx(32 / 147)
    assert dp.DPSettings.from_dict(record).recompute() == record["epsilon"] <= 8.0
    assert not any(syn.meta["sources"])  # noise start, nothing traced to a patient


def test_dp_changes_nothing_when_off(tmp_path):
    cfg = tiny_config(out=tmp_path / "runs", experts=tmp_path / "experts")
    assert cfg.dp.on is False and load_data(cfg).mean[0] != dp.PUBLIC_MEAN
