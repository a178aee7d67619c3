"""A 2-D Fourier Neural Operator (Li et al., 2021) in plain PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class FNOConfig:
    in_channels: int = 3  # the field plus its (x, y) grid coordinates
    out_channels: int = 1
    width: int = 32
    modes1: int = 8
    modes2: int = 8
    n_layers: int = 4
    proj_width: int = 128  # hidden width of the pointwise projection head


class SpectralConv2d(nn.Module):
    """Multiplies the lowest Fourier modes by learned complex weights (stored as real pairs)."""

    def __init__(self, width: int, modes1: int, modes2: int) -> None:
        super().__init__()
        self.modes1, self.modes2 = modes1, modes2
        scale = 1.0 / (width * width)
        self.w1 = nn.Parameter(scale * torch.randn(width, width, modes1, modes2, 2))
        self.w2 = nn.Parameter(scale * torch.randn(width, width, modes1, modes2, 2))

    @staticmethod
    def _mul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bixy,ioxy->boxy", a, torch.view_as_complex(w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        m1, m2 = self.modes1, self.modes2
        x_ft = torch.fft.rfft2(x)
        top = self._mul(x_ft[:, :, :m1, :m2], self.w1)
        bottom = self._mul(x_ft[:, :, -m1:, :m2], self.w2)
        mid = torch.zeros(b, c, h - 2 * m1, m2, dtype=x_ft.dtype, device=x.device)
        low = torch.cat([top, mid, bottom], dim=2)
        out_ft = F.pad(low, (0, w // 2 + 1 - m2))
        return torch.fft.irfft2(out_ft, s=(h, w))


class FNO2d(nn.Module):
    def __init__(self, cfg: FNOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lift = nn.Linear(cfg.in_channels, cfg.width)
        self.spectral = nn.ModuleList(
            [SpectralConv2d(cfg.width, cfg.modes1, cfg.modes2) for _ in range(cfg.n_layers)])
        self.pointwise = nn.ModuleList(
            [nn.Conv2d(cfg.width, cfg.width, 1) for _ in range(cfg.n_layers)])
        self.proj1 = nn.Linear(cfg.width, cfg.proj_width)
        self.proj2 = nn.Linear(cfg.proj_width, cfg.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, height, width, in_channels) -> (batch, height, width, out_channels)."""
        x = self.lift(x).permute(0, 3, 1, 2)
        for i, (spec, pw) in enumerate(zip(self.spectral, self.pointwise)):
            x = spec(x) + pw(x)
            if i < len(self.spectral) - 1:
                x = F.gelu(x)
        x = x.permute(0, 2, 3, 1)
        return self.proj2(F.gelu(self.proj1(x)))


def synthetic_batch(batch: int, size: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random smooth fields and a target from a fixed nonlinear operator (a smoothed square)."""
    coarse = torch.randn(batch, 1, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    target = F.avg_pool2d(field ** 2, 3, stride=1, padding=1)
    grid = torch.linspace(0, 1, size)
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    coords = torch.stack([gx, gy]).expand(batch, 2, size, size)
    x = torch.cat([field, coords], dim=1).permute(0, 2, 3, 1).contiguous()
    return x, target.permute(0, 2, 3, 1).contiguous()
