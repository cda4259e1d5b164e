"""Dataclass configs, YAML profiles and ``key=value`` overrides (timm-style).

Resolution order, later wins: dataclass defaults → profile YAML (``tiny``/``cpu``/``paper``,
shipped in ``meddistill/profiles``) → a user YAML (``--config``) → ``--set a.b=value``
overrides → explicit CLI flags.  The resolved config is dumped beside every result.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meddistill.errors import ConfigError


def setting(
    default: Any = MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    factory: Any = MISSING,
    keyless_at: Any = MISSING,
) -> Any:
    """A config field with its allowed range: ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``) or
    one of ``choices``. Every float must also be finite. Checked by :func:`validate`.

    ``keyless_at``: the value at which the field changes nothing (an option that is off), which
    every run stored before the field existed had. At that value the identities leave the field
    out (:func:`meddistill.identity.identity_dict`), so adding an option re-keys no stored run."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "keyless_at": keyless_at}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---- the sections other layers own the code of (kept here so that config is a leaf) ----

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")  # the DSA ops (meddistill.augment)


@dataclass
class DSAConfig:
    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "single"  # "single": one op drawn per call (as DSA/MTT); "all": every op
    batch_mode: bool = False  # one parameter draw for the whole batch (for unequal batch sizes)
    flip: bool = True
    rotate: bool = True
    scale: float = 1.2
    rotate_deg: float = 15.0
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def ops(self) -> list[str]:
        names = [s for s in self.strategy.split("_") if s]
        for s in names:
            if s not in OPS:
                raise ConfigError(f"unknown DSA op {s!r}; choose from {OPS}")
        return [s for s in names if not ((s == "flip" and not self.flip) or (s == "rotate" and not self.rotate))]


@dataclass
class NetSpec:
    """A net by name plus its architecture options (what experts and evaluation share)."""

    name: str = "convnet"
    width: int = field(default=128, metadata={"lo": 1, "hi": 4096})  # ranges: checked by config.validate
    depth: int = field(default=3, metadata={"lo": 1, "hi": 16})
    norm: str = "instance"
    pooling: str = "avg"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tag(self) -> str:
        """Short folder-safe name, e.g. ``convnet-d3w128-instance``."""
        return f"{self.name}-d{self.depth}w{self.width}-{self.norm}-{self.pooling}"


ON_BAD_IMAGE = ("fail", "skip")
CHANNELS = (0, 1, 3)  # 0: auto
DUPLICATES = ("check", "keep")


@dataclass
class DataConfig:
    channels: int = 0  # 0: auto (1 if every image is grey, else 3); 1 or 3 converts
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test when the data gives none
    split_seed: int = 0  # the stratified split (shared by every run seed)
    flip: bool = False  # DSA may mirror the images (off: anatomy or markers may be handed)
    rotate: bool = False  # DSA may rotate the images
    on_bad_image: str = "fail"  # fail | skip (skipped files are listed in the run folder)
    duplicates: str = "check"  # check: same content in two classes/splits refused, one copy per class kept; keep: all
    licence: str = ""  # licence of the user's own data, shown on the dataset card
    cache_dir: str = ""  # decoded-array cache; "" = $MEDDISTILL_CACHE, else ~/.cache/meddistill


def check_data_config(cfg: DataConfig) -> None:
    """Raise :class:`ConfigError` for values no source could use."""
    if cfg.channels not in CHANNELS:
        raise ConfigError(f"data.channels must be 1, 3 or 0 (auto), got {cfg.channels}")
    if cfg.on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {cfg.on_bad_image!r}")
    if cfg.duplicates not in DUPLICATES:
        raise ConfigError(f"data.duplicates must be one of {', '.join(DUPLICATES)}, got {cfg.duplicates!r}")
    fr = cfg.split
    if len(fr) != 3 or any(not math.isfinite(f) or f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"data.split must be three positive train/val/test fractions summing to 1, got {fr}")


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


@dataclass
class DPConfig:
    """Formal differential privacy of everything released (docs/privacy.md): ``epsilon`` 0 is
    off (no guarantee); above 0, experts train with DP-SGD whose noise is calibrated so that all
    their checkpoints together spend ``epsilon`` (DM: its noisy class means do), and the
    distillation touches no real train image (``meddistill.dp``)."""

    epsilon: float = setting(0.0, lo=0, keyless_at=0.0)  # target ε; 0: no DP
    delta: float = setting(0.0, lo=0, hi=0.1, keyless_at=0.0)  # 0: below 1/N (dp.default_delta)
    max_grad_norm: float = setting(1.0, lo=0, lo_open=True, keyless_at=1.0)  # per-sample clipping norm C
    accountant: str = setting("rdp", choices=("rdp", "prv"), keyless_at="rdp")

    @property
    def on(self) -> bool:
        return self.epsilon > 0


@dataclass
class DistillConfig:
    """Keys every method shares; each registered method's own settings are a section of
    their own (``distill.<method>.<key>``), and only the active method's section is read."""

    method: str = "ptm"
    ipc: int = setting(1, lo=1)
    checkpoint_every_s: float = setting(120.0, lo=0)  # 0: after every iteration
    log_every: int = setting(10, lo=1)
    # filled by meddistill.build (a default section of every registered method): config knows no method
    sections: dict[str, Any] = field(default_factory=dict, repr=False)

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
    dp: DPConfig = field(default_factory=DPConfig)  # formal differential privacy (off at epsilon 0)

    def to_dict(self, active_only: bool = False) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["distill"] = self.distill.to_dict(active_only)
        return out


PROFILES = ("tiny", "cpu", "paper")  # the size profiles shipped as YAML in meddistill/profiles


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


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, with only the active method's own section."""
    return yaml.safe_dump(cfg.to_dict(active_only=True), sort_keys=False)
