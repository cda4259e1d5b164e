"""Shared building blocks: normalisation and pooling chosen by name."""

from __future__ import annotations

from torch import nn

from meddistill.errors import ConfigError

NORMS = ("instance", "batch", "group", "none")
POOLS = ("avg", "max", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """``instance`` is GroupNorm with one group per channel (affine, functional-friendly)."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choose one of {NORMS}")


def make_pool(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(2, 2)
    if kind == "max":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown pooling {kind!r}; choose one of {POOLS}")
