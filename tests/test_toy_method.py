"""Adding a method touches its module and one import line: a toy method defined here, in one
test module, registers with its config section and presets, runs end to end at the tiny scale
through the CLI, and appears in ``--help``, the config dump and its generated method YAML."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import yaml

from meddistill.build import build_config, method_yaml
from meddistill.cli import main
from meddistill.config import setting
from meddistill.distill import METHODS, DistillContext, register_method
from meddistill.distill.base import distill_generator
from meddistill.synset import SynSet


@dataclass
class ToyConfig:
    iterations: int = setting(100, lo=1)
    step: float = setting(0.5, lo=0, hi=1, lo_open=True)


def toy(ctx: DistillContext) -> SynSet:
    """Toy: noise pulled towards each class's mean image."""
    d: ToyConfig = ctx.cfg.distill.active
    gen = distill_generator(ctx)
    ipc, train = ctx.cfg.distill.ipc, ctx.ds.train
    images, labels = [], []
    for c, idx in enumerate(ctx.class_indices()):
        mean = train.images[idx].mean(0)
        x = torch.randn((ipc, *mean.shape), generator=gen)
        for _ in range(d.iterations):
            x = x + d.step * (mean - x)
        images.append(x)
        labels.append(torch.full((ipc,), c))
    return ctx.make_synset(torch.cat(images), torch.cat(labels))


@pytest.fixture
def toy_method():
    register_method("toy", config=ToyConfig, presets={"tiny": {"iterations": 3}})(toy)
    try:
        yield
    finally:
        del METHODS._entries["toy"]


def test_toy_method_has_its_section_and_tiny_preset(toy_method):
    cfg = build_config("tiny", **{"distill.method": "toy"})
    assert cfg.distill.active == ToyConfig(iterations=3)
    assert build_config("cpu", **{"distill.method": "toy"}).distill.active.iterations == 100
    assert "# toy:" in method_yaml("toy") and "#   step: 0.5" in method_yaml("toy")


def test_toy_method_is_in_the_help(toy_method, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "toy: Toy: noise pulled towards each class's mean image" in " ".join(capsys.readouterr().out.split())


def test_toy_method_runs_at_tiny_scale_and_is_dumped(toy_method, tmp_path, capsys, data_dir):
    code = main(
        ["run", "breastmnist", "--method", "toy", "--profile", "tiny", "--ipc", "2", "--out", str(tmp_path / "runs"),
         "--experts-dir", str(tmp_path / "experts"), "--data-root", str(data_dir), "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test ACC" in out
    (dumped,) = (tmp_path / "runs").rglob("config.yaml")
    cfg = yaml.safe_load(dumped.read_text())
    assert cfg["distill"]["method"] == "toy" and cfg["distill"]["toy"] == {"iterations": 3, "step": 0.5}
    assert not (tmp_path / "experts").exists()  # it reads no expert trajectories


def test_an_unregistered_method_is_gone_after_the_fixture():
    assert "toy" not in METHODS
