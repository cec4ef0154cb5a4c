"""The shape tower: coloured points -> unit-norm shape embedding e_s in the image tower's space.

OpenShape (docs/paper.md §3) aligns a PointBERT over 10k xyz+rgb points to OpenCLIP's image space
with a contrastive loss; the embedding it produces is the paper's shape embedding. We use the
same recipe with a smaller backbone: the local-pool PointNet of the VAE encoder, then a global
max + mean pool and an MLP head.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from .hub import HubMixin
from .pointnet import LocalPoolPointNet


@dataclass
class ShapeTowerConfig(Config):
    """Point-cloud encoder of coloured points into the image tower's space (OpenShape's role;
    a PointNet here where OpenShape uses PointBERT)."""

    width: int = 64
    blocks: int = 4
    pe_freqs: int = 6
    pool_res: int = 8
    hidden: int = 256
    embed_dim: int = 256  # = the image tower's embed_dim


class ShapeTower(nn.Module, HubMixin):
    """(B, N, 3) xyz + (B, N, 3) rgb -> (B, D) unit-norm shape embeddings."""

    kind = "shape_tower"
    what = "shape tower"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "ShapeTower":
        return cls(ShapeTowerConfig.from_dict(cfg["model"]))

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.pointnet = LocalPoolPointNet(cfg.width, cfg.blocks, cfg.pe_freqs, cfg.pool_res)
        self.head = nn.Sequential(nn.LayerNorm(2 * cfg.width), nn.Linear(2 * cfg.width, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, cfg.embed_dim))

    def forward(self, xyz: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        f = self.pointnet(xyz, rgb)  # (B, N, C)
        g = torch.cat([f.amax(dim=1), f.mean(dim=1)], dim=-1)  # (B, 2C): order-free summary
        return F.normalize(self.head(g), dim=-1)  # (B, D)
