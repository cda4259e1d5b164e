"""Build a run's config: profile → method presets → file → overrides → flags → ``auto``.

:mod:`meddistill.config` is a leaf (dataclasses, ranges, merging); this module is the one
place that joins it with what the config cannot know by itself: the registered methods (their
sections, per-profile presets and ``auto`` rules), the registered nets, and the dataset (its
canonical name and train-split size). Later layers win:

1. dataclass defaults, with a default section for every registered method;
2. the profile YAML (``tiny``/``cpu``/``paper``, shipped in ``meddistill/profiles``), then
   every method's own presets for that profile (its registration's ``presets``);
3. a user YAML (``--config``);
4. ``--set a.b=value`` overrides, then explicit CLI flags (``method.<key>`` addresses the
   active method's section and is applied last, once the method is known);
5. ``auto`` values resolved for the device and dataset, and the whole config validated.

The resolved config is dumped beside every result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

import meddistill.distill
import meddistill.nets  # noqa: F401  (registers every net)
from meddistill.config import (
    DEVICE_PATTERN,
    RunConfig,
    merge,
    nest,
    profile_data,
    read_yaml,
    split_override,
    validate,
)
from meddistill.data.sources import canonical_dataset, train_size
from meddistill.distill.dom import drop_retired
from meddistill.errors import ConfigError
from meddistill.methods import METHODS, get_spec
from meddistill.nets.registry import NETS
from meddistill.utils import bf16_native, resolve_device

METHOD_ALIAS = "method."  # ``method.lr_img`` → ``distill.<active method>.lr_img``


def new_config() -> RunConfig:
    """Dataclass defaults with a default section of every registered method."""
    cfg = RunConfig()
    cfg.distill.sections = {name: spec.config() for name, spec in sorted(METHODS.items()) if spec.config is not None}
    return cfg


def apply_profile(cfg: RunConfig, profile: str) -> RunConfig:
    """The profile's YAML, then each registered method's presets for that profile."""
    merge(cfg, profile_data(profile))
    for name, spec in METHODS.items():
        preset = spec.presets.get(profile)
        if preset and spec.config is not None:
            merge(cfg.distill.sections[name], preset, f"distill.{name}.")
    cfg.profile = profile
    return cfg


def build_config(
    profile: str = "cpu",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    **flags: Any,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from a profile, a YAML file, overrides and flags.

    ``flags`` are dotted keys (``distill.ipc``) or top-level keys; ``None`` values are ignored.
    Keys starting with ``method.`` (in overrides or flags) address the active method's own
    section; they are applied last, once the method is known. The result is validated.
    """
    cfg = apply_profile(new_config(), profile)
    if config_file:
        merge(cfg, read_yaml(config_file))
        _check_profile(cfg, profile, f"config file {config_file}")
    deferred: list[tuple[str, Any]] = []
    for ov in overrides or []:
        key, value = split_override(ov)
        _apply(cfg, key, value, deferred)
        _check_profile(cfg, profile, repr(ov))
    for key, value in flags.items():
        if value is not None:
            _apply(cfg, key, value, deferred)
    for key, value in deferred:
        merge(cfg, nest(f"distill.{_active_section(cfg, key)}", value))
    resolve_auto(cfg)
    check_config(cfg)
    return cfg


def _check_profile(cfg: RunConfig, profile: str, where: str) -> None:
    """``profile`` records the profile the config was built on; a file or override that names
    another would relabel the run without changing its settings."""
    if cfg.profile != profile:
        raise ConfigError(
            f"{where} sets profile {cfg.profile!r} but the config is built on {profile!r}; "
            "choose the profile with --profile"
        )


def _apply(cfg: RunConfig, key: str, value: Any, deferred: list[tuple[str, Any]]) -> None:
    if key.startswith(METHOD_ALIAS):
        deferred.append((key[len(METHOD_ALIAS) :], value))
    else:
        merge(cfg, nest(key, value))


def _active_section(cfg: RunConfig, key: str) -> str:
    """``lr_img`` → ``ptm.lr_img`` for the active method, or a one-line error (an unknown
    method is named as such, not as a method without the setting)."""
    get_spec(cfg.distill.method)
    sec = cfg.distill.section()
    first = key.split(".")[0]
    if sec is None or first not in {f.name for f in dataclasses.fields(sec)}:
        raise ConfigError(f"method {cfg.distill.method!r} has no setting {key!r}")
    return f"{cfg.distill.method}.{key}"


def check_config(cfg: RunConfig) -> None:
    """Ranges of every field, then the checks that need the registries."""
    validate(cfg)
    get_spec(cfg.distill.method)
    if not DEVICE_PATTERN.match(cfg.device):
        raise ConfigError(f"device {cfg.device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not cfg.eval.nets:
        raise ConfigError("eval.nets is empty; name at least one evaluation net, e.g. [convnet]")
    for name in [cfg.net.name, *cfg.eval.nets]:
        NETS.get(name)



def resolve_auto(cfg: RunConfig) -> RunConfig:
    """Turn ``experts.bf16: auto`` into true/false for the run's device, the dataset into its
    canonical name (own images: an absolute path) and every method's ``auto`` settings into
    numbers (its registration's ``resolve``), so the resolved config (and every identity hashed
    from it) records what was actually used."""
    if cfg.experts.bf16 == "auto":
        cfg.experts.bf16 = bf16_native(resolve_device(cfg.device))
    cfg.dataset = canonical_dataset(cfg.dataset)
    for name, section in cfg.distill.sections.items():
        spec = METHODS.get(name)
        if spec.resolve is not None:
            spec.resolve(section, cfg, lambda: train_size(cfg))
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its dumped dict (e.g. a run folder's ``config.yaml``); a DOM
    section written before DOM's variant options were removed reads at their kept values."""
    distill = data.get("distill") if isinstance(data, dict) else None
    if isinstance(distill, dict):
        distill = {
            name: {**sec, "dom": drop_retired(sec["dom"], f"distill.{name}.dom")}
            if isinstance(sec, dict) and isinstance(sec.get("dom"), dict) else sec
            for name, sec in distill.items()
        }  # fmt: skip
        data = {**data, "distill": distill}
    return merge(new_config(), data)


def method_yaml(name: str) -> str:
    """The text of ``configs/methods/<name>.yaml``, generated from the method's registration:
    it selects the method and lists its own section with its defaults, commented out (so the
    file never overrides a profile's scale). ``tools/method_yamls.py`` writes every file."""
    spec = get_spec(name)
    lines = [
        f"# {spec.summary}",
        f"# Use:  meddistill run <dataset> --config configs/methods/{name}.yaml [--set method.<key>=...]",
        "# Generated from the method's registration by tools/method_yamls.py: edit the method, not this file.",
        "distill:",
        f"  method: {name}",
    ]
    if spec.config is not None:
        presets = ", ".join(sorted(spec.presets)) or "none"
        lines += [
            f"  # Its own settings with their defaults (the cpu profile's values; presets for: {presets}).",
            "  # Uncomment a line to change it, or --set method.<key>=...",
        ]
        dumped = yaml.safe_dump({name: dataclasses.asdict(spec.config())}, sort_keys=False)
        lines += [f"  # {ln}" for ln in dumped.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"
