"""A start for the triplane UNet (our addition, not the paper's; docs/stages.md, "A start from a
regression"): a small deterministic network from the two embeddings to the UNet's normalised
latent, trained with MSE on the UNet's own training latents.

    z_hat = MLP([e_i ; e_s])                       (B, 2D) -> (B, 3, c', r', r')

Its estimate is the conditional mean: blurred where the conditions leave the shape open, but with
the colours the embeddings imply. The pipeline can start the UNet from it noised to t/T =
``strength`` (SDEdit: ``diffusion.sample`` with ``x_start``) instead of from pure noise, so the
UNet keeps those colours and adds the detail. Saved in the UNet's folder as ``start/``.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import Config
from .hub import HubMixin


@dataclass
class StartConfig(Config):
    embed_dim: int = 256  # = the towers' embed_dim
    latent_channels: int = 8  # c' of the VAE
    latent_res: int = 16  # r' of the VAE
    width: int = 512
    strength: float = 0.5  # the noise level t/T the UNet starts from; chosen on the val split


class StartEstimate(nn.Module, HubMixin):
    kind = "start_estimate"
    what = "start estimate"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "StartEstimate":
        return cls(StartConfig.from_dict(cfg["model"]))

    def __init__(self, cfg: StartConfig):
        super().__init__()
        self.cfg = cfg
        self.latent_shape = (3, cfg.latent_channels, cfg.latent_res, cfg.latent_res)
        self.net = nn.Sequential(nn.Linear(2 * cfg.embed_dim, cfg.width), nn.SiLU(),
                                 nn.Linear(cfg.width, cfg.width), nn.SiLU(),
                                 nn.Linear(cfg.width, 3 * cfg.latent_channels * cfg.latent_res ** 2))

    def forward(self, e_i: torch.Tensor, e_s: torch.Tensor) -> torch.Tensor:
        """(B, D) unit image and shape embeddings -> (B, 3, c', r', r') normalised latents."""
        return self.net(torch.cat([e_i, e_s], dim=1)).view(-1, *self.latent_shape)
