"""A small convolutional classifier with batch normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class CNNConfig:
    in_channels: int = 3
    num_classes: int = 10
    width: int = 16
    image_size: int = 32
    extra_blocks: int = 0  # stride-1 conv blocks added at the end of each resolution stage


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        extra = cfg.extra_blocks
        self.features = nn.Sequential(
            _conv_bn(cfg.in_channels, w, 1), _conv_bn(w, w, 1),
            *[_conv_bn(w, w, 1) for _ in range(extra)],
            _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1),
            *[_conv_bn(2 * w, 2 * w, 1) for _ in range(extra)],
            _conv_bn(2 * w, 4 * w, 2),
            *[_conv_bn(4 * w, 4 * w, 1) for _ in range(extra)])
        self.head = nn.Linear(4 * w, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def synthetic_batch(cfg: CNNConfig, batch: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the quadrant holding the brightest blob (learnable, deterministic)."""
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=generator)
    half = cfg.image_size // 2
    for i in range(batch):
        r, c = divmod(int(y[i]) % 4, 2)
        x[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 0.5 + 0.1 * int(y[i])
    return x, y
