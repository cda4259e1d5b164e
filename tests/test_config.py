from __future__ import annotations

import re

import pytest
import yaml

from meddistill.build import build_config, config_from_dict
from meddistill.config import dump_yaml, parse_override
from meddistill.distill.tm_auto import auto_span
from meddistill.errors import ConfigError


def test_profile_then_file_then_overrides_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("distill:\n  ipc: 5\n  ptm: {iterations: 7, syn_steps: 3}\n")
    cfg = build_config("tiny", str(f), ["method.iterations=9", "eval.nets=[convnet,vgg11]"], **{"distill.ipc": 3})
    assert cfg.profile == "tiny" and cfg.net.width == 16
    assert cfg.distill.active.iterations == 9 and cfg.distill.active.syn_steps == 3 and cfg.distill.ipc == 3
    assert cfg.eval.nets == ["convnet", "vgg11"]


def test_resolved_config_round_trips_through_yaml():
    import yaml

    from meddistill.identity import distill_identity

    cfg = build_config("cpu", overrides=["distill.ptm.dom.every=7", "distill.dm.lr_img=3"])
    dumped = yaml.safe_load(dump_yaml(cfg))
    assert set(dumped["distill"]) == {"method", "ipc", "checkpoint_every_s", "log_every", "ptm"}  # only what it reads
    back = config_from_dict(dumped)
    assert back.to_dict(active_only=True) == cfg.to_dict(active_only=True)
    assert distill_identity(back) == distill_identity(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ("distill.ipcc=3", "unknown config key 'distill.ipcc'"),
        ("distill.ipc=three", "must be an integer"),
        ("distill.ptm.anchored=maybe", "must be true or false"),
        ("distill.ptm.ipc=3", "unknown config key 'distill.ptm.ipc'"),
        ("method.outer=3", "method 'ptm' has no setting 'outer'"),
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


def test_a_method_override_with_an_unknown_method_names_the_method():
    # was "method 'mtx' has no setting 'lr_img'", as if the method existed
    with pytest.raises(ConfigError, match="unknown method 'mtx'; registered methods: "):
        build_config("tiny", overrides=["distill.method=mtx", "method.lr_img=10"])


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        build_config("huge")


def test_a_profile_set_in_a_file_or_override_must_be_the_one_in_use(tmp_path):
    # --set profile=paper on a tiny run relabelled it "paper" with tiny's settings
    with pytest.raises(ConfigError, match="'profile=paper' sets profile 'paper' but the config is built on 'tiny'"):
        build_config("tiny", overrides=["profile=paper"])
    f = tmp_path / "c.yaml"
    f.write_text("profile: bogus\n")
    with pytest.raises(ConfigError, match=r"c\.yaml sets profile 'bogus'"):
        build_config("cpu", str(f))
    f.write_text("profile: tiny\n")  # a run folder's config.yaml, reused with its own profile
    assert build_config("tiny", str(f)).profile == "tiny"


def test_a_dom_start_after_its_stop_is_refused_with_the_config():
    # DOM then never ran, in a run still labelled ptm
    with pytest.raises(ConfigError, match=r"dom.start \(0.9\) is after distill.ptm.dom.stop \(0.1\)"):
        build_config("tiny", overrides=["distill.method=ptm", "distill.ptm.dom.start=0.9", "distill.ptm.dom.stop=0.1"])


def test_a_config_that_only_trains_experts_need_not_serve_the_default_methods_schedule():
    # reference_compare and `meddistill experts` train 2-epoch experts on the tiny profile
    assert build_config("tiny", overrides=["experts.epochs=2"]).experts.epochs == 2


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["method.expert_epochs=10"], "the schedule matches up to expert epoch 12 but experts have 4 epochs"),
        (["method.min_start_epoch=3", "method.max_start_epoch=2"], r"max_start_epoch \(2\) must exceed"),
    ],
)
def test_a_schedule_the_experts_cannot_serve_fails_the_dry_run(overrides, match, capsys):
    # it passed --dry-run, and failed the run once its experts were trained
    from meddistill.cli import main

    argv = ["distill", "breastmnist", "--profile", "tiny", "--method", "ptm", "--dry-run"]
    assert main([*argv, *(a for ov in overrides for a in ("--set", ov))]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1


def test_override_parsing_types():
    assert parse_override("a.b=0.5") == {"a": {"b": 0.5}}
    assert build_config("tiny", overrides=["method.lr_lr=1e-3"]).distill.active.lr_lr == 1e-3
    assert parse_override("x=true") == {"x": True}


def test_every_method_has_a_yaml_that_picks_it_and_documents_its_own_section():
    """configs/methods/<m>.yaml selects the method and lists its section's keys with their
    defaults (commented out, so it never overrides a profile's scale); the listing cannot drift."""
    import dataclasses
    from pathlib import Path

    import yaml

    from meddistill.build import method_yaml
    from meddistill.distill import get_spec, list_methods

    folder = Path(__file__).resolve().parents[1] / "configs" / "methods"
    files = {p.stem: p for p in folder.glob("*.yaml")}
    assert set(files) == set(list_methods())
    for name, path in files.items():
        text = path.read_text()
        assert yaml.safe_load(text) == {"distill": {"method": name}}
        picked = build_config("paper", **{"distill.method": name}).to_dict()
        assert build_config("paper", config_file=str(path)).to_dict() == picked
        spec = get_spec(name)
        lines = text.splitlines()
        listed = [ln.split("# ", 1)[1] for ln in lines if ln.startswith("  #   ") or ln == f"  # {name}:"]
        if spec.config is None:
            assert not listed
        else:
            assert yaml.safe_load("\n".join(listed)) == {name: dataclasses.asdict(spec.config())}
        assert text == method_yaml(name), f"{path.name} is stale: run python tools/method_yamls.py"


@pytest.mark.parametrize(
    "override,match",
    [
        ("method.lr_img=.nan", "distill.ptm.lr_img must be a finite number"),
        ("method.iterations=0", r"distill.ptm.iterations=0 is out of range; allowed: \[1, inf\]"),
        ("method.syn_steps=0", "distill.ptm.syn_steps=0 is out of range"),
        ("method.lr_img=-1", r"allowed: \(0, inf\]"),
        ("method.window=1.5", r"allowed: \(0, 1\]"),
        ("method.init=zeros", "allowed: one of real, noise"),
        ("eval.epochs=0", "eval.epochs=0 is out of range"),
        ("eval.num_nets=0", "eval.num_nets=0 is out of range"),
        ("eval.nets=[]", "eval.nets is empty"),
        ("eval.nets=[convnet,alexnet]", "unknown net 'alexnet'"),
        ("experts.epochs=0", "experts.epochs=0 is out of range"),
        ("experts.lr=.inf", "experts.lr must be a finite number"),
        ("distill.ipc=0", "distill.ipc=0 is out of range"),
        ("distill.method=magic", "unknown method 'magic'"),
        ("device=mps", "device 'mps' is not supported"),
        ("device=meta", "device 'meta' is not supported"),
        ("distill.ptm.dom.every=0", "distill.ptm.dom.every=0 is out of range"),
    ],
)
def test_out_of_range_values_are_one_line_errors_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config("tiny", overrides=[override])


def test_every_shipped_profile_is_valid_and_its_method_defaults_are_the_cpu_profile():
    from meddistill.build import new_config
    from meddistill.config import profile_data

    for name in ("tiny", "cpu", "paper"):
        build_config(name)
    assert profile_data("cpu")["distill"] == {"checkpoint_every_s": 120, "log_every": 10}
    expected = new_config().distill.sections
    for section in expected.values():  # the auto settings, resolved for pneumoniamnist (4,708 train images)
        if getattr(section, "syn_steps", None) == "auto":
            section.syn_steps, section.expert_epochs = auto_span(4708, 64)
    assert build_config("cpu").distill.sections == expected


@pytest.mark.parametrize(
    "dataset, steps, span",
    [("breastmnist", 10, 2), ("retinamnist", 10, 2), ("pneumoniamnist", 19, 1), ("bloodmnist", 47, 1)],
)
def test_auto_student_steps_and_span_are_resolved_per_dataset_and_recorded(dataset, steps, span):
    from meddistill.config import dump_yaml

    for method in ("mtt", "ptm", "ptm_nodom", "datm"):
        cfg = build_config("cpu", dataset=dataset, **{"distill.method": method})
        assert (cfg.distill.active.syn_steps, cfg.distill.active.expert_epochs) == (steps, span)
        dumped = yaml.safe_load(dump_yaml(cfg))["distill"][method]
        assert (dumped["syn_steps"], dumped["expert_epochs"]) == (steps, span)
    explicit = build_config("cpu", None, ["method.syn_steps=12"], dataset=dataset, **{"distill.method": "ptm"})
    assert (explicit.distill.active.syn_steps, explicit.distill.active.expert_epochs) == (12, span)
    assert build_config("tiny", dataset=dataset).distill.active.syn_steps == 4  # profiles with numbers keep them


def test_auto_accepts_only_integers_or_auto():
    with pytest.raises(ConfigError, match="must be an integer or auto"):
        build_config("cpu", overrides=["method.syn_steps=fast"])
    with pytest.raises(ConfigError, match="out of range"):
        build_config("cpu", overrides=["method.syn_steps=0"])


def test_an_option_at_its_keyless_value_leaves_the_identity_unchanged():
    from dataclasses import dataclass, field

    from meddistill.config import setting
    from meddistill.identity import identity_dict

    @dataclass
    class Inner:
        a: int = 1

    @dataclass
    class Before:
        x: float = 0.5
        inner: Inner = field(default_factory=Inner)

    @dataclass
    class After:
        x: float = 0.5
        inner: Inner = field(default_factory=Inner)
        extra: float = setting(0.0, lo=0, keyless_at=0.0)

    assert identity_dict(After()) == identity_dict(Before()) == {"x": 0.5, "inner": {"a": 1}}
    assert identity_dict(After(extra=0.3)) == {"x": 0.5, "inner": {"a": 1}, "extra": 0.3}


def test_an_invalid_expert_batch_is_a_range_error_not_a_crash_of_the_auto_settings():
    with pytest.raises(ConfigError, match=r"experts\.batch_size=0 is out of range"):
        build_config("cpu", overrides=["experts.batch_size=0"])


def test_keyless_values_name_each_option_by_its_dotted_key():
    from meddistill.build import new_config
    from meddistill.identity import keyless_values

    neutral = keyless_values(new_config())
    assert neutral["distill.ptm.dom.feature_epoch"] == "last" and neutral["distill.ptm.init_k"] == 5
    assert "distill.ptm.lr_img" not in neutral and "eval.epochs" not in neutral  # no neutral value


def test_a_run_folder_written_before_the_dom_variants_were_removed_still_reads():
    """config.yaml of a PTM run from before the removal stores the retired DOM options at the
    values DOM kept: it rebuilds (eval, audit, export of an existing folder); another value is
    a one-line error naming the variant."""
    from meddistill.build import config_from_dict
    from meddistill.config import dump_yaml

    data = yaml.safe_load(dump_yaml(build_config("tiny")))
    data["distill"]["ptm"]["dom"].update({"when": "every", "rule": "threshold", "rate": 0.1, "reinit": "random"})
    assert config_from_dict(data).distill.active == build_config("tiny").distill.active
    data["distill"]["ptm"]["dom"]["rule"] = "rate"
    with pytest.raises(ConfigError, match=r"distill\.ptm\.dom\.rule='rate' is a DOM variant removed"):
        config_from_dict(data)
