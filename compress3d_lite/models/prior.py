"""The diffusion prior: image embedding -> shape embedding (docs/paper.md §4).

A residual MLP with long skip connections that predicts the clean shape embedding from the noisy
one, the timestep and the image embedding (x0-prediction, L1 loss; diffusion.py):

    h_0     = W_in [x_t ; e_i]                                   x_t, e_i: (B, D) -> h: (B, W)
    c       = MLP(sinusoid(t)) + W_c e_i                         (B, W), fed to every block
    h_k     = h_{k-1} + W_2 SiLU(W_1 LN(h_{k-1}) + c)            k = 1 .. depth
    second half: h_{k-1} <- W_skip [h_{k-1} ; h_{depth-k+1}]     U-Net-style long skips
    x0_pred = W_out LN(h_depth)                                  (B, D)

Embeddings are unit vectors; the prior works on them scaled by sqrt(D) (about unit variance per
coordinate, the scale the noise schedule assumes) and returns unit vectors. For classifier-free
guidance the image embedding is replaced, with probability ``cond_drop`` in training, by a
learned null vector; sampling then uses  x0 = x0_null + g (x0_cond - x0_null).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..diffusion import DiffusionConfig, diffusion_loss, sample
from .blocks import timestep_embedding
from .hub import HubMixin


@dataclass
class PriorConfig(Config):
    """Residual MLP with long skip connections; predicts the clean shape embedding."""

    embed_dim: int = 256  # = the towers' embed_dim
    width: int = 384
    depth: int = 6  # residual blocks (even: the first half's outputs skip to the second half)
    time_dim: int = 128
    cond_drop: float = 0.1  # p of replacing the image embedding by a learned null (for guidance)
    loss: str = "l1"  # docs/paper.md §4: L1 on the clean embedding


class PriorBlock(nn.Module):
    """h + W_2 SiLU(W_1 LN(h) + c): a pre-norm residual MLP block with an additive condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h, c):
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + c))


class DiffusionPrior(nn.Module, HubMixin):
    kind = "diffusion_prior"
    what = "diffusion prior"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "DiffusionPrior":
        return cls(PriorConfig.from_dict(cfg["model"]), DiffusionConfig.from_dict(cfg["diffusion"]))

    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), "diffusion": self.diffusion_cfg.to_dict()}

    def __init__(self, cfg, diffusion_cfg):
        super().__init__()
        assert cfg.depth % 2 == 0, "depth must be even (long skips pair block k with block depth-k+1)"
        D, W = cfg.embed_dim, cfg.width
        self.cfg, self.diffusion_cfg = cfg, diffusion_cfg
        self.scale = math.sqrt(D)
        self.null_image = nn.Parameter(torch.zeros(D))
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_proj = nn.Linear(D, W)
        self.inp = nn.Linear(2 * D, W)
        self.blocks = nn.ModuleList([PriorBlock(W) for _ in range(cfg.depth)])
        self.skips = nn.ModuleList([nn.Linear(2 * W, W) for _ in range(cfg.depth // 2)])
        self.out = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, D))

    def forward(self, x_t, t, e_i, drop: torch.Tensor | None = None):
        """x_t (B, D) noisy scaled shape embedding, t (B,), e_i (B, D) unit image embedding,
        drop (B,) bool: use the null condition -> (B, D) estimate of the clean scaled embedding."""
        if drop is not None:
            e_i = torch.where(drop[:, None], self.null_image.expand_as(e_i), e_i)
        e = e_i * self.scale
        c = self.time_mlp(timestep_embedding(t, self.cfg.time_dim)) + self.cond_proj(e)  # (B, W)
        h = self.inp(torch.cat([x_t, e], dim=-1))  # (B, W)
        half, stack = len(self.blocks) // 2, []
        for k, block in enumerate(self.blocks):
            if k >= half:
                h = self.skips[k - half](torch.cat([h, stack.pop()], dim=-1))
            h = block(h, c)
            if k < half:
                stack.append(h)
        return self.out(h)  # (B, D)

    # ------------------------------------------------------------------ objective and sampling
    def loss(self, e_s, e_i, scheduler):
        """Training loss for unit shape/image embeddings (B, D); the condition dropped at random."""
        drop = torch.rand(e_s.shape[0], device=e_s.device) < self.cfg.cond_drop
        return diffusion_loss(lambda x, t: self(x, t, e_i, drop), e_s * self.scale, scheduler, self.cfg.loss)

    @torch.no_grad()
    def sample(self, e_i, guidance: float = 1.0, steps: int | None = None, sampler: str | None = None,
               generator=None, n: int = 1, x_T=None, scheduler=None):
        """(B, D) unit image embeddings -> (B * n, D) sampled unit shape embeddings (n per image,
        grouped by image). guidance 1: conditional only; > 1: classifier-free guidance on e_i.
        ``x_T`` (B * n, D): the initial noise instead of drawing it from ``generator``;
        ``scheduler``: a prebuilt sampler (diffusion.make_scheduler)."""
        e_i = e_i.repeat_interleave(n, dim=0)
        B = e_i.shape[0]

        def denoise(x, t):
            if guidance == 1.0:
                return self(x, t, e_i)
            both = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([e_i, e_i]),
                        torch.cat([torch.zeros(B, dtype=torch.bool, device=x.device),
                                   torch.ones(B, dtype=torch.bool, device=x.device)]))
            cond, null = both.chunk(2)
            return null + guidance * (cond - null)

        x0 = sample(denoise, (B, self.cfg.embed_dim), self.diffusion_cfg, steps, sampler, generator, e_i.device,
                    x_T=x_T, scheduler=scheduler)
        return F.normalize(x0, dim=-1)
