"""Stage 1, the triplane VAE (docs/paper.md §2): its presets, its training step and run, how it is
saved and loaded, reconstructing a mesh file through it, and its dry-run setup.

    compress3d-lite train ae --preset course --out runs/vae_course      # ~30 min on 2 CPU cores
    compress3d-lite train ae --preset a100_full --dry-run                # what the paper scale costs
    compress3d-lite reconstruct Duck.glb -o duck_vae.glb                 # the shipped course VAE

The model is ``models/autoencoder.py`` (``TriplaneVAE``, ``AEConfig``). A run writes
``OUT/model`` (weights + config.json with the latent mean/std that stage 4 normalises with).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ..checkpoint import write_checkpoint
from ..data.dataset import ObjectDataset
from ..inference.vae import encode_latents
from ..models.autoencoder import AEConfig, TriplaneVAE
from ..presets import vae_preset
from ..training.loop import fit, make_accelerator
from ..training.measure import Setup, random_points, without_checkpointing
from ..training.run_folder import claim_run_folder, data_config, prepare_data, resume_point

log = logging.getLogger(__name__)

KIND = TriplaneVAE.kind


# ------------------------------------------------------------------------------------------ training


def vae_step(mcfg: AEConfig):
    """The VAE's training step ``(model, batch) -> (loss, logs)`` (docs/paper.md §2.6, §2.8): field
    losses + KL, plus the render losses when ``mcfg.render_loss``. batch: points, colors (B, N, 3),
    occ_points (B, M, 3), occ_labels (B, M) (and the views for the render losses)."""
    def step_fn(model, batch):
        views = tuple(batch[k] for k in ("images", "depths", "cam2world", "intrinsics")) if mcfg.render_loss else None
        o = model(batch["points"], batch["colors"], batch["occ_points"], batch["occ_labels"], views=views)
        acc = ((o.occ_logits.detach() > 0) == (batch["occ_labels"] > 0.5)).float().mean()
        return o.loss, {"occ_bce": o.occ_loss.detach(), "color_l1": o.color_loss.detach(), "kl": o.kl.detach(),
                        "occ_acc": acc, **{f"render_{k}": v.detach() for k, v in o.render.items()}}
    return step_fn


def latent_statistics(mu: torch.Tensor) -> dict:
    """Per-channel mean/std of posterior means (n, 3, c', r', r'): what stage 4 normalises with
    (docs/design.md §3.1); stored in the VAE's config.json as ``latent_stats``."""
    return {"mean": mu.mean(dim=(0, 1, 3, 4)).tolist(), "std": mu.std(dim=(0, 1, 3, 4)).clamp_min(1e-6).tolist(),
            "n_objects": len(mu)}


def train_vae(preset: str, out, data: str | None = None, resume: bool = False, overrides: dict | None = None,
              train_overrides: dict | None = None, half: bool = False, progress: bool = True,
              stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Train (or resume) a triplane VAE; writes ``out/model``. Returns the last log record.

    ``overrides`` / ``train_overrides``: AEConfig / TrainConfig fields. ``stop_after``: stop at that
    step with a training checkpoint, as an interrupted run would (``resume=True`` continues exactly)."""
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless overwrite
    p = vae_preset(preset, overrides, train_overrides)
    mcfg, tcfg = p.model, p.train
    start = 0
    if resume:
        start, tcfg, data = resume_point(out, KIND, preset, mcfg.to_dict(), tcfg, train_overrides, data,
                                         release="model")
    accelerator = make_accelerator(tcfg)
    torch.manual_seed(tcfg.seed)
    folder = prepare_data(data, out, tcfg, accelerator, views=4 if mcfg.render_loss else 0)
    dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=tcfg.n_occ, seed=tcfg.seed,
                            views=mcfg.render_loss)
    model = TriplaneVAE(mcfg)
    config = {"kind": KIND, "preset": preset, "model": mcfg.to_dict(), "train": tcfg.to_dict(),
              "data": data_config(folder, dataset)}
    if accelerator.is_main_process:
        n_params = sum(q.numel() for q in model.parameters())
        log.info(f"train ae: preset {preset}, {n_params / 1e6:.2f}M params, attention {'on' if mcfg.attn else 'off'}, "
                 f"{len(dataset)} objects, steps {start} -> {tcfg.steps}, device {accelerator.device}")

    def finalize(net, step, record, ema):
        stats = latent_statistics(encode_latents(net, folder, tcfg.n_points, accelerator.device, limit=64))
        write_checkpoint(out / "model", net.state_dict(), {**config, "step": step, "latent_stats": stats}, half=half)
        log.info(f"wrote {out / 'model'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator=accelerator, model=model, dataset=dataset, step_fn=vae_step(mcfg), train=tcfg, out=out,
               config=config, start=start, resume=resume, finalize=finalize, progress=progress,
               stop_after=stop_after, desc="train ae")


# ------------------------------------------------------------------------------------------ dry run


def dry_run_setup(preset: str, meta: bool = False, overrides: dict | None = None):
    """The training module, step and random batches of ``train ae --preset`` (training/measure.py)."""
    p = vae_preset(preset, overrides)
    mcfg, tcfg = p.model, p.train
    if mcfg.render_loss:
        raise ValueError("the dry run does not cover `render_loss=True` (it needs rendered views and cameras)")
    on = without_checkpointing(mcfg)
    with torch.device("meta") if meta else contextlib.nullcontext():
        vae = TriplaneVAE(mcfg)

    def batch(n, g):
        return {**random_points(n, tcfg.n_points, g),
                "occ_points": torch.rand(n, tcfg.n_occ, 3, generator=g) * 2 - 1,
                "occ_labels": (torch.rand(n, tcfg.n_occ, generator=g) < 0.3).float()}

    notes = [f"r = {mcfg.volume_res}, latent 3x{mcfg.latent_channels}x{mcfg.latent_res}x{mcfg.latent_res}, "
             f"r'' = {mcfg.attn_res}, {tcfg.n_points} points + {tcfg.n_occ} occupancy queries per object"]
    return Setup(vae, vae_step(mcfg), batch, tcfg, {"triplane VAE": vae}, TriplaneVAE.checkpointed, on, 1, notes)
