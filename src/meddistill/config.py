"""Dataclass configs, YAML profiles and ``key=value`` overrides (timm-style).

Resolution order, later wins: dataclass defaults → profile YAML (``tiny``/``cpu``/``paper``,
shipped in ``meddistill/profiles``) → a user YAML (``--config``) → ``--set a.b=value``
overrides → explicit CLI flags.  The resolved config is dumped beside every result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import MISSING, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meddistill.augment import DSAConfig
from meddistill.data.options import DataConfig  # own images: the data: section
from meddistill.errors import ConfigError
from meddistill.nets.registry import NetSpec


def setting(
    default: Any = MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    factory: Any = MISSING,
    neutral: Any = MISSING,
) -> Any:
    """A config field with its allowed range: ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``) or
    one of ``choices``. Every float must also be finite. Checked by :func:`validate`.

    ``neutral``: the value at which the field changes nothing (an option that is off). At that
    value :func:`identity_dict` leaves the field out, so adding an option to a section does
    not re-key the runs stored before it existed."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "neutral": neutral}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def neutral_values(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of config dataclass ``obj`` (recursively, a ``sections`` dict's entries
    by their names, as :func:`validate` names them) whose field has a ``neutral`` value → that value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "sections":
            for name, sec in value.items():
                out.update(neutral_values(sec, f"{prefix}{name}."))
        elif dataclasses.is_dataclass(value):
            out.update(neutral_values(value, f"{prefix}{f.name}."))
        elif f.metadata.get("neutral", MISSING) is not MISSING:
            out[f"{prefix}{f.name}"] = f.metadata["neutral"]
    return out


def identity_dict(obj: Any) -> dict:
    """``asdict(obj)`` without the fields that are at their ``neutral`` value (recursively)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        neutral = f.metadata.get("neutral", MISSING)
        if neutral is not MISSING and value == neutral:
            continue
        out[f.name] = identity_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


@dataclass
class ExpertConfig:
    num_experts: int = setting(8, lo=1)
    epochs: int = setting(20, lo=1)
    lr: float = setting(0.01, lo=0, lo_open=True)
    momentum: float = setting(0.0, lo=0, hi=1)
    weight_decay: float = setting(0.0, lo=0)
    batch_size: int = setting(64, lo=1)
    dsa: bool = True
    # true, false, or "auto": on where the device computes bf16 natively (CUDA with bf16,
    # CPUs with AMX or AVX512-BF16); elsewhere bf16 autocast is emulated and several times slower
    bf16: bool | str = "auto"
    seed: int = setting(0, lo=0)  # experts are shared by every run seed; this seeds the experts themselves


def _method_sections() -> dict[str, Any]:
    """A default instance of every registered method's own config section."""
    from meddistill.distill.base import method_sections

    return method_sections()


@dataclass
class DistillConfig:
    """Keys every method shares; each registered method's own settings are a section of
    their own (``distill.<method>.<key>``), and only the active method's section is read."""

    method: str = "ptm"
    ipc: int = setting(1, lo=1)
    checkpoint_every_s: float = setting(120.0, lo=0)  # 0: after every iteration
    log_every: int = setting(10, lo=1)
    sections: dict[str, Any] = field(default_factory=_method_sections, repr=False)
    #: shared keys that change how a run is checkpointed and logged, never the set it makes
    RUN_ONLY: typing.ClassVar[tuple[str, ...]] = ("checkpoint_every_s", "log_every")

    def section(self, method: str | None = None) -> Any:
        """The config section of ``method`` (default: the active one); None if it has none."""
        return self.sections.get(method or self.method)

    @property
    def active(self) -> Any:
        sec = self.section()
        if sec is None:
            raise ConfigError(f"method {self.method!r} has no settings of its own")
        return sec

    def to_dict(self, active_only: bool = False) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        for name, sec in self.sections.items():
            if name == self.method or not active_only:
                out[name] = dataclasses.asdict(sec)
        return out


@dataclass
class EvalConfig:
    num_nets: int = setting(3, lo=1)  # fresh nets (seeds) per evaluation net
    epochs: int = setting(300, lo=1)
    full_epochs: int = setting(20, lo=1)  # epochs when training on the full real train split
    full_batch_size: int = setting(64, lo=1)  # the full split needs many steps: deeper nets stay at the prior with 256
    full_val_every: int = setting(5, lo=1)  # val checks on the full split (epochs)
    lr: float = setting(0.0, lo=0)  # 0: the learned lr of the synthetic set if it has one, else lr_default
    lr_default: float = setting(0.01, lo=0, lo_open=True)
    momentum: float = setting(0.9, lo=0, hi=1)
    weight_decay: float = setting(5e-4, lo=0)
    batch_size: int = setting(256, lo=1)
    val_every: int = setting(50, lo=1)  # check val (model selection) every this many epochs
    nets: list[str] = field(default_factory=lambda: ["convnet"])
    dsa: bool = True
    bf16: bool = False
    #: keys only the full-train-split evaluation reads, and those it replaces with them
    FULL_ONLY: typing.ClassVar[tuple[str, ...]] = ("full_epochs", "full_batch_size", "full_val_every")
    SET_ONLY: typing.ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "val_every")


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class RunConfig:
    dataset: str = "pneumoniamnist"
    size: int = setting(28, lo=8, hi=1024)
    data_root: str = ""
    seed: int = setting(0, lo=0)
    device: str = "auto"
    workers: int = setting(0, lo=0)  # processes that train experts on a CPU; 0: one per core
    profile: str = "cpu"
    out_dir: str = "runs"
    experts_dir: str = "experts"
    net: NetSpec = field(default_factory=NetSpec)
    dsa: DSAConfig = field(default_factory=DSAConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)  # own images (MedMNIST ignores it)

    def to_dict(self, active_only: bool = False) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["distill"] = self.distill.to_dict(active_only)
        return out


from meddistill.profiles import PROFILES  # noqa: E402  (a light module: the CLI parser reads it)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp == bool | str:  # a switch that may also be "auto"
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f"{key} must be true, false or auto, got {value!r}")
    if tp == int | str:  # a count that may also be "auto" (resolved by build_config)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"{key} must be an integer or auto, got {value!r}")
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
    sections: dict[str, Any] = getattr(obj, "sections", {}) if isinstance(obj, DistillConfig) else {}
    names = {f.name for f in dataclasses.fields(obj)} - {"sections"}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key in sections:
            merge(sections[key], value, full + ".")
            continue
        if key not in names:
            valid = sorted(names | set(sections))
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(valid)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))
    return obj


def _range_text(meta: dict[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") else "["
    low = "-inf" if lo is None else f"{lo:g}"
    high = "inf" if hi is None else f"{hi:g}"
    return f"{left}{low}, {high}]"


def _in_range(value: Any, meta: dict[str, Any]) -> bool:
    if meta.get("choices") is not None:
        return value in meta["choices"]
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        return False
    return hi is None or value <= hi


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass (recursively) against its declared range:
    floats finite, numbers within ``[lo, hi]``, strings among ``choices``; then its own
    ``check_fields(prefix)``, if it has one. One line per error."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if f.name == "sections":
            for name, sec in value.items():
                validate(sec, f"{prefix}{name}.")
            continue
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        has_range = any(f.metadata.get(k) is not None for k in ("lo", "hi", "choices"))
        if value == "auto" and f.default == "auto":
            continue  # resolved once the dataset is known
        if has_range and not isinstance(value, bool) and not _in_range(value, f.metadata):
            raise ConfigError(f"{key}={value!r} is out of range; allowed: {_range_text(f.metadata)}")
    if hasattr(obj, "check_fields"):  # a section's checks across its fields
        obj.check_fields(prefix)


def split_override(text: str) -> tuple[str, Any]:
    """``distill.ipc=10`` → ``("distill.ipc", 10)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def parse_override(text: str) -> dict[str, Any]:
    """``distill.ipc=10`` → ``{"distill": {"ipc": 10}}``."""
    return nest(*split_override(text))


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


METHOD_ALIAS = "method."  # ``method.lr_img`` → ``distill.<active method>.lr_img``


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
    cfg = RunConfig()
    merge(cfg, profile_data(profile))
    cfg.profile = profile
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
    from meddistill.distill.base import get_spec

    get_spec(cfg.distill.method)
    sec = cfg.distill.section()
    first = key.split(".")[0]
    if sec is None or first not in {f.name for f in dataclasses.fields(sec)}:
        raise ConfigError(f"method {cfg.distill.method!r} has no setting {key!r}")
    return f"{cfg.distill.method}.{key}"


def check_config(cfg: RunConfig) -> None:
    """Ranges of every field, then the checks that need the registries."""
    validate(cfg)
    from meddistill.distill.base import get_spec
    from meddistill.nets.registry import list_nets

    get_spec(cfg.distill.method)
    if not DEVICE_PATTERN.match(cfg.device):
        raise ConfigError(f"device {cfg.device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not cfg.eval.nets:
        raise ConfigError("eval.nets is empty; name at least one evaluation net, e.g. [convnet]")
    for name in [cfg.net.name, *cfg.eval.nets]:
        if name not in list_nets():
            raise ConfigError(f"unknown net {name!r}; registered nets: {', '.join(list_nets())}")


def resolve_auto(cfg: RunConfig) -> RunConfig:
    """Turn ``experts.bf16: auto`` into true/false for the run's device and the
    trajectory-matching ``auto`` settings into numbers for the dataset, so the resolved config
    (and every identity hashed from it) records what was actually used."""
    if cfg.experts.bf16 == "auto":
        from meddistill.utils import bf16_native, resolve_device

        cfg.experts.bf16 = bf16_native(resolve_device(cfg.device))
    from meddistill.data.sources import canonical_dataset  # own images: a folder/CSV as an absolute path

    cfg.dataset = canonical_dataset(cfg.dataset)
    from meddistill.distill.scaling import resolve_tm_auto  # TM settings that follow the train split's size

    resolve_tm_auto(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its dumped dict (e.g. a run folder's ``config.yaml``)."""
    return merge(RunConfig(), data)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, with only the active method's own section."""
    return yaml.safe_dump(cfg.to_dict(active_only=True), sort_keys=False)
