"""Every stage's presets: named sizes, from a CPU minute to the paper's A100 run (docs/design.md
§4). One table per stage -- the model's config, its ``TrainConfig`` and, for the two diffusion
models, their ``DiffusionConfig`` -- and the function that returns a validated copy:

    lite        CPU, minutes: notebooks, tests and CI
    course      CPU, under an hour per stage: the shipped checkpoints
    colab_t4    one T4 GPU, hours
    a100_full   the paper's scale on A100s (GPUS below: how many each stage is planned for)

    p = vae_preset("course", model={"attn_res": 16})      # a copy; a bad field is a ConfigError

The tables are read both by training (``stages/``) and by loading (``inference/``): a loaded
config.json may not ask for sizes beyond every preset's (``*_SIZE_BOUNDS``). The names offered
(``PRESET_NAMES``) are in config.py, so the command line needs no torch to list them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config, ConfigError, TrainConfig, choose_preset, preset_bounds
from .diffusion import DiffusionConfig
from .models.autoencoder import AEConfig
from .models.image_tower import IMAGE_TOWERS, ImageTowerConfig
from .models.prior import PriorConfig
from .models.shape_tower import ShapeTowerConfig
from .models.triplane_unet import UNetConfig

# -------------------------------------------------------------- stage 1, the triplane VAE


@dataclass
class VAEPreset(Config):
    """A VAE run: the architecture and the training run."""

    model: AEConfig
    train: TrainConfig


VAE_PRESETS = {
    # CPU, minutes: notebooks, tests and CI
    "lite": VAEPreset(
        AEConfig(point_dim=16, volume_res=16, plane_channels=16, enc_channels=(16, 32), dec_channels=(32, 16),
                 latent_res=8, latent_channels=4, attn_res=8, attn_heads=2, head_hidden=32),
        TrainConfig(steps=200, batch_size=4, n_points=1024, n_occ=2048, n_train=64, log_every=20, ckpt_every=100)),
    # CPU, under ~40 minutes: the shipped checkpoint. Colour weight 2 (the default 1; the paper has no
    # colour-field loss) meets the colour-PSNR target at this size without losing the IoU target
    # (docs/stages.md, "Stage 1").
    "course": VAEPreset(AEConfig(color_weight=2.0), TrainConfig()),
    # one T4, hours
    "colab_t4": VAEPreset(
        AEConfig(point_dim=64, volume_res=64, plane_channels=32, enc_channels=(64, 128), dec_channels=(128, 64),
                 blocks_per_level=2, latent_res=32, latent_channels=16, attn_res=32, head_hidden=128),
        TrainConfig(steps=50_000, batch_size=16, lr=3e-4, n_points=4096, n_occ=8192, n_train=20_000,
                    mixed_precision="fp16", num_workers=2, ckpt_every=2000, log_every=100)),
    # paper scale, 8 x A100, bf16 (docs/paper.md §2.3-2.6, §10: r = 128, latent 3x32x32x32, r'' = 32)
    "a100_full": VAEPreset(
        AEConfig(point_dim=64, pointnet_blocks=5, volume_res=128, plane_channels=32, enc_channels=(32, 64, 128),
                 dec_channels=(128, 64, 32), blocks_per_level=2, latent_res=32, latent_channels=32,
                 attn_res=32, attn_heads=8, head_hidden=128),
        TrainConfig(steps=500_000, batch_size=8, lr=1e-4, n_points=10_000, n_occ=16_384, n_train=0,
                    mixed_precision="bf16", num_workers=8, ckpt_every=5000, log_every=100)),
}


VAE_SIZE_BOUNDS = preset_bounds(p.model for p in VAE_PRESETS.values())  # what a loaded config.json may ask for


def vae_preset(name: str, model: dict | None = None, train: dict | None = None) -> VAEPreset:
    """A copy of the named preset with validated changes to its AEConfig / TrainConfig."""
    return choose_preset(VAE_PRESETS, name, "VAE").override(model=model or {}, train=train or {})


# -------------------------------------------------------------------- stage 2, the towers


@dataclass
class EmbedPreset(Config):
    """A towers run: the image tower by name (``IMAGE_TOWERS``), the shape tower, the training run.
    A pretrained image tower is frozen (OpenShape's recipe); a toy tower learns with the shape tower."""

    image_tower: str
    shape_tower: ShapeTowerConfig
    train: TrainConfig

    @property
    def tower(self) -> ImageTowerConfig:
        return IMAGE_TOWERS[self.image_tower]

    @property
    def frozen(self) -> bool:
        return self.tower.pretrained is not None


EMBED_PRESETS = {
    "lite": EmbedPreset("toy_lite", ShapeTowerConfig(width=32, blocks=3, hidden=128, embed_dim=64),
                        TrainConfig(steps=150, batch_size=32, lr=1e-3, warmup_steps=20, n_points=512, n_train=64,
                                    log_every=10, ckpt_every=100)),
    "course": EmbedPreset("toy", ShapeTowerConfig(width=32, blocks=3),
                          TrainConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, weight_decay=0.05,
                                      n_points=512, n_train=1024, log_every=50, ckpt_every=500)),
    # OpenShape's recipe: the pretrained image tower is frozen, only the shape tower learns
    "colab_t4": EmbedPreset("vit_b32", ShapeTowerConfig(width=128, blocks=5, hidden=512, embed_dim=512),
                            TrainConfig(steps=20_000, batch_size=128, lr=5e-4, n_points=4096, n_train=20_000,
                                        mixed_precision="fp16", num_workers=2, ckpt_every=2000, log_every=100)),
    "a100_full": EmbedPreset("vit_bigg14", ShapeTowerConfig(width=256, blocks=6, pool_res=16, hidden=1024,
                                                            embed_dim=1280),
                             TrainConfig(steps=100_000, batch_size=256, lr=5e-4, n_points=10_000, n_train=0,
                                         mixed_precision="bf16", num_workers=8, ckpt_every=5000, log_every=100)),
}


EMBED_SIZE_BOUNDS = preset_bounds(p.shape_tower for p in EMBED_PRESETS.values())  # what a shape tower's config.json may ask


def embed_preset(name: str, image_tower: str | None = None, train: dict | None = None) -> EmbedPreset:
    """A copy of the named preset, optionally with another image tower by name (e.g. ``vit_b32``
    for the course shape tower) and TrainConfig changes; the shape tower's output size follows
    the image tower's."""
    p = choose_preset(EMBED_PRESETS, name, "embed").override(train=train or {})
    if image_tower is not None:
        if image_tower not in IMAGE_TOWERS:
            raise ConfigError(f"unknown image tower {image_tower!r}; choose from {', '.join(IMAGE_TOWERS)}")
        p.image_tower = image_tower
    p.shape_tower.embed_dim = p.tower.embed_dim
    return p


# --------------------------------------------------------------------- stage 3, the prior


@dataclass
class PriorPreset(Config):
    """A prior run: the MLP, its noise schedule and sampler (x0-prediction), the training run."""

    model: PriorConfig
    train: TrainConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


PRIOR_PRESETS = {
    "lite": PriorPreset(PriorConfig(embed_dim=64, width=128, depth=2, time_dim=32),
                        TrainConfig(steps=300, batch_size=64, lr=1e-3, warmup_steps=20, log_every=20,
                                    ckpt_every=200)),
    "course": PriorPreset(PriorConfig(), TrainConfig(steps=4000, batch_size=256, lr=5e-4, warmup_steps=100,
                                                     log_every=100, ckpt_every=1000)),
    "colab_t4": PriorPreset(PriorConfig(embed_dim=512, width=768, depth=6, time_dim=256),
                            TrainConfig(steps=100_000, batch_size=512, lr=3e-4, mixed_precision="fp16",
                                        ema_decay=0.9999, ckpt_every=5000, log_every=100)),
    # paper: 25.8M params, 2 x A100 for 18 h (docs/paper.md §4)
    "a100_full": PriorPreset(PriorConfig(embed_dim=1280, width=1024, depth=6, time_dim=320),
                             TrainConfig(steps=300_000, batch_size=1024, lr=1e-4, mixed_precision="bf16",
                                         ema_decay=0.9999, ckpt_every=10_000, log_every=100)),
}


PRIOR_SIZE_BOUNDS = preset_bounds(p.model for p in PRIOR_PRESETS.values())  # what a loaded config.json may ask for


def prior_preset(name: str, model: dict | None = None, train: dict | None = None) -> PriorPreset:
    """A copy of the named preset with validated changes to its PriorConfig / TrainConfig."""
    return choose_preset(PRIOR_PRESETS, name, "prior").override(model=model or {}, train=train or {})


# ------------------------------------------------------------- stage 4, the triplane UNet


def _v_prediction() -> DiffusionConfig:
    return DiffusionConfig(prediction_type="v_prediction")


def _flow() -> DiffusionConfig:
    """Rectified flow, training timesteps logit-normal (mean 1: biased toward the noise), Euler
    sampling: the course UNet's objective, chosen on the val split (docs/stages.md, "Stage 4")."""
    return DiffusionConfig(prediction_type="v_prediction", objective="rectified_flow", sampler="euler",
                           timesteps="logit_normal", logit_mean=1.0)


@dataclass
class UNetPreset(Config):
    """A UNet run: the network, its objective and sampler (DDPM v-prediction unless a preset says
    otherwise), the training run."""

    model: UNetConfig
    train: TrainConfig
    diffusion: DiffusionConfig = field(default_factory=_v_prediction)


UNET_PRESETS = {
    "lite": UNetPreset(UNetConfig(latent_channels=4, latent_res=8, channels=(16, 32), embed_dim=64, time_dim=32,
                                  heads=2),
                       TrainConfig(steps=200, batch_size=16, lr=1e-3, warmup_steps=20, log_every=20, ckpt_every=100)),
    # a third level (4 x 4) with cross-attention gives every plane position a view of the whole
    # shape; EMA of the weights; rectified flow with noise-biased timesteps; about 60 minutes on
    # 2 CPU cores. Chosen on the val split (docs/stages.md, "Stage 4")
    "course": UNetPreset(UNetConfig(channels=(32, 64, 128), attn_levels=(1, 2)),
                         TrainConfig(steps=5000, batch_size=32, lr=1e-3, warmup_steps=100, log_every=50,
                                     ckpt_every=500, ema_decay=0.999), _flow()),
    "colab_t4": UNetPreset(UNetConfig(latent_channels=16, latent_res=32, channels=(128, 256, 384),
                                      blocks_per_level=2, attn_levels=(1, 2), heads=8, embed_dim=512, time_dim=256),
                           TrainConfig(steps=200_000, batch_size=32, lr=1e-4, mixed_precision="fp16",
                                       ema_decay=0.9999, ckpt_every=5000, log_every=100)),
    # paper: 864M params, 8 x A100 for 4 days (docs/paper.md §5)
    "a100_full": UNetPreset(UNetConfig(latent_channels=32, latent_res=32, channels=(320, 640, 960, 1152),
                                       blocks_per_level=2, attn_levels=(1, 2, 3), heads=16, embed_dim=1280,
                                       time_dim=512),
                            TrainConfig(steps=500_000, batch_size=32, lr=1e-4, mixed_precision="bf16",
                                        ema_decay=0.9999, ckpt_every=5000, log_every=100)),
}


UNET_SIZE_BOUNDS = preset_bounds(p.model for p in UNET_PRESETS.values())  # what a loaded config.json may ask for


def unet_preset(name: str, model: dict | None = None, train: dict | None = None,
                diffusion: dict | None = None) -> UNetPreset:
    """A copy of the named preset with validated changes to its UNetConfig / TrainConfig /
    DiffusionConfig (the objective, its timesteps and sampler: checked together, as when loaded)."""
    p = choose_preset(UNET_PRESETS, name, "diffusion").override(model=model or {}, train=train or {})
    if not (p.model.surface_weight >= 0 and p.model.surface_points >= 1):
        raise ConfigError(f"model.surface_weight must be >= 0 and model.surface_points >= 1, got "
                          f"{p.model.surface_weight} and {p.model.surface_points}")
    if diffusion:
        p.diffusion = DiffusionConfig.from_dict({**p.diffusion.to_dict(), **diffusion})
        if {"logit_mean", "logit_std"} & set(diffusion) and p.diffusion.timesteps != "logit_normal":
            raise ConfigError(f"diffusion.logit_mean / logit_std shape logit-normal timesteps, but the {name} "
                              f"preset's timesteps are {p.diffusion.timesteps!r}: choose timesteps 'logit_normal'")
    return p


# ----------------------------------------------------------------------------------- GPUs


# each GPU preset's GPU and how many of them each stage is planned for (the dry run's wall-clock estimates)
GPUS = {"colab_t4": ("t4", {"ae": 1, "embed": 1, "prior": 1, "diffusion": 1}),
        "a100_full": ("a100", {"ae": 8, "embed": 8, "prior": 2, "diffusion": 8})}
