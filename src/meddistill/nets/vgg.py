"""VGG-11 for small images: a pool is skipped once the feature map is 1x1 (28x28 works), and a
per-sample norm (instance/group) is left out on 1x1 maps, where it would output a constant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meddistill.nets.layers import make_norm
from meddistill.nets.registry import register_net

# channel multipliers of VGG-11 relative to its first layer (64); "M" is a 2x2 max-pool
VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


@register_net("vgg11", reads=("width", "norm"))
class VGG11Small(nn.Module):
    def __init__(self, in_shape, num_classes: int, width: int = 64, norm: str = "instance") -> None:
        super().__init__()
        c, h, _ = in_shape
        layers: list[nn.Module] = []
        for v in VGG11:
            if v == "M":
                if h >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h //= 2
                continue
            cout = width * int(v)
            # instance norm of a 1x1 map is x - x = 0: the net could never learn past it
            layer_norm = "none" if h * h == 1 and norm in ("instance", "group") else norm
            layers += [nn.Conv2d(c, cout, 3, padding=1), make_norm(layer_norm, cout), nn.ReLU()]
            c = cout
        self.features = nn.Sequential(*layers)
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return f if features else self.classifier(f)
