"""The triplane VAE (docs/paper.md §2): coloured points -> compact latent triplane -> fields.

    encode:  points, colours -> LocalPoolPointNet -> splat into V^n (r^3) -> three r x r planes
             -> per-plane ResBlocks + downsampling -> r' x r' planes -> 3D-aware cross-attention
             to V^n -> mu, logvar (B, 3, c', r', r')
    decode:  z -> per-plane ResBlocks + upsampling -> high-res triplane (B, 3, C, r, r)
    query:   triplane features at points -> MLP heads -> occupancy logit, rgb

The three planes share the plane CNN weights (a learned per-plane embedding tells them apart).
Loss (field supervision, docs/design.md §3): BCE on occupancy queries + L1 on surface colours +
kl_weight * KL(q(z) || N(0, 1)) with kl_weight = 1e-6 as in the paper.

``cfg.grad_checkpoint`` recomputes the plane ResBlocks and the 3D-aware cross-attention in the
backward pass instead of storing their activations (training only; same outputs and gradients).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from .attention3d import AwareCrossAttention3D
from .blocks import Downsample, ResBlock, Upsample, checkpointed, norm
from .field_renderer import render_losses
from .hub import HubMixin
from .pointnet import LocalPoolPointNet
from .triplane import VolumeToPlanes, sample_triplane, scatter_to_volume


@dataclass
class AEConfig(Config):
    """Triplane VAE architecture. Paper scale (a100_full): r = 128, latent 3 x 32 x 32 x 32, r'' = 32."""

    point_dim: int = 32  # c: PointNet feature width = feature-volume channels
    pointnet_blocks: int = 4
    pe_freqs: int = 6  # Fourier positional encoding of xyz in the PointNet
    pool_res: int = 16  # grid of the PointNet's local max pooling
    volume_res: int = 32  # r: feature volume and high-res planes
    plane_channels: int = 32  # channels of the high-res planes
    enc_channels: tuple = (32, 64)  # per level, r -> r / 2 between levels -> r'
    dec_channels: tuple = (64, 32)  # per level, r' -> ... -> r
    blocks_per_level: int = 1
    latent_res: int = 16  # r'
    latent_channels: int = 8  # c'
    attn: bool = True  # 3D-aware cross-attention (off: the ablation)
    attn_res: int = 16  # r'': resolution of the queried (downsampled) volume
    attn_heads: int = 4
    head_hidden: int = 64  # width of the occupancy / colour MLP
    kl_weight: float = 1e-6  # paper: lambda_kl = 1e-6
    color_weight: float = 1.0
    render_loss: bool = False  # the paper's render losses (off: field supervision only)
    render_weights: tuple = (10.0, 10.0, 0.1)  # rgb, mask, depth (docs/paper.md §2.8)
    render_rays: int = 256  # random pixels per object per step
    render_samples: int = 48  # samples per ray
    # recompute the plane ResBlocks and the 3D-aware cross-attention in the backward pass instead
    # of storing their activations (training only; same outputs and gradients, ~1/3 more compute).
    # Off in every preset: it saves only ~18% of the a100_full activations, most of which belong
    # to the r^3 feature volume (compress3d-lite train ae --preset a100_full --dry-run). Configs
    # written before this field existed load with the default.
    grad_checkpoint: bool = False


@dataclass
class VAEOutput:
    loss: torch.Tensor
    occ_loss: torch.Tensor
    color_loss: torch.Tensor
    kl: torch.Tensor
    occ_logits: torch.Tensor  # (B, M)
    rgb: torch.Tensor  # (B, N, 3) predicted colours at the surface points
    render: dict  # rgb / mask / depth render losses (empty unless cfg.render_loss)


def run_blocks(layers, x, grad_checkpoint: bool):
    """``layers`` in turn on x; with ``grad_checkpoint`` (and only while training with autograd on)
    each ResBlock runs under torch.utils.checkpoint: its activations are recomputed in the
    backward pass instead of stored. Same outputs and gradients."""
    for layer in layers:
        x = checkpointed(layer, x, enabled=grad_checkpoint and isinstance(layer, ResBlock))
    return x


class PlaneEncoder(nn.Module):
    """(B*3, C_in, r, r) -> (B*3, C_last, r', r'): ResBlocks, halving the resolution between levels."""

    def __init__(self, c_in, channels, blocks_per_level, grad_checkpoint: bool = False):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        layers, c = [nn.Conv2d(c_in, channels[0], 3, padding=1)], channels[0]
        for level, c_out in enumerate(channels):
            for _ in range(blocks_per_level):
                layers.append(ResBlock(c, c_out))
                c = c_out
            if level < len(channels) - 1:
                layers.append(Downsample(c))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return run_blocks(self.net, x, self.grad_checkpoint)


class PlaneDecoder(nn.Module):
    """(B*3, c', r', r') -> (B*3, C_out, r, r): ResBlocks, doubling the resolution between levels."""

    def __init__(self, c_in, channels, blocks_per_level, c_out, grad_checkpoint: bool = False):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        layers, c = [nn.Conv2d(c_in, channels[0], 3, padding=1)], channels[0]
        for level, c_next in enumerate(channels):
            for _ in range(blocks_per_level):
                layers.append(ResBlock(c, c_next))
                c = c_next
            if level < len(channels) - 1:
                layers.append(Upsample(c))
        layers += [norm(c), nn.SiLU(), nn.Conv2d(c, c_out, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return run_blocks(self.net, x, self.grad_checkpoint)


class FieldHeads(nn.Module):
    """Triplane features (B, M, 3C) -> occupancy logit (B, M) and rgb in [0, 1] (B, M, 3)."""

    def __init__(self, c_in, hidden, n_layers=3):
        super().__init__()
        layers = []
        for i in range(n_layers):
            layers += [nn.Linear(c_in if i == 0 else hidden, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.occ, self.rgb = nn.Linear(hidden, 1), nn.Linear(hidden, 3)

    def forward(self, f):
        h = self.trunk(f)
        return self.occ(h)[..., 0], torch.sigmoid(self.rgb(h))


class TriplaneVAE(nn.Module, HubMixin):
    checkpointed = (ResBlock, AwareCrossAttention3D)  # what cfg.grad_checkpoint recomputes in backward
    kind = "triplane_vae"  # its checkpoints (hub.py: save_pretrained / from_pretrained / push_to_hub)
    what = "triplane VAE"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "TriplaneVAE":
        return cls(AEConfig.from_dict(cfg["model"]))

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ckpt = getattr(cfg, "grad_checkpoint", False)
        n_levels = len(cfg.enc_channels)
        assert cfg.volume_res // 2 ** (n_levels - 1) == cfg.latent_res, \
            f"{n_levels} encoder levels take r={cfg.volume_res} to {cfg.volume_res // 2 ** (n_levels - 1)}, not r'={cfg.latent_res}"
        self.pointnet = LocalPoolPointNet(cfg.point_dim, cfg.pointnet_blocks, cfg.pe_freqs, cfg.pool_res)
        self.to_planes = VolumeToPlanes(cfg.point_dim, cfg.plane_channels, cfg.volume_res)
        self.plane_embed = nn.Parameter(torch.zeros(3, cfg.plane_channels, 1, 1))
        self.encoder = PlaneEncoder(cfg.plane_channels, cfg.enc_channels, cfg.blocks_per_level, ckpt)
        c_enc = cfg.enc_channels[-1]
        self.attn = AwareCrossAttention3D(c_enc, cfg.point_dim, cfg.volume_res, cfg.latent_res,
                                          cfg.attn_res, cfg.attn_heads) if cfg.attn else None
        self.to_moments = nn.Sequential(norm(c_enc), nn.SiLU(), nn.Conv2d(c_enc, 2 * cfg.latent_channels, 1))
        self.decoder = PlaneDecoder(cfg.latent_channels, cfg.dec_channels, cfg.blocks_per_level, cfg.plane_channels,
                                    ckpt)
        self.heads = FieldHeads(3 * cfg.plane_channels, cfg.head_hidden)

    # -- encoder ----------------------------------------------------------------------------
    def feature_volume(self, points, colors):
        """(B, N, 3) xyz, (B, N, 3) rgb -> V^n (B, C, r, r, r)."""
        feats = self.pointnet(points, colors)  # (B, N, C)
        vol, _ = scatter_to_volume(points, feats, self.cfg.volume_res)
        return vol

    def encode(self, points, colors):
        """-> mu, logvar, each (B, 3, c', r', r')."""
        B = points.shape[0]
        vol = self.feature_volume(points, colors)  # (B, C, r, r, r)
        planes = self.to_planes(vol) + self.plane_embed  # (B, 3, C_p, r, r)
        h = self.encoder(planes.flatten(0, 1))  # (B*3, C_e, r', r')
        h = h.unflatten(0, (B, 3))  # (B, 3, C_e, r', r')
        if self.attn is not None:
            h = checkpointed(self.attn, h, vol, enabled=self.encoder.grad_checkpoint)  # T^e = A + T^l
        moments = self.to_moments(h.flatten(0, 1)).unflatten(0, (B, 3))  # (B, 3, 2c', r', r')
        mu, logvar = moments.chunk(2, dim=2)
        return mu, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mu, logvar, generator=None):
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    # -- decoder ----------------------------------------------------------------------------
    def decode(self, z):
        """z (B, 3, c', r', r') -> high-res triplane (B, 3, C_p, r, r)."""
        B = z.shape[0]
        return self.decoder(z.flatten(0, 1)).unflatten(0, (B, 3))

    def query(self, planes, xyz):
        """Occupancy logits (B, M) and rgb (B, M, 3) at points xyz (B, M, 3)."""
        return self.heads(sample_triplane(planes, xyz))

    # -- training objective -----------------------------------------------------------------
    def forward(self, points, colors, occ_points, occ_labels, views=None, generator=None) -> VAEOutput:
        """Field losses on a batch; ``views`` = (images (B,V,4,H,W), depths, cam2world, intrinsics)
        adds the render losses when ``cfg.render_loss`` is on."""
        mu, logvar = self.encode(points, colors)
        z = self.sample(mu, logvar, generator) if self.training else mu
        planes = self.decode(z)
        n = occ_points.shape[1]
        logits, rgb = self.query(planes, torch.cat([occ_points, points], dim=1))
        occ_logits, rgb = logits[:, :n], rgb[:, n:]
        occ_loss = F.binary_cross_entropy_with_logits(occ_logits, occ_labels)
        color_loss = (rgb - colors).abs().mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3, 4)).mean()
        loss = occ_loss + self.cfg.color_weight * color_loss + self.cfg.kl_weight * kl
        render = {}
        if self.cfg.render_loss and views is not None:
            render = render_losses(lambda xyz: self.query(planes, xyz), *views, n_rays=self.cfg.render_rays,
                                   n_samples=self.cfg.render_samples, generator=generator)
            w_rgb, w_mask, w_depth = self.cfg.render_weights
            loss = loss + w_rgb * render["rgb"] + w_mask * render["mask"] + w_depth * render["depth"]
        return VAEOutput(loss, occ_loss, color_loss, kl, occ_logits, rgb, render)
