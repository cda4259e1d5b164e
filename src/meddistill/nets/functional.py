"""Flat-parameter helpers so any registered net runs functionally on a single vector.

Trajectories are stored as one flat float32 vector per epoch; :class:`FlatParams` maps such a
vector to the ``{name: tensor}`` dict that :func:`torch.func.functional_call` takes, as views
(no copies), so gradients flow from the net's output back to the vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class FlatParams:
    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, net: nn.Module) -> FlatParams:
        items = list(net.named_parameters())
        return cls(
            tuple(n for n, _ in items),
            tuple(p.shape for _, p in items),
            tuple(p.numel() for _, p in items),
        )

    @property
    def total(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


def flatten_params(net: nn.Module) -> torch.Tensor:
    """The net's parameters as one detached flat float32 vector."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).float()


def load_flat(net: nn.Module, flat: torch.Tensor) -> None:
    """Copy a flat vector into the net's parameters in place."""
    views = FlatParams.of(net).unflatten(flat)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(views[name])


def call_flat(
    net: nn.Module, spec: FlatParams, flat: torch.Tensor, x: torch.Tensor, features: bool = False
) -> torch.Tensor:
    """Run ``net`` on ``x`` with the parameters held in ``flat``."""
    return functional_call(net, spec.unflatten(flat), (x,), {"features": features})
