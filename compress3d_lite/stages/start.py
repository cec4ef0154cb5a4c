"""The triplane UNet's start estimate (our addition; models/start_estimate.py, docs/stages.md
"A start from a regression"): fitting it, the ``train start`` command's work on a finished
diffusion run, loading it beside its UNet, and the checks of a pipeline call that asks for it.

    compress3d-lite train start --run runs/unet_course --half     # writes runs/unet_course/unet/start

The estimate is fitted with MSE on the normalised latents and embeddings the UNet's run cached
(``RUN/latents.safetensors``); the bounds' regression row (evaluation/bounds.py) is the same fit.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..checkpoint import read_config, write_checkpoint
from ..inference.unet import START_FOLDER
from ..inference.vae import latent_stats
from ..models.image_tower import fingerprint
from ..models.start_estimate import StartConfig, StartEstimate
from ..models.triplane_unet import TriplaneUNet
from ..training.run_folder import TrainingError


def fit_start(z: torch.Tensor, e_i: torch.Tensor, e_s: torch.Tensor, steps: int = 1500, batch: int = 64,
              lr: float = 1e-3, seed: int = 0, strength: float = 0.5) -> tuple:
    """A StartEstimate (models/start_estimate.py) fitted with MSE to normalised latents z (N, 3, c',
    r', r') from e_i (N, D), or (N, V, D) with a random view per draw, and e_s (N, D); AdamW with a
    cosine schedule. Returns (model in eval mode, final batch loss)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = StartEstimate(StartConfig(embed_dim=e_s.shape[1], latent_channels=z.shape[2], latent_res=z.shape[3],
                                      strength=strength))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(z), (batch,), generator=g)
        image = e_i[idx] if e_i.dim() == 2 else e_i[idx, torch.randint(0, e_i.shape[1], (batch,), generator=g)]
        loss = F.mse_loss(model(image, e_s[idx]), z[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), loss.item()


def train_start(run, steps: int = 1500, strength: float = 0.5, seed: int = 0, overwrite: bool = False,
                half: bool = False) -> dict:
    """Fit a UNet's StartEstimate on the latents and embeddings its `train diffusion` run cached
    (``run/latents.safetensors``, normalised with ``run/unet``'s latent statistics) and write it to
    ``run/unet/start`` (``half``: the weights in fp16). Returns {"folder", "final_loss", "seconds"}."""
    run = Path(run)
    unet_folder, cache = run / "unet", run / "latents.safetensors"
    if not cache.is_file() or not (unet_folder / "config.json").is_file():
        raise TrainingError(f"{run}: not a finished `train diffusion` run folder (it needs latents.safetensors "
                            "and unet/)")
    out = unet_folder / START_FOLDER
    if out.exists() and not overwrite:
        raise TrainingError(f"{out}: exists; overwrite=True replaces it")
    cfg = read_config(unet_folder)
    saved = load_file(str(cache))
    mean, std = latent_stats(cfg)
    z = (saved["mu"] - mean[0]) / std[0]  # (N, 3, c', r', r')
    model_cfg = cfg["model"]
    if tuple(z.shape[1:]) != (3, model_cfg["latent_channels"], model_cfg["latent_res"], model_cfg["latent_res"]):
        raise TrainingError(f"{cache}: latents of shape {tuple(z.shape[1:])}, not those of {unet_folder}")
    t0 = time.perf_counter()
    model, final = fit_start(z, saved["e_i"], saved["e_s"], steps, seed=seed, strength=strength)
    model.checkpoint_info = {"unet": {"weights": fingerprint(TriplaneUNet.load(unet_folder).state_dict())},
                             "train": {"steps": steps, "seed": seed, "final_loss": round(final, 5),
                                       "n_objects": len(z), "data": cfg.get("data")}}
    write_checkpoint(out, model.state_dict(), model.checkpoint_config(), half=half)  # atomic: a new folder renamed into place
    return {"folder": str(out), "final_loss": final, "seconds": time.perf_counter() - t0}


