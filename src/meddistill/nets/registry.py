"""Net registry in the style of timm: ``@register_net`` and :func:`create_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from meddistill.errors import ConfigError

NetFactory = Callable[..., nn.Module]
_NETS: dict[str, NetFactory] = {}


def register_net(name: str) -> Callable[[NetFactory], NetFactory]:
    """Register a factory ``f(in_shape, num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: NetFactory) -> NetFactory:
        if name in _NETS:
            raise ValueError(f"net {name!r} registered twice")
        _NETS[name] = fn
        return fn

    return deco


def list_nets() -> list[str]:
    return sorted(_NETS)


@dataclass
class NetSpec:
    """A net by name plus its architecture options (what experts and evaluation share)."""

    name: str = "convnet"
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    pooling: str = "avg"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tag(self) -> str:
        """Short folder-safe name, e.g. ``convnet-d3w128-instance``."""
        return f"{self.name}-d{self.depth}w{self.width}-{self.norm}-{self.pooling}"


def create_model(spec: NetSpec | str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a registered net for images of ``in_shape`` (C, H, W)."""
    if isinstance(spec, str):
        spec = NetSpec(name=spec)
    if spec.name not in _NETS:
        raise ConfigError(f"unknown net {spec.name!r}; registered nets: {', '.join(list_nets())}")
    return _NETS[spec.name](
        in_shape,
        num_classes,
        width=spec.width,
        depth=spec.depth,
        norm=spec.norm,
        pooling=spec.pooling,
        **spec.extra,
    )
