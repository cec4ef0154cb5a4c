"""Building blocks shared by the models: GroupNorm-SiLU ResBlocks, strided down, nearest-up for
the plane CNNs; the sinusoidal timestep embedding of the two diffusion models; and the one
gradient-checkpointing switch (``checkpointed``)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) sinusoids (the Transformer / DDPM embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def checkpointed(layer: nn.Module, *args, enabled: bool):
    """``layer(*args)``; when ``enabled`` (a config's ``grad_checkpoint``), and only while training
    with autograd on, under torch.utils.checkpoint: its activations are recomputed in the backward
    pass instead of stored. Same outputs and gradients, less memory, about 1/3 more compute."""
    if enabled and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))), with a 1x1 shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):  # (B, C, R, R) -> (B, C, R/2, R/2)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):  # (B, C, R, R) -> (B, C, 2R, 2R)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
