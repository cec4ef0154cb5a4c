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
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import write_checkpoint
from ..data.dataset import drawn_view
from ..data.io import load_object, read_index
from ..diffusion import clean_estimate, make_scheduler
from ..inference.embed import embed_folder, load_towers
from ..inference.vae import encode_latents, latent_stats, load_vae
from ..models.image_tower import fingerprint
from ..models.triplane_unet import TriplaneUNet
from ..presets import UNetPreset, embed_preset, unet_preset, vae_preset
from ..training.loop import Objective, fit, make_accelerator
from ..training.measure import Setup, random_unit, without_checkpointing
from ..training.run_folder import TrainingError, cached_tensors, claim_run_folder, resume_point

log = logging.getLogger(__name__)

KIND = TriplaneUNet.kind


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
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless overwrite
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
        log.info(f"train diffusion: preset {preset}, {n_params / 1e6:.2f}M params, latent {tuple(z.shape[1:])}, "
                 f"{len(dataset)} objects x {saved['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
                 f"device {accelerator.device}")

    def finalize(net, step, record, ema):
        write_checkpoint(out / "unet", net.unet.state_dict(),
                         {"kind": KIND, "preset": preset, "model": p.model.to_dict(),
                          "diffusion": p.diffusion.to_dict(), **links, "latent_stats": vae_cfg["latent_stats"],
                          "train": tcfg.to_dict(), "data": config["data"], "step": step}, half=half,
                         extra_weights={"ema.safetensors": ema.unet.state_dict()} if ema is not None else None)
        log.info(f"wrote {out / 'unet'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator=accelerator, model=model, dataset=dataset, step_fn=unet_step, train=tcfg, out=out,
               config=config, start=start, resume=resume, finalize=finalize, progress=progress,
               stop_after=stop_after, desc="train diffusion")


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


