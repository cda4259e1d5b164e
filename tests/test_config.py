from __future__ import annotations

import pytest

from meddistill.config import build_config, config_from_dict, dump_yaml, parse_override
from meddistill.errors import ConfigError


def test_profile_then_file_then_overrides_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("distill:\n  ipc: 5\n  iterations: 7\n")
    cfg = build_config("tiny", str(f), ["distill.iterations=9", "eval.nets=[convnet,vgg11]"], **{"distill.ipc": 3})
    assert cfg.profile == "tiny" and cfg.net.width == 16
    assert cfg.distill.iterations == 9 and cfg.distill.ipc == 3
    assert cfg.eval.nets == ["convnet", "vgg11"]


def test_resolved_config_round_trips_through_yaml():
    import yaml

    cfg = build_config("cpu", overrides=["distill.dom.every=7"])
    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    "override,match",
    [
        ("distill.ipcc=3", "unknown config key 'distill.ipcc'"),
        ("distill.ipc=three", "must be an integer"),
        ("distill.soft_labels=maybe", "must be true or false"),
        ("experts.bf16=sometimes", "must be true, false or auto"),
        ("novalue", "key.path=value"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config("tiny", overrides=[override])


@pytest.mark.parametrize("amx,expected", [(True, True), (False, False)])
def test_bf16_auto_resolves_from_the_cpu_and_is_recorded_as_a_bool(monkeypatch, amx, expected):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    cfg = build_config("cpu", device="cpu")
    assert cfg.experts.bf16 is expected
    assert build_config("cpu", device="cpu", overrides=["experts.bf16=false"]).experts.bf16 is False
    assert build_config("cpu", device="cpu", overrides=["experts.bf16=true"]).experts.bf16 is True


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        build_config("huge")


def test_override_parsing_types():
    assert parse_override("a.b=0.5") == {"a": {"b": 0.5}}
    assert build_config("tiny", overrides=["distill.lr_lr=1e-3"]).distill.lr_lr == 1e-3
    assert parse_override("x=true") == {"x": True}


def test_every_method_has_a_yaml_config_that_only_sets_its_own_keys():
    from pathlib import Path

    import yaml

    from meddistill.distill import list_methods

    folder = Path(__file__).resolve().parents[1] / "configs" / "methods"
    files = {p.stem: p for p in folder.glob("*.yaml")}
    assert set(files) == set(list_methods())
    base = build_config("cpu").to_dict()
    for name, path in files.items():
        cfg = build_config("cpu", config_file=str(path)).to_dict()
        assert cfg["distill"]["method"] == name

        def leaves(d, prefix=()):
            for k, v in d.items():
                yield from leaves(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]

        set_here = dict(leaves(yaml.safe_load(path.read_text())))
        for key, value in leaves(cfg):
            expected = set_here.get(key, dict(leaves(base))[key])
            assert value == expected, (name, key)
