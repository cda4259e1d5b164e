"""ConvNet-D<depth>: the standard dataset-distillation backbone, for any channels and size."""

from __future__ import annotations

import torch
from torch import nn

from meddistill.nets.layers import make_norm, make_pool
from meddistill.nets.registry import register_net


@register_net("convnet", reads=("width", "depth", "norm", "pooling"))
class ConvNet(nn.Module):
    """``depth`` blocks of conv3x3 → norm → ReLU → pool, then a linear classifier."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), make_norm(norm, width), nn.ReLU(inplace=False)]
            if pooling != "none" and min(h, w) >= 2:
                layers.append(make_pool(pooling))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        f = self.features(x).flatten(1)
        return f if features else self.classifier(f)
