"""Dataclass configs, YAML profiles and ``key=value`` overrides (timm-style).

Resolution order, later wins: dataclass defaults → profile YAML (``tiny``/``cpu``/``paper``,
shipped in ``meddistill/profiles``) → a user YAML (``--config``) → ``--set a.b=value``
overrides → explicit CLI flags.  The resolved config is dumped beside every result.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meddistill.augment import DSAConfig
from meddistill.errors import ConfigError
from meddistill.nets.registry import NetSpec


@dataclass
class ExpertConfig:
    num_experts: int = 10
    epochs: int = 20
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    # true, false, or "auto": on where the device computes bf16 natively (CUDA with bf16,
    # CPUs with AMX or AVX512-BF16); elsewhere bf16 autocast is emulated and several times slower
    bf16: bool | str = False
    seed: int = 0  # experts are shared by every run seed; this seeds the experts themselves


@dataclass
class DOMConfig:
    """Dynamic Overlap Mitigation."""

    enabled: bool = True
    every: int = 50  # measure overlap every this many iterations
    start: float = 0.2  # first check after this fraction of the run
    stop: float = 0.8  # no replacement after this fraction (the rest re-trains them)
    pixel_threshold: float = 0.9  # cosine similarity above which two same-class images overlap
    feature_threshold: float = 0.95
    max_replace_frac: float = 0.25  # at most this fraction of a class's images per check
    noise: float = 0.0  # std of noise added to re-initialised images


@dataclass
class DistillConfig:
    method: str = "ptm"
    ipc: int = 1
    iterations: int = 1000
    syn_steps: int = 20  # N student steps
    expert_epochs: int = 2  # M: target is expert epoch t + M
    min_start_epoch: int = 0
    max_start_epoch: int = 10  # start epochs are drawn from [min, max)
    stages: int = 3  # PTM: number of progressive stages
    window: float = 0.5  # PTM: each stage's window as a fraction of [min, max)
    span_growth: int = 1  # PTM: M grows by this much per stage
    anchored: bool = True  # PTM: windows keep their lower end at min_start and grow (False: slide)
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_label: float = 5.0
    lr_init: float = 0.01  # initial learnable student lr
    momentum: float = 0.5
    batch_syn: int = 0  # 0: the whole synthetic set in every student step
    init: str = "real"  # real | noise
    soft_labels: bool = False  # learnable soft labels from expert logits (datm always uses them)
    soft_filter: bool = True  # with soft labels, start only from real images the expert classifies right
    soft_temperature: float = 1.0  # soft labels = softmax(expert logits / T) at the start
    memory_saving: bool = False  # recompute the unroll step by step: memory flat in syn_steps, same gradients
    max_grad_norm: float = 0.0  # 0: no clipping of the image gradient
    explode_factor: float = 20.0  # skip a step whose loss exceeds this × running median
    checkpoint_every_s: float = 120.0
    log_every: int = 10
    # DM / DC (baselines)
    dm_batch_real: int = 128
    dm_lr_img: float = 1.0
    dc_lr_img: float = 0.1
    dc_lr_net: float = 0.01
    dc_outer: int = 10
    dc_inner: int = 5
    dom: DOMConfig = field(default_factory=DOMConfig)


@dataclass
class EvalConfig:
    num_nets: int = 3  # fresh nets (seeds) per evaluation net
    epochs: int = 300
    full_epochs: int = 30  # epochs when training on the full real train split
    full_batch_size: int = 64  # the full split needs many steps: deeper nets stay at the prior with 256
    full_val_every: int = 5  # val checks on the full split (epochs)
    lr: float = 0.0  # 0: the learned lr of the synthetic set if it has one, else lr_default
    lr_default: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    val_every: int = 25  # check val (model selection) every this many epochs
    nets: list[str] = field(default_factory=lambda: ["convnet"])
    dsa: bool = True
    bf16: bool = False
    batched: bool = False  # train the num_nets seeds of an architecture together (vmap); slower on CPU here


@dataclass
class RunConfig:
    dataset: str = "pneumoniamnist"
    size: int = 28
    data_root: str = ""
    seed: int = 0
    device: str = "auto"
    profile: str = "cpu"
    out_dir: str = "runs"
    experts_dir: str = "experts"
    net: NetSpec = field(default_factory=NetSpec)
    dsa: DSAConfig = field(default_factory=DSAConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES = ("tiny", "cpu", "paper")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp == bool | str:  # a switch that may also be "auto"
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f"{key} must be true, false or auto, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def merge(obj: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Update dataclass ``obj`` in place from a nested dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))
    return obj


def parse_override(text: str) -> dict[str, Any]:
    """``distill.ipc=10`` → ``{"distill": {"ipc": 10}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return nest(key.strip(), value)


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """``("a.b", 1)`` → ``{"a": {"b": 1}}``."""
    *parents, last = dotted.split(".")
    out: dict[str, Any] = {last: value}
    for p in reversed(parents):
        out = {p: out}
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a YAML file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{p} is not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at top level")
    return data


def profile_data(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("meddistill.profiles").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def build_config(
    profile: str = "cpu",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from a profile, a YAML file, overrides and flags.

    ``flags`` are dotted keys (``distill.ipc``) or top-level keys; ``None`` values are ignored.
    """
    cfg = RunConfig()
    merge(cfg, profile_data(profile))
    cfg.profile = profile
    if config_file:
        merge(cfg, read_yaml(config_file))
    for ov in overrides or []:
        merge(cfg, parse_override(ov))
    for key, value in flags.items():
        if value is not None:
            merge(cfg, nest(key, value))
    return resolve_auto(cfg)


def resolve_auto(cfg: RunConfig) -> RunConfig:
    """Turn ``experts.bf16: auto`` into true/false for the run's device, so the resolved
    config (and every identity hashed from it) records what was actually used."""
    if cfg.experts.bf16 == "auto":
        from meddistill.utils import bf16_native, resolve_device

        cfg.experts.bf16 = bf16_native(resolve_device(cfg.device))
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its dumped dict (e.g. a run folder's ``config.yaml``)."""
    return merge(RunConfig(), data)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
