"""Configs, presets and run-time switches shared by the library, the CLI and the notebooks.

Fast mode is the one switch that shrinks notebooks and tests to CPU size. It is read from a
single environment variable, ``C3D_FAST``:

    C3D_FAST=1   force fast mode (small sizes, few steps) -- what CI and nbval use
    C3D_FAST=0   force full mode, even on a CPU
    unset        automatic: fast on a machine without CUDA, full with CUDA

Fast mode shrinks steps and sizes; it never skips a concept.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

FAST_ENV = "C3D_FAST"
HALF_EXTENT = 0.9  # the data frame: every object's bounding box fits in [-0.9, 0.9]^3 (docs/design.md §2)


def fast_mode() -> bool:
    """True when notebooks/tests should run at CPU size (see module docstring)."""
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return True


def pick_device() -> str:
    """cuda > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------------------
# data configs (the per-object sampling spec is saved next to every dataset in index.json)


@dataclass
class SampleSpec:
    """How one object is turned into a training example (docs/design.md §2)."""

    n_points: int = 4096  # coloured surface samples per object
    n_uniform: int = 8192  # occupancy queries uniform in [-1, 1]^3
    n_near: int = 8192  # occupancy queries near the surface
    near_sigmas: tuple = (0.01, 0.05)  # std of the gaussian offsets, half the near queries each
    views: int = 4  # rendered views per object (0: none)
    resolution: int = 128  # view size in pixels (square)
    fov_deg: float = 40.0  # vertical field of view of the pinhole camera
    radius: float = 4.6  # camera distance: the whole [-0.9, 0.9]^3 box (radius 1.56) is in view
    elevation_deg: tuple = (-10.0, 40.0)  # camera elevation above the xz plane (y is up), degrees

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SampleSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("near_sigmas", "elevation_deg"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


# ----------------------------------------------------------------------------------------
# stage 1: the triplane VAE (docs/paper.md §2; docs/design.md §3-4)


def _from_dict(cls, d: dict, what: str):
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class AEConfig:
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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AEConfig":
        return _from_dict(cls, d, "AEConfig")


@dataclass
class TrainConfig:
    """One training run (any stage): steps, batch, optimiser, logging, checkpoints."""

    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    n_points: int = 2048  # surface points per object per step (input and colour targets)
    n_occ: int = 4096  # occupancy queries per object per step
    n_train: int = 512  # toy objects made for training when no --data is given
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: "no", "fp16", "bf16"
    num_workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


AE_PRESETS = {
    # CPU, minutes: notebooks, tests and CI
    "lite": (AEConfig(point_dim=16, volume_res=16, plane_channels=16, enc_channels=(16, 32), dec_channels=(32, 16),
                      latent_res=8, latent_channels=4, attn_res=8, attn_heads=2, head_hidden=32),
             TrainConfig(steps=200, batch_size=4, n_points=1024, n_occ=2048, n_train=64, log_every=20, ckpt_every=100)),
    # CPU, under ~40 minutes: the shipped checkpoint. Colour weight 2 (our default elsewhere: 1; the paper
    # has no colour-field loss) meets the colour-PSNR target at this size without losing the IoU target
    # (docs/stages.md, "Stage 1").
    "course": (AEConfig(color_weight=2.0), TrainConfig()),
    # one T4, hours
    "colab_t4": (AEConfig(point_dim=64, volume_res=64, plane_channels=32, enc_channels=(64, 128), dec_channels=(128, 64),
                          blocks_per_level=2, latent_res=32, latent_channels=16, attn_res=32, head_hidden=128),
                 TrainConfig(steps=50_000, batch_size=16, lr=3e-4, n_points=4096, n_occ=8192, n_train=20_000,
                             mixed_precision="fp16", num_workers=2, ckpt_every=2000, log_every=100)),
    # paper scale, 8 x A100, bf16 (docs/paper.md §2.3-2.6, §10: r = 128, latent 3x32x32x32, r'' = 32)
    "a100_full": (AEConfig(point_dim=64, pointnet_blocks=5, volume_res=128, plane_channels=32, enc_channels=(32, 64, 128),
                           dec_channels=(128, 64, 32), blocks_per_level=2, latent_res=32, latent_channels=32,
                           attn_res=32, attn_heads=8, head_hidden=128),
                  TrainConfig(steps=500_000, batch_size=8, lr=1e-4, n_points=10_000, n_occ=16_384, n_train=0,
                              mixed_precision="bf16", num_workers=8, ckpt_every=5000, log_every=100)),
}


def ae_preset(name: str) -> tuple:
    """(AEConfig, TrainConfig) of a named preset (copies, safe to edit)."""
    import copy

    if name not in AE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(AE_PRESETS)}")
    return copy.deepcopy(AE_PRESETS[name])


# ----------------------------------------------------------------------------------------
# stage 2: image and shape embeddings (docs/paper.md §3; docs/design.md §3.2)


@dataclass
class ImageTowerConfig:
    """An open_clip image encoder. ``pretrained`` set: open_clip's ``arch`` with those weights
    (downloaded from the Hugging Face hub); None: a small open_clip VisionTransformer trained
    from scratch on toy renders (the offline ``toy`` towers)."""

    name: str = "toy"
    arch: str = "VisionTransformer"  # open_clip model name when pretrained
    pretrained: str | None = None  # open_clip weights tag, e.g. "laion2b_s34b_b79k"
    embed_dim: int = 256
    image_size: int = 64
    patch_size: int = 8
    width: int = 96
    layers: int = 4
    heads: int = 4
    background: float = 1.0  # RGBA inputs are composited on this grey level (1.0: white)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTowerConfig":
        return _from_dict(cls, d, "ImageTowerConfig")


IMAGE_TOWERS = {
    # offline, trained from scratch on toy renders (what CI, the notebooks and the shipped checkpoints use)
    "toy": ImageTowerConfig(),
    "toy_lite": ImageTowerConfig(name="toy_lite", embed_dim=64, image_size=32, patch_size=8, width=64, layers=2,
                                 heads=2),
    # pretrained open_clip (Colab; needs the weights from the Hugging Face hub once)
    "vit_b32": ImageTowerConfig(name="vit_b32", arch="ViT-B-32", pretrained="laion2b_s34b_b79k", embed_dim=512,
                                image_size=224),
    # the paper's: OpenShape aligns to OpenCLIP ViT-bigG-14, 1280-d (docs/paper.md §3)
    "vit_bigg14": ImageTowerConfig(name="vit_bigg14", arch="ViT-bigG-14", pretrained="laion2b_s39b_b160k",
                                   embed_dim=1280, image_size=224),
}


@dataclass
class ShapeTowerConfig:
    """Point-cloud encoder of coloured points into the image tower's space (OpenShape's role;
    a PointNet here where OpenShape uses PointBERT)."""

    width: int = 64
    blocks: int = 4
    pe_freqs: int = 6
    pool_res: int = 8
    hidden: int = 256
    embed_dim: int = 256  # = the image tower's embed_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeTowerConfig":
        return _from_dict(cls, d, "ShapeTowerConfig")


EMBED_PRESETS = {
    # (image tower, frozen?, shape tower, training)
    "lite": ("toy_lite", False, ShapeTowerConfig(width=32, blocks=3, hidden=128, embed_dim=64),
             TrainConfig(steps=150, batch_size=32, lr=1e-3, warmup_steps=20, n_points=512, n_train=64, log_every=10,
                         ckpt_every=100)),
    "course": ("toy", False, ShapeTowerConfig(width=32, blocks=3),
               TrainConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, weight_decay=0.05, n_points=512,
                           n_train=1024, log_every=50, ckpt_every=500)),
    # OpenShape's recipe: the pretrained image tower is frozen, only the shape tower learns
    "colab_t4": ("vit_b32", True, ShapeTowerConfig(width=128, blocks=5, hidden=512, embed_dim=512),
                 TrainConfig(steps=20_000, batch_size=128, lr=5e-4, n_points=4096, n_train=20_000,
                             mixed_precision="fp16", num_workers=2, ckpt_every=2000, log_every=100)),
    "a100_full": ("vit_bigg14", True, ShapeTowerConfig(width=256, blocks=6, pool_res=16, hidden=1024,
                                                      embed_dim=1280),
                  TrainConfig(steps=100_000, batch_size=256, lr=5e-4, n_points=10_000, n_train=0,
                              mixed_precision="bf16", num_workers=8, ckpt_every=5000, log_every=100)),
}


def embed_preset(name: str) -> tuple:
    """(ImageTowerConfig, frozen, ShapeTowerConfig, TrainConfig) of a named preset (copies)."""
    import copy

    if name not in EMBED_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(EMBED_PRESETS)}")
    tower, frozen, shape, train = copy.deepcopy(EMBED_PRESETS[name])
    return copy.deepcopy(IMAGE_TOWERS[tower]), frozen, shape, train


# ----------------------------------------------------------------------------------------
# diffusion (shared by stage 3, the prior, and stage 4, the triplane diffusion)


@dataclass
class DiffusionConfig:
    """The noise schedule and sampler around diffusers' schedulers (paper: not found; our choice)."""

    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule
    prediction_type: str = "sample"  # the model predicts x0 (docs/paper.md §4: "output: the clean e_s")
    sampler: str = "ddim"  # "ddim", "dpm" (DPM-Solver++) or "ddpm"
    sample_steps: int = 25

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        return _from_dict(cls, d, "DiffusionConfig")


# ----------------------------------------------------------------------------------------
# stage 3: the diffusion prior, image embedding -> shape embedding (docs/paper.md §4)


@dataclass
class PriorConfig:
    """Residual MLP with long skip connections; predicts the clean shape embedding."""

    embed_dim: int = 256  # = the towers' embed_dim
    width: int = 384
    depth: int = 6  # residual blocks (even: the first half's outputs skip to the second half)
    time_dim: int = 128
    cond_drop: float = 0.1  # p of replacing the image embedding by a learned null (for guidance)
    loss: str = "l1"  # docs/paper.md §4: L1 on the clean embedding

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        return _from_dict(cls, d, "PriorConfig")


PRIOR_PRESETS = {
    "lite": (PriorConfig(embed_dim=64, width=128, depth=2, time_dim=32),
             TrainConfig(steps=300, batch_size=64, lr=1e-3, warmup_steps=20, log_every=20, ckpt_every=200)),
    "course": (PriorConfig(), TrainConfig(steps=4000, batch_size=256, lr=5e-4, warmup_steps=100, log_every=100,
                                          ckpt_every=1000)),
    "colab_t4": (PriorConfig(embed_dim=512, width=768, depth=6, time_dim=256),
                 TrainConfig(steps=100_000, batch_size=512, lr=3e-4, mixed_precision="fp16", ckpt_every=5000,
                             log_every=100)),
    # paper: 25.8M params, 2 x A100 for 18 h (docs/paper.md §4)
    "a100_full": (PriorConfig(embed_dim=1280, width=1024, depth=6, time_dim=320),
                  TrainConfig(steps=300_000, batch_size=1024, lr=1e-4, mixed_precision="bf16", ckpt_every=10_000,
                              log_every=100)),
}


def prior_preset(name: str) -> tuple:
    """(PriorConfig, TrainConfig) of a named preset (copies)."""
    import copy

    if name not in PRIOR_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRIOR_PRESETS)}")
    return copy.deepcopy(PRIOR_PRESETS[name])


# ----------------------------------------------------------------------------------------
# stage 4: the triplane latent diffusion (docs/paper.md §5)


@dataclass
class UNetConfig:
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

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return _from_dict(cls, d, "UNetConfig")


DIFFUSION_PRESETS = {
    "lite": (UNetConfig(latent_channels=4, latent_res=8, channels=(16, 32), embed_dim=64, time_dim=32, heads=2),
             TrainConfig(steps=200, batch_size=16, lr=1e-3, warmup_steps=20, log_every=20, ckpt_every=100)),
    "course": (UNetConfig(), TrainConfig(steps=4000, batch_size=32, lr=1e-3, warmup_steps=100, log_every=50,
                                         ckpt_every=500)),
    "colab_t4": (UNetConfig(latent_channels=16, latent_res=32, channels=(128, 256, 384), blocks_per_level=2,
                            attn_levels=(1, 2), heads=8, embed_dim=512, time_dim=256),
                 TrainConfig(steps=200_000, batch_size=32, lr=1e-4, mixed_precision="fp16", ckpt_every=5000,
                             log_every=100)),
    # paper: 864M params, 8 x A100 for 4 days (docs/paper.md §5)
    "a100_full": (UNetConfig(latent_channels=32, latent_res=32, channels=(320, 640, 960, 1152), blocks_per_level=2,
                             attn_levels=(1, 2, 3), heads=16, embed_dim=1280, time_dim=512),
                  TrainConfig(steps=500_000, batch_size=32, lr=1e-4, mixed_precision="bf16", ckpt_every=5000,
                              log_every=100)),
}


def diffusion_preset(name: str) -> tuple:
    """(UNetConfig, TrainConfig) of a named preset (copies)."""
    import copy

    if name not in DIFFUSION_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(DIFFUSION_PRESETS)}")
    return copy.deepcopy(DIFFUSION_PRESETS[name])
