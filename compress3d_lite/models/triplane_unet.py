"""The triplane diffusion UNet (docs/paper.md §5): denoises the VAE's latent triplane, conditioned on
the image embedding e_i and the shape embedding e_s.

The three latent planes (B, 3, c', r', r') (order xy, xz, yz; triplane.py) go through one 2D UNet
whose weights are shared by the planes (each plane gets a learned embedding so the net knows which
one it is looking at). Two things make it a *triplane* UNet:

* **3D-aware convolution** (Rodin, Wang et al. 2023): a plane's features are convolved together
  with the other two planes' features averaged along the axis they share with it and broadcast
  back. For the xy plane (indexed [x, y]):

      xz [x, z] --mean over z--> (x)  --broadcast over y--> [x, y]
      yz [y, z] --mean over z--> (y)  --broadcast over x--> [x, y]
      out_xy = Conv3x3([f_xy ; pooled_xz ; pooled_yz])                         (3C -> C)

  and likewise for xz and yz, so every point of a plane sees the whole line of the other two
  planes that passes through it.
* **Cross-attention** to two condition tokens, W_i e_i and W_s e_s (the paper injects both
  embeddings by cross-attention). Each condition is replaced by a learned null token with
  probability ``cond_drop`` = 0.05 in training, independently (classifier-free guidance). The
  two tokens are also added to the timestep embedding that scales and shifts every ResBlock
  (a pooled-condition path as in SDXL; our addition, it speeds up learning at small scale).
* ``cond_map`` (our addition, off in every preset; an ablation, docs/stages.md "Stage 4"): the
  two tokens, summed, are also mapped by one linear layer to a feature map of the lowest
  resolution, (3, C, r, r), added where the middle block starts. Cross-attention to two tokens
  can only mix two vectors per position and the scale/shift is the same everywhere, so neither
  says *where* a part goes; this map can. Zero-initialised: it starts as a no-op.

``cfg.grad_checkpoint`` (off in every preset; ``--grad-checkpoint``) recomputes every ResBlock and
cross-attention in the backward pass instead of storing its activations: same outputs and
gradients, a fraction of the activation memory, about a third more compute per step.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PAPER_GUIDANCE, Config
from ..diffusion import DiffusionConfig, diffusion_loss, sample
from .blocks import Downsample, Upsample, checkpointed, norm, timestep_embedding
from .hub import HubMixin


@dataclass
class UNetConfig(Config):
    """Triplane UNet over the VAE's normalised latent (3, c', r', r'), with Rodin's 3D-aware
    convolution and cross-attention to the image and shape embeddings. Paper: about 864M params."""

    latent_channels: int = 8  # c' of the VAE
    latent_res: int = 16  # r' of the VAE
    channels: tuple = (32, 64)  # per level; r' -> r'/2 between levels
    blocks_per_level: int = 1
    attn_levels: tuple = (1,)  # levels with cross-attention (0 = full resolution)
    heads: int = 4
    embed_dim: int = 256  # = the towers' embed_dim
    time_dim: int = 64
    cond_drop: float = 0.05  # p of dropping each condition independently (docs/paper.md §5)
    # recompute ResBlocks / cross-attention in backward (training only): 3x less activation memory
    # for ~1/3 more compute. Off in every preset: a100_full needs ~22 GiB per GPU without it
    # (train diffusion --preset a100_full --dry-run); turn it on for smaller GPUs or larger batches.
    grad_checkpoint: bool = False
    cond_map: bool = False  # conditions -> a spatial map at the lowest resolution (module docstring)
    # training only (stages/unet.py, SurfaceObjective): > 0 adds the occupancy loss of the clean
    # estimate, decoded by the frozen VAE, at this many near-surface points per object. 0 in every preset
    surface_weight: float = 0.0
    surface_points: int = 512


def cross_plane_features(h: torch.Tensor) -> torch.Tensor:
    """(B, 3, C, R, R) -> (B, 3, 2C, R, R): for each plane, the other two planes' features
    averaged along the shared axis and broadcast over the plane (the Rodin aggregation)."""
    xy, xz, yz = h.unbind(1)  # xy [x, y], xz [x, z], yz [y, z]; each (B, C, R, R)
    R = h.shape[-1]
    for_xy = torch.cat([xz.mean(-1, keepdim=True).expand(-1, -1, -1, R),  # (x) over y
                        yz.mean(-1)[:, :, None, :].expand(-1, -1, R, -1)], dim=1)  # (y) over x
    for_xz = torch.cat([xy.mean(-1, keepdim=True).expand(-1, -1, -1, R),  # (x) over z
                        yz.mean(-2)[:, :, None, :].expand(-1, -1, R, -1)], dim=1)  # (z) over x
    for_yz = torch.cat([xy.mean(-2)[..., None].expand(-1, -1, -1, R),  # (y) over z
                        xz.mean(-2)[:, :, None, :].expand(-1, -1, R, -1)], dim=1)  # (z) over y
    return torch.stack([for_xy, for_xz, for_yz], dim=1)


class AwareConv(nn.Module):
    """3D-aware convolution: Conv3x3 over [own plane ; the other two, pooled and broadcast]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(3 * c_in, c_out, 3, padding=1)

    def forward(self, h):  # (B, 3, C, R, R) -> (B, 3, C_out, R, R)
        x = torch.cat([h, cross_plane_features(h)], dim=2)  # (B, 3, 3C, R, R)
        return self.conv(x.flatten(0, 1)).unflatten(0, (h.shape[0], 3))


class TriplaneResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale/shift by the embedding, GroupNorm-SiLU-3D-aware conv, residual."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = norm(c_out), AwareConv(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x, emb):  # x (B, 3, C, R, R), emb (B, E)
        B = x.shape[0]
        flat = x.flatten(0, 1)  # (3B, C, R, R)
        h = self.conv1(F.silu(self.norm1(flat)))
        scale, shift = self.emb(F.silu(emb)).repeat_interleave(3, 0)[..., None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift).unflatten(0, (B, 3))
        return self.shortcut(flat).unflatten(0, (B, 3)) + self.conv2(h)


class CrossAttention(nn.Module):
    """Every plane position attends to the condition tokens (B, T, E); residual."""

    def __init__(self, c: int, emb_dim: int, heads: int):
        super().__init__()
        self.norm = norm(c)
        self.attn = nn.MultiheadAttention(c, heads, kdim=emb_dim, vdim=emb_dim, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x, tokens):  # x (B, 3, C, R, R), tokens (B, T, E)
        B, _, C, R, _ = x.shape
        q = self.norm(x.flatten(0, 1)).flatten(2).transpose(1, 2)  # (3B, R*R, C)
        kv = tokens.repeat_interleave(3, 0)  # (3B, T, E)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return x + out.transpose(1, 2).reshape(B, 3, C, R, R)


class TriplaneUNet(nn.Module, HubMixin):
    """forward(x_t (B, 3, c', r', r'), t (B,), e_i (B, D), e_s (B, D), drop_image (B,) bool,
    drop_shape (B,) bool) -> the model output (B, 3, c', r', r') under the parametrisation of
    ``diffusion_cfg`` (v-prediction in every preset)."""

    checkpointed = (TriplaneResBlock, CrossAttention)  # what cfg.grad_checkpoint recomputes in backward
    kind = "triplane_unet"
    what = "triplane UNet"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "TriplaneUNet":
        return cls(UNetConfig.from_dict(cfg["model"]), DiffusionConfig.from_dict(cfg["diffusion"]))

    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), "diffusion": self.diffusion_cfg.to_dict()}

    def __init__(self, cfg, diffusion_cfg=None):
        super().__init__()
        self.cfg = cfg
        self.diffusion_cfg = diffusion_cfg or DiffusionConfig(prediction_type="v_prediction")
        ch, E = list(cfg.channels), cfg.time_dim * 4
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, E), nn.SiLU(), nn.Linear(E, E))
        self.image_token, self.shape_token = nn.Linear(cfg.embed_dim, E), nn.Linear(cfg.embed_dim, E)
        self.null_image, self.null_shape = nn.Parameter(torch.zeros(E)), nn.Parameter(torch.zeros(E))
        self.plane_embed = nn.Parameter(torch.zeros(1, 3, ch[0], 1, 1))
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)

        self.down, skips, c = nn.ModuleList(), [ch[0]], ch[0]
        for level, c_out in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                self.down.append(TriplaneResBlock(c, c_out, E))
                c = c_out
                if level in cfg.attn_levels:
                    self.down.append(CrossAttention(c, E, cfg.heads))
                skips.append(c)
            if level < len(ch) - 1:
                self.down.append(Downsample(c))
                skips.append(c)
        r_low = cfg.latent_res // 2 ** (len(ch) - 1)  # the lowest resolution, where the middle block runs
        self.cond_map = nn.Linear(E, 3 * c * r_low * r_low) if cfg.cond_map else None
        if self.cond_map is not None:
            nn.init.zeros_(self.cond_map.weight)
            nn.init.zeros_(self.cond_map.bias)
        self.mid = nn.ModuleList([TriplaneResBlock(c, c, E), CrossAttention(c, E, cfg.heads), TriplaneResBlock(c, c, E)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(TriplaneResBlock(c + skips.pop(), ch[level], E))
                c = ch[level]
                if level in cfg.attn_levels:
                    self.up.append(CrossAttention(c, E, cfg.heads))
            if level > 0:
                self.up.append(Upsample(c))
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, cfg.latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def condition(self, e_i, e_s, drop_image=None, drop_shape=None):
        """Condition tokens (B, 2, E): W_i e_i and W_s e_s, or the learned nulls where dropped."""
        img, shp = self.image_token(e_i), self.shape_token(e_s)  # (B, E) each
        if drop_image is not None:
            img = torch.where(drop_image[:, None], self.null_image.expand_as(img), img)
        if drop_shape is not None:
            shp = torch.where(drop_shape[:, None], self.null_shape.expand_as(shp), shp)
        return torch.stack([img, shp], dim=1)

    def _layer(self, layer, h, emb, tokens):
        if isinstance(layer, TriplaneResBlock):
            return checkpointed(layer, h, emb, enabled=self.cfg.grad_checkpoint)
        if isinstance(layer, CrossAttention):
            return checkpointed(layer, h, tokens, enabled=self.cfg.grad_checkpoint)
        B = h.shape[0]  # Downsample / Upsample: per plane
        return layer(h.flatten(0, 1)).unflatten(0, (B, 3))

    def forward(self, x, t, e_i, e_s, drop_image=None, drop_shape=None):
        B = x.shape[0]
        tokens = self.condition(e_i, e_s, drop_image, drop_shape)  # (B, 2, E)
        emb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim)) + tokens.sum(1)  # (B, E)
        h = self.conv_in(x.flatten(0, 1)).unflatten(0, (B, 3)) + self.plane_embed  # (B, 3, ch0, r', r')
        hs = [h]
        for layer in self.down:
            h = self._layer(layer, h, emb, tokens)
            if not isinstance(layer, CrossAttention):
                hs.append(h)
        if self.cond_map is not None:  # (B, E) -> (B, 3, C, r, r) at the lowest resolution
            h = h + self.cond_map(tokens.sum(1)).view(h.shape)
        for layer in self.mid:
            h = self._layer(layer, h, emb, tokens)
        for layer in self.up:
            if isinstance(layer, TriplaneResBlock):
                h = torch.cat([h, hs.pop()], dim=2)
            h = self._layer(layer, h, emb, tokens)
        out = self.conv_out(F.silu(self.norm_out(h.flatten(0, 1))))
        return out.unflatten(0, (B, 3))  # (B, 3, c', r', r')

    def loss(self, z, e_i, e_s, scheduler, parts: bool = False):
        """Training loss for normalised latents z (B, 3, c', r', r') and unit embeddings e_i, e_s
        (B, D): each condition dropped with p = ``cond_drop`` independently, then the diffusion
        objective under the scheduler's parametrisation (v-prediction in every preset) with MSE
        (our choice; docs/paper.md §5). ``parts``: also (x_t, t, output), as ``diffusion_loss``."""
        p = self.cfg.cond_drop
        drop_i = torch.rand(z.shape[0], device=z.device) < p
        drop_s = torch.rand(z.shape[0], device=z.device) < p
        return diffusion_loss(lambda x, t: self(x, t, e_i, e_s, drop_i, drop_s), z, scheduler, "l2", parts=parts)

    def guided(self, x, t, e_i, e_s, guidance_image: float = PAPER_GUIDANCE["image"],
               guidance_shape: float = PAPER_GUIDANCE["shape"], use_shape: bool = True,
               interval: tuple = tuple(PAPER_GUIDANCE["interval"]), rescale: float = PAPER_GUIDANCE["rescale"]):
        """Dual classifier-free guidance (docs/paper.md §5: two scales, best s_image = 5, s_shape = 1):

            f~ = f(0, 0) + s_i * (f(i, 0) - f(0, 0)) + s_s * (f(i, s) - f(i, 0))

        f(i, s): both conditions; f(i, 0): image only; f(0, 0): neither (the learned nulls). At
        (s_i, s_s) = (1, 1) it is exactly f(i, s), at (0, 0) exactly f(0, 0). The three passes
        run as one batched forward call. ``use_shape=False`` (no prior, the paper's ablation)
        drops the shape term: f~ = f(0, 0) + s_i * (f(i, 0) - f(0, 0)), two passes.

        ``interval`` (lo, hi): guidance only at noise levels t / T in [lo, hi], the plain
        conditional output (one pass) elsewhere (Kynkäänniemi et al. 2024 guide a limited
        interval). ``rescale`` phi in [0, 1]: the guided output's per-sample std pulled back to the
        conditional's, f~ <- phi f~ std(f_c) / std(f~) + (1 - phi) f~ (Lin et al. 2024, eq. 15-16)."""
        B = x.shape[0]
        yes, no = torch.zeros(B, dtype=torch.bool, device=x.device), torch.ones(B, dtype=torch.bool, device=x.device)
        level = float(t.flatten()[0]) / self.diffusion_cfg.train_timesteps  # one noise level per call
        if not interval[0] <= level <= interval[1]:
            return self(x, t, e_i, e_s, yes, yes if use_shape else no)  # f(i, s), or f(i, 0) without the prior
        n = 3 if use_shape else 2
        drop_image = torch.cat([yes, no] + ([yes] if use_shape else []))  # order: (i, 0), (0, 0), (i, s)
        drop_shape = torch.cat([no, no] + ([yes] if use_shape else []))
        out = self(x.repeat(n, 1, 1, 1, 1), t.repeat(n), e_i.repeat(n, 1), e_s.repeat(n, 1), drop_image, drop_shape)
        f_i, f_0, *rest = out.chunk(n)
        guided = f_0 + guidance_image * (f_i - f_0)
        if use_shape:
            guided = guided + guidance_shape * (rest[0] - f_i)
        if rescale > 0:
            cond, dims = (rest[0] if use_shape else f_i), tuple(range(1, x.dim()))
            ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
            guided = rescale * guided * ratio + (1 - rescale) * guided
        return guided

    @torch.no_grad()
    def sample(self, e_i, e_s, guidance: tuple = (PAPER_GUIDANCE["image"], PAPER_GUIDANCE["shape"]),
               use_shape: bool = True, interval: tuple = tuple(PAPER_GUIDANCE["interval"]),
               rescale: float = PAPER_GUIDANCE["rescale"], steps: int | None = None, sampler: str | None = None, generator=None,
               x_T=None, scheduler=None, callback=None, progress: dict | None = None, x_start=None,
               strength: float = 1.0):
        """(B, D) unit embeddings -> (B, 3, c', r', r') normalised latents under dual guidance
        (``guided``; ``guidance`` = (s_image, s_shape)); the loop, the SDEdit start (``x_start``,
        ``strength``), ``callback`` and ``progress`` are ``diffusion.sample``'s. ``x_T``: the
        initial noise instead of drawing it from ``generator``; ``scheduler``: a prebuilt sampler."""
        cfg = self.cfg
        shape = (e_i.shape[0], 3, cfg.latent_channels, cfg.latent_res, cfg.latent_res)
        e_s = e_s if e_s is not None else torch.zeros_like(e_i)

        def denoise(x, t):
            return self.guided(x, t, e_i, e_s, *guidance, use_shape=use_shape, interval=interval, rescale=rescale)

        return sample(denoise, shape, self.diffusion_cfg, steps, sampler, generator, e_i.device, x_T=x_T,
                      callback=callback, scheduler=scheduler, progress=progress, x_start=x_start, strength=strength)
