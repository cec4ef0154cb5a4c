"""Local-pool PointNet with positional encoding (docs/paper.md §2.2; ConvONet's LocalPoolPointnet).

Each coloured point (xyz + rgb) is lifted to a feature vector by a stack of point-wise MLP
blocks. Between blocks, features are max-pooled over the points that fall in the same cell of a
coarse grid and the pooled vector is concatenated back to every point, so each feature sees its
neighbourhood ("local max pooling"). xyz enters through a Fourier positional encoding.
"""

import math

import torch
import torch.nn as nn


def fourier_encode(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(..., D) -> (..., D * (1 + 2 * n_freqs)): x, sin(2^k pi x), cos(2^k pi x)."""
    if n_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi  # (F,)
    xf = x[..., None] * freqs  # (..., D, F)
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


def cell_index(xyz: torch.Tensor, res: int) -> torch.Tensor:
    """(B, N, 3) points in [-1, 1] -> (B, N) flat index of their cell in a res^3 grid."""
    ijk = ((xyz.clamp(-1, 1 - 1e-6) + 1) * 0.5 * res).long()  # (B, N, 3)
    return (ijk[..., 0] * res + ijk[..., 1]) * res + ijk[..., 2]


def local_max_pool(feats: torch.Tensor, index: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Max of ``feats`` (B, N, C) over points sharing a cell, gathered back: (B, N, C)."""
    B, N, C = feats.shape
    pooled = feats.new_full((B, n_cells, C), float("-inf"))
    idx = index[..., None].expand(B, N, C)
    pooled = pooled.scatter_reduce(1, idx, feats, reduce="amax", include_self=True)
    return pooled.gather(1, idx)


class ResnetBlockFC(nn.Module):
    """Point-wise residual MLP block: x + fc2(relu(fc1(relu(x)))), with a projected shortcut."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out)
        self.shortcut = nn.Linear(d_in, d_out, bias=False) if d_in != d_out else nn.Identity()
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return self.shortcut(x) + self.fc2(torch.relu(self.fc1(torch.relu(x))))


class LocalPoolPointNet(nn.Module):
    """(B, N, 3) xyz + (B, N, 3) rgb -> (B, N, C) per-point features."""

    def __init__(self, width: int = 64, n_blocks: int = 4, pe_freqs: int = 6, pool_res: int = 16):
        super().__init__()
        self.pe_freqs, self.pool_res = pe_freqs, pool_res
        d_in = 3 * (1 + 2 * pe_freqs) + 3
        self.fc_in = nn.Linear(d_in, 2 * width)
        self.blocks = nn.ModuleList([ResnetBlockFC(2 * width, width) for _ in range(n_blocks)])
        self.fc_out = nn.Linear(width, width)

    def forward(self, xyz, rgb):
        x = self.fc_in(torch.cat([fourier_encode(xyz, self.pe_freqs), rgb], dim=-1))  # (B, N, 2C)
        index = cell_index(xyz, self.pool_res)
        n_cells = self.pool_res ** 3
        for i, block in enumerate(self.blocks):
            x = block(x)  # (B, N, C)
            if i < len(self.blocks) - 1:
                x = torch.cat([x, local_max_pool(x, index, n_cells)], dim=-1)  # (B, N, 2C)
        return self.fc_out(x)
