"""Stage 4, the triplane latent diffusion (docs/paper.md §5): presets, the training run on the VAE's
normalised latents conditioned on the towers' embeddings, loading, and the dry-run setup.

    compress3d-lite train diffusion --preset course --vae data_samples/checkpoints/vae_course \
        --embed data_samples/checkpoints/embed_course --data runs/toy2048 --out runs/unet_course

The model and its loss are ``models/triplane_unet.py`` (``TriplaneUNet``, ``UNetConfig``); the
noise schedule and sampler are ``diffusion.py``. A run caches latents and embeddings
(``OUT/latents.safetensors``) and writes ``OUT/unet``, whose config records the VAE, the image
tower and the shape tower it belongs to, the latent statistics, and its default guidance scales.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, read_config, resolve_folder, write_checkpoint
from ..config import Config, ConfigError, check_sizes, choose_preset, preset_bounds
from ..data.dataset import drawn_view
from ..data.io import load_object, read_index
from ..diffusion import DiffusionConfig, clean_estimate, make_scheduler
from ..models.image_tower import fingerprint
from ..models.triplane_unet import TriplaneUNet, UNetConfig
from ..training.loop import Objective, TrainConfig, cached_tensors, fit, make_accelerator
from ..training.run_folder import TrainingError, claim_run_folder, resume_point
from ..training.measure import Setup, random_unit, without_checkpointing
from .embed import embed_folder, embed_preset, load_towers
from .vae import encode_latents, latent_stats, load_vae, vae_preset

KIND = TriplaneUNet.kind


# ------------------------------------------------------------------------------------------ presets


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


PRESETS = {
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


SIZE_BOUNDS = preset_bounds(p.model for p in PRESETS.values())  # what a loaded config.json may ask for


def unet_preset(name: str, model: dict | None = None, train: dict | None = None,
                diffusion: dict | None = None) -> UNetPreset:
    """A copy of the named preset with validated changes to its UNetConfig / TrainConfig /
    DiffusionConfig (the objective, its timesteps and sampler: checked together, as when loaded)."""
    p = choose_preset(PRESETS, name, "diffusion").override(model=model or {}, train=train or {})
    if not (p.model.surface_weight >= 0 and p.model.surface_points >= 1):
        raise ConfigError(f"model.surface_weight must be >= 0 and model.surface_points >= 1, got "
                          f"{p.model.surface_weight} and {p.model.surface_points}")
    if diffusion:
        p.diffusion = DiffusionConfig.from_dict({**p.diffusion.to_dict(), **diffusion})
        if {"logit_mean", "logit_std"} & set(diffusion) and p.diffusion.timesteps != "logit_normal":
            raise ConfigError(f"diffusion.logit_mean / logit_std shape logit-normal timesteps, but the {name} "
                              f"preset's timesteps are {p.diffusion.timesteps!r}: choose timesteps 'logit_normal'")
    return p


# ------------------------------------------------------------------------------------------ training


class LatentTriples(torch.utils.data.Dataset):
    """(normalised VAE latent, image embedding of one view, shape embedding) per object, and its
    near-surface queries and occupancy when ``surface`` is given (for SurfaceObjective)."""

    def __init__(self, latents, e_i, e_s, seed: int = 0, surface: dict | None = None):
        self.z, self.e_i, self.e_s, self.seed = latents, e_i, e_s, seed  # (N, 3, c', r', r'), (N, V, D), (N, D)
        self.surface = surface  # {"q": (N, K, 3), "occ": (N, K)} or None

    def __len__(self):
        return len(self.z)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        item = {"z": self.z[i], "e_i": self.e_i[i, v], "e_s": self.e_s[i]}
        if self.surface is not None:
            item.update(q=self.surface["q"][i], occ=self.surface["occ"][i])
        return item


def near_surface_set(folder, n: int, seed: int = 0) -> dict:
    """{"q": (N, n, 3), "occ": (N, n)}: ``n`` of each object's near-surface occupancy queries (the
    part of ``occ_points`` after the uniform ones, as the folder's index records; all of them when it
    does not), drawn once with ``seed``."""
    index = read_index(folder)
    n_uniform = int(index.get("spec", {}).get("n_uniform", 0))
    rng = np.random.default_rng(seed)
    qs, occs = [], []
    for entry in index["objects"]:
        obj = load_object(Path(folder) / entry["file"])
        near = slice(n_uniform, None) if n_uniform < len(obj["occ_points"]) else slice(None)
        q, occ = obj["occ_points"][near], obj["occ_labels"][near]
        pick = rng.choice(len(q), size=n, replace=len(q) < n)
        qs.append(torch.from_numpy(q[pick].astype(np.float32)))
        occs.append(torch.from_numpy(occ[pick].astype(np.float32)))
    return {"q": torch.stack(qs), "occ": torch.stack(occs)}


class SurfaceObjective(Objective):
    """The UNet's diffusion loss plus ``cfg.surface_weight`` x an occupancy loss of its clean
    estimate (our addition, for thin parts; off in every preset): x0_hat = clean_estimate(x_t, out)
    (diffusion.py), un-normalised and decoded by the frozen VAE, BCE against the true occupancy at
    near-surface points, each sample weighted by its clean fraction 1 - t/T (at pure noise the
    estimate is a posterior mean, a blur no sharp surface can be asked of)."""

    def __init__(self, unet, scheduler, vae, mean, std):
        super().__init__("unet", unet, scheduler)
        self.frozen = (vae.eval().requires_grad_(False), mean, std)  # a tuple: neither trained nor saved

    def forward(self, z, e_i, e_s, q, occ):  # z (B, 3, c', r', r'), q (B, K, 3), occ (B, K)
        unet, (vae, mean, std), sched = self.unet, self.frozen, self.scheduler
        diffusion, (x_t, t, out) = unet.loss(z, e_i, e_s, sched, parts=True)  # the plain objective's draws
        x0 = clean_estimate(sched, x_t, t, out) * std[0] + mean[0]  # (B, 3, c', r', r'), the VAE's latent
        logits, _ = vae.query(vae.decode(x0), q)  # (B, K)
        clean = 1 - t.float() / sched.config.num_train_timesteps  # (B,)
        surface = (F.binary_cross_entropy_with_logits(logits, occ, reduction="none").mean(1) * clean).mean()
        return diffusion + unet.cfg.surface_weight * surface, {"diffusion": diffusion.detach(), "surface": surface.detach()}


def unet_step(model, batch):
    """The UNet's training step: batch z (B, 3, c', r', r'), e_i (B, D), e_s (B, D) [, q (B, K, 3),
    occ (B, K) for SurfaceObjective] -> (loss, {logged parts})."""
    if "q" in batch:
        return model(batch["z"], batch["e_i"], batch["e_s"], batch["q"], batch["occ"])
    return model(batch["z"], batch["e_i"], batch["e_s"]), {}


def build_unet(p: UNetPreset, meta: bool = False) -> tuple:
    """(TriplaneUNet, its training module) for a preset whose latent size and embedding size are
    set: what training and the dry run run. ``meta``: the network on the meta device."""
    with torch.device("meta") if meta else contextlib.nullcontext():
        unet = TriplaneUNet(p.model, p.diffusion)
    return unet, Objective("unet", unet, make_scheduler(p.diffusion, "ddpm"))


def train_unet(preset: str, out, vae: str, embed: str, data: str | None = None, resume: bool = False,
               train_overrides: dict | None = None, half: bool = False, progress: bool = True,
               stop_after: int | None = None, overwrite: bool = False, overrides: dict | None = None,
               diffusion: dict | None = None) -> dict:
    """Train the triplane UNet on the normalised VAE latents of a data set, conditioned on the
    towers' embeddings (image: one random view; shape: the ground-truth points). Latents and
    embeddings are computed once and cached in ``out/latents.safetensors``. Writes ``out/unet``.
    ``overrides`` / ``train_overrides`` / ``diffusion``: UNetConfig / TrainConfig / DiffusionConfig
    fields (for example ``{"objective": "rectified_flow", "sampler": "euler"}``)."""
    p = unet_preset(preset, overrides, train_overrides, diffusion)  # a bad choice fails before the folder is claimed
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless --overwrite
    tcfg = p.train
    accelerator = make_accelerator(tcfg)
    vae_model, vae_cfg = load_vae(vae, device=accelerator.device)
    tower, shape_tower, shape_cfg = load_towers(embed, device=accelerator.device)
    mean, std = latent_stats(vae_cfg, accelerator.device)
    if mean is None:
        raise TrainingError(f"{vae}: has no latent_stats (a training checkpoint?); use the final model/ folder")
    # the UNet lives in the VAE's latent space and the towers' embedding space
    p.model = p.model.override(latent_channels=vae_model.cfg.latent_channels, latent_res=vae_model.cfg.latent_res,
                               embed_dim=tower.cfg.embed_dim)
    model_cfg = {"unet": p.model.to_dict(), "diffusion": p.diffusion.to_dict()}
    start = 0
    if resume:
        start, tcfg, data = resume_point(out, "diffusion_training", preset, model_cfg, tcfg, train_overrides, data,
                                         release="unet")
    torch.manual_seed(tcfg.seed)
    folder = Path(data) if data else Path(shape_cfg["data"]["folder"])
    saved = cached_tensors(out / "latents.safetensors", accelerator, lambda: {
        "mu": encode_latents(vae_model, folder, int(vae_cfg["train"]["n_points"]), accelerator.device,
                             progress=progress),
        **embed_folder(tower, shape_tower, folder, n_points=shape_cfg["train"]["n_points"], progress=progress)})
    z = (saved["mu"] - mean[0].cpu()) / std[0].cpu()  # (N, 3, c', r', r'), about unit variance per channel
    surface = None
    if p.model.surface_weight > 0:
        surface = cached_tensors(out / "surface.safetensors", accelerator,
                                 lambda: near_surface_set(folder, p.model.surface_points, tcfg.seed))
    dataset = LatentTriples(z, saved["e_i"], saved["e_s"], seed=tcfg.seed, surface=surface)
    unet, model = build_unet(p)
    if surface is not None:
        model = SurfaceObjective(unet, model.scheduler, vae_model, mean, std)
    links = {"vae": {"preset": vae_cfg.get("preset"), "weights": fingerprint(vae_model.state_dict())},
             "image_tower": tower.identity(), "shape_tower": shape_cfg.get("fingerprint")}
    config = {"kind": "diffusion_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": {"folder": str(folder), "n_objects": len(dataset), "views": int(saved["e_i"].shape[1])},
              **links}
    if accelerator.is_main_process:
        n_params = sum(q.numel() for q in unet.parameters())
        print(f"train diffusion: preset {preset}, {n_params / 1e6:.2f}M params, latent {tuple(z.shape[1:])}, "
              f"{len(dataset)} objects x {saved['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
              f"device {accelerator.device}")

    def finalize(net, step, record, ema):
        write_checkpoint(out / "unet", net.unet.state_dict(),
                         {"kind": KIND, "preset": preset, "model": p.model.to_dict(),
                          "diffusion": p.diffusion.to_dict(), **links, "latent_stats": vae_cfg["latent_stats"],
                          "train": tcfg.to_dict(), "data": config["data"], "step": step}, half=half,
                         extra_weights={"ema.safetensors": ema.unet.state_dict()} if ema is not None else None)
        print(f"wrote {out / 'unet'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, unet_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train diffusion")


# ------------------------------------------------------------------------------------------ loading


def load_unet(path, device="cpu", use_ema: bool = True):
    """(TriplaneUNet in eval mode, config dict) from a checkpoint folder or Hub repo id (its EMA
    weights when it has them); the model carries its ``diffusion_cfg`` (schedule, parametrisation,
    sampler)."""
    folder = resolve_folder(path)
    check_sizes(read_config(folder).get("model"), SIZE_BOUNDS, folder / "config.json")  # before building
    model = TriplaneUNet.load(folder, device, use_ema=use_ema)
    check_sampling_record(model.checkpoint_info, model.cfg.latent_channels, folder / "config.json")
    return model, model.checkpoint_info


GUIDANCE_BOUND = 100.0  # |scale| above this only amplifies noise; the paper's best is 5


def check_sampling_record(cfg: dict, channels: int, where) -> None:
    """What a pipeline reads from a UNet config besides the model: ``latent_stats`` (a finite mean
    and a positive std per latent channel) and the optional default ``guidance`` scales (finite
    numbers, at most GUIDANCE_BOUND in size). A CheckpointError naming the field, at load time."""
    import math

    stats = cfg.get("latent_stats")
    if not isinstance(stats, dict):
        raise CheckpointError(f"{where}: no \"latent_stats\" (the latent mean and std per channel the UNet was "
                              "trained in); a UNet release folder written by `train diffusion` has them")
    for key in ("mean", "std"):
        values = stats.get(key)
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise CheckpointError(f"{where}: latent_stats.{key} must be {channels} finite numbers (one per latent "
                                  f"channel), got {str(values)[:60]}")
    if min(stats["std"]) <= 0:
        raise CheckpointError(f"{where}: latent_stats.std must be positive, got {stats['std']}")
    guidance = cfg.get("guidance") or {}
    for key, g in guidance.items():
        if key in ("image", "shape") and guidance_problem(g):
            raise CheckpointError(f"{where}: guidance.{key} must be a number in -{GUIDANCE_BOUND:g}..{GUIDANCE_BOUND:g}, "
                                  f"got {g!r}")
    problem = guidance_extras_problem(guidance.get("interval", (0.0, 1.0)), guidance.get("rescale", 0.0))
    if problem:
        raise CheckpointError(f"{where}: guidance.{problem}")


def guidance_extras_problem(interval, rescale) -> str | None:
    """What is wrong with a guidance interval (lo, hi), 0 <= lo < hi <= 1 in noise level t / T, or a
    rescale phi in [0, 1], in words starting with the field's name; None when both are right."""
    numbers = isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
    if not numbers or not 0 <= interval[0] < interval[1] <= 1:
        return f"interval must be two noise levels 0 <= lo < hi <= 1, got {interval!r:.60}"
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 <= rescale <= 1:
        return f"rescale must be a number in [0, 1], got {rescale!r:.40}"
    return None


# ------------------------------------------------------------------------------------------ dry run


def dry_run_setup(preset: str, meta: bool = False, overrides: dict | None = None):
    """The training module, step and random batches of ``train diffusion --preset``: the UNet in
    the latent space of the same preset's VAE and the same preset's towers (training/measure.py).
    ``overrides``: UNetConfig fields (e.g. ``grad_checkpoint``), applied last."""
    p = unet_preset(preset)
    ae = vae_preset(preset).model
    p.model = p.model.override(**{"latent_channels": ae.latent_channels, "latent_res": ae.latent_res,
                                  "embed_dim": embed_preset(preset).tower.embed_dim, **(overrides or {})})
    ucfg = p.model
    on = without_checkpointing(ucfg)
    unet, model = build_unet(p, meta)
    shape = (3, ucfg.latent_channels, ucfg.latent_res, ucfg.latent_res)

    def batch(n, g):
        return {"z": torch.randn(n, *shape, generator=g), "e_i": random_unit(n, ucfg.embed_dim, g),
                "e_s": random_unit(n, ucfg.embed_dim, g)}

    notes = [f"latent {'x'.join(map(str, shape))}, channels {tuple(ucfg.channels)}, "
             f"{ucfg.blocks_per_level} blocks per level, cross-attention at levels {tuple(ucfg.attn_levels)}"]
    return Setup(model, unet_step, batch, p.train, {"UNet": unet}, TriplaneUNet.checkpointed, on, 1, notes)


def guidance_problem(g) -> str | None:
    """What is wrong with a guidance scale: "type" (not a number), "range" (not finite, or
    beyond GUIDANCE_BOUND), or None."""
    import math

    if isinstance(g, bool) or not isinstance(g, (int, float)):
        return "type"
    return "range" if not math.isfinite(g) or abs(g) > GUIDANCE_BOUND else None


def check_guidance(image_guidance_scale=None, shape_guidance_scale=None) -> None:
    """Guidance scales given as arguments (None: the checkpoint's default) must pass
    ``guidance_problem``; a TypeError or ValueError naming the argument otherwise."""
    for name, g in (("image_guidance_scale", image_guidance_scale), ("shape_guidance_scale", shape_guidance_scale)):
        problem = None if g is None else guidance_problem(g)
        if problem == "type":
            raise TypeError(f"{name} must be a number, got {type(g).__name__} {g!r:.40}")
        if problem == "range":
            raise ValueError(f"{name} must be a finite number in -{GUIDANCE_BOUND:g}..{GUIDANCE_BOUND:g}, got {g}")
