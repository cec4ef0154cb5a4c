"""Mixed precision checked on any machine: a few training steps of every stage at a GPU preset's
precision setting, model sizes shrunk, then a sampling pass under autocast; every loss and every
output must be finite, and the 16-bit kernels must really have run.

    compress3d-lite train precision-check                                     # CPU: bf16
    compress3d-lite train precision-check --device cuda --precision fp16 bf16

What a training step runs is what ``fit`` runs (training/loop.py: ``TrainingStep``): the stage's training module and
step function from its ``dry_run_setup`` at the preset, accelerate's Accelerator with the mixed
precision, AdamW with the preset's clipping and schedule, and the EMA when the preset keeps one.
The data is random, of the right shapes; gradient checkpointing is on where a stage has it.
``shrink`` makes the models small while keeping each
preset's structure: its encoder/UNet levels, blocks per level, attention levels, gradient
checkpointing, embedding width, and a frozen (precomputed) or trained image tower.

The sampling pass, under ``torch.autocast``: the VAE encodes a point cloud, decodes the triplane
and queries the fields on a grid; an open_clip VisionTransformer of the preset's image size and
embedding width embeds an image and the shape tower a point cloud; the prior and the UNet sample
with guidance (DDIM, a few steps).

Precisions: CUDA runs fp16 (with accelerate's gradient scaler) and bf16. A CPU has bf16 autocast
only -- accelerate runs an "fp16" run on a CPU in fp32 without a word -- so on a CPU the fp16
presets (``colab_t4``) are checked in bf16, which exercises the same autocast code paths.
"""

from __future__ import annotations

import time

import torch

from ..config import STAGE_NAMES
from ..diffusion import sample
from ..mesh import query_points
from ..models.image_tower import ImageTower, ImageTowerConfig
from ..presets import embed_preset, unet_preset, vae_preset
from ..training.loop import TrainingStep, make_accelerator
from ..training.measure import random_points, random_unit
from .dry_run import setup

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # config.PRECISIONS


def shrink(stage: str, preset: str) -> dict:
    """Overrides for ``dry_run_setup(stage, preset)``: small widths and resolutions, the preset's
    structure kept (levels, blocks, attention levels, checkpointing, embedding width)."""
    if stage == "ae":
        m = vae_preset(preset).model
        levels = len(m.enc_channels)
        return {"point_dim": 16, "volume_res": 8 * 2 ** (levels - 1), "plane_channels": 8,
                "enc_channels": tuple(8 * 2 ** i for i in range(levels)),
                "dec_channels": tuple(8 * 2 ** i for i in reversed(range(levels))),
                "latent_res": 8, "latent_channels": 4, "attn_res": 8, "attn_heads": 2, "head_hidden": 16}
    if stage == "embed":
        return {"width": 16, "hidden": 32, "pool_res": 8}
    if stage == "prior":
        return {"width": 64, "depth": 2, "time_dim": 32}
    if stage == "diffusion":
        m = unet_preset(preset).model
        return {"latent_channels": 4, "latent_res": 8, "channels": tuple(16 * (i + 1) for i in range(len(m.channels))),
                "heads": 2, "time_dim": 32}
    raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGE_NAMES)}")


class _KernelDtypes:
    """Counts the output dtypes of every Linear / Conv / attention projection while active: proof
    that autocast ran the 16-bit kernels (accelerate returns fp32 from the outer forward)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.seen, self.hooks = model, {}, []

    def __enter__(self):
        def hook(module, args, out):
            if torch.is_tensor(out):
                self.seen[str(out.dtype)] = self.seen.get(str(out.dtype), 0) + 1

        kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
        self.hooks = [m.register_forward_hook(hook) for m in self.model.modules() if isinstance(m, kinds)]
        return self.seen

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def train_steps(stage: str, preset: str, precision: str | None = None, device: str = "cpu", steps: int = 3,
                batch: int = 2, grad_checkpoint: bool = True) -> dict:
    """``steps`` training steps of ``stage`` at ``preset``'s structure, shrunk, in ``precision``
    (None: the preset's; on a CPU bf16 -- a CPU has no fp16 autocast for training), with gradient
    checkpointing where the stage has it (``--grad-checkpoint``; recomputation under autocast is
    where dtype bugs hide): {"losses", "kernel_dtypes", "ema", "model", "precision",
    "preset_precision", "grad_checkpoint"}."""
    torch.manual_seed(0)  # the random init: the same numbers on every run
    s = setup(stage, preset, overrides=shrink(stage, preset))
    preset_precision = s.tcfg.mixed_precision
    precision = precision or ("bf16" if device == "cpu" else preset_precision)
    tcfg = s.tcfg.override(mixed_precision=precision)
    accelerator = make_accelerator(tcfg, cpu=device == "cpu")
    model = s.model.train()
    if grad_checkpoint:  # what --grad-checkpoint turns on: recompute under autocast in the backward pass
        for m in model.modules():
            for owner in (m, getattr(m, "cfg", None)):
                if hasattr(owner, "grad_checkpoint"):
                    owner.grad_checkpoint = True
    step = TrainingStep(accelerator, model, tcfg)
    g = torch.Generator().manual_seed(0)
    losses = []
    with _KernelDtypes(step.model) as seen:
        for _ in range(steps):
            data = {k: v.to(accelerator.device) for k, v in s.batch(max(batch, s.measure_batch), g).items()}
            loss, _ = s.step_fn(step.model, data)
            step(loss)
            losses.append(loss.item())
    ema_finite = None if step.ema is None else all(torch.isfinite(p).all().item() for p in step.ema.parameters())
    return {"losses": losses, "kernel_dtypes": dict(seen), "ema": ema_finite,
            "model": accelerator.unwrap_model(step.model).eval(), "grad_checkpoint": grad_checkpoint and bool(s.blocks),
            "precision": precision, "preset_precision": preset_precision}


@torch.no_grad()
def sampling_pass(stage: str, preset: str, model: torch.nn.Module, dtype, device: str = "cpu") -> dict:
    """The stage's inference under ``torch.autocast(device, dtype)``: {name: finite?} and the
    output dtypes of its kernels."""
    g = torch.Generator().manual_seed(1)
    out = {}
    with _KernelDtypes(model) as seen, torch.autocast(device_type=device.split(":")[0], dtype=dtype):
        if stage == "ae":
            pts = {k: v.to(device) for k, v in random_points(1, 1024, g).items()}
            mu, logvar = model.encode(pts["points"], pts["colors"])
            planes = model.decode(mu)  # (1, 3, C, r, r)
            c = torch.linspace(-0.9, 0.9, 6)
            xyz = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
            logits, rgb = query_points(model, planes, xyz.numpy())
            out = {"latent": torch.isfinite(mu).all().item() and torch.isfinite(logvar).all().item(),
                   "planes": torch.isfinite(planes).all().item(),
                   "fields": bool(torch.isfinite(torch.from_numpy(logits)).all() and (rgb >= 0).all())}
        elif stage == "embed":
            t = embed_preset(preset).tower  # the preset's tower class and sizes, shrunk in depth and width
            tower = ImageTower(ImageTowerConfig(name="shrunk", embed_dim=t.embed_dim, image_size=t.image_size,
                                                patch_size=32, width=32, layers=2, heads=2)).to(device).eval()
            e_i = tower(torch.randn(2, 3, t.image_size, t.image_size, generator=g).to(device))
            pts = {k: v.to(device) for k, v in random_points(2, 512, g).items()}
            e_s = model.shape_tower(pts["points"], pts["colors"])
            out = {"image_embedding": torch.isfinite(e_i).all().item(),
                   "shape_embedding": torch.isfinite(e_s).all().item()
                   and torch.allclose(e_s.float().norm(dim=-1), torch.ones(2, device=device), atol=1e-2)}
        elif stage == "prior":
            prior = model.prior
            e_i = random_unit(2, prior.cfg.embed_dim, g).to(device)
            e_s = prior.sample(e_i, guidance=2.0, steps=4, sampler="ddim", generator=g)
            out = {"shape_embedding": torch.isfinite(e_s).all().item()}
        elif stage == "diffusion":
            unet = model.unet
            c = unet.cfg
            e_i, e_s = (random_unit(2, c.embed_dim, g).to(device) for _ in range(2))
            z = sample(lambda x, t: unet.guided(x, t, e_i, e_s, 2.0, 1.0),
                       (2, 3, c.latent_channels, c.latent_res, c.latent_res), unet.diffusion_cfg, steps=4,
                       sampler="ddim", generator=g, device=device)
            out = {"latent": torch.isfinite(z).all().item()}
    return {"finite": out, "kernel_dtypes": dict(seen)}


def check(stage: str, preset: str, precision: str | None = None, device: str = "cpu", steps: int = 3) -> dict:
    """Train ``steps`` steps and sample once; ``precision`` defaults to the preset's, or bf16 on a
    CPU. The result's ``ok`` is True when losses and outputs are finite and 16-bit kernels ran."""
    t0 = time.perf_counter()
    r = train_steps(stage, preset, "bf16" if device == "cpu" else precision, device, steps)
    s = sampling_pass(stage, preset, r.pop("model"), DTYPES[r["precision"]], device)
    half = str(DTYPES[r["precision"]])
    ok = (all(map(lambda x: x == x and abs(x) != float("inf"), r["losses"])) and r["ema"] is not False
          and all(s["finite"].values()) and r["kernel_dtypes"].get(half, 0) > 0 and s["kernel_dtypes"].get(half, 0) > 0)
    return {"stage": stage, "preset": preset, "device": device, **r, "sampling": s, "ok": ok,
            "seconds": round(time.perf_counter() - t0, 2)}
