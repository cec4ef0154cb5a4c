"""Stage 3, the diffusion prior: image embedding -> shape embedding (docs/paper.md §4). Its presets,
training run, loading and dry-run setup.

    compress3d-lite train prior --preset course --embed runs/embed_course --out runs/prior_course

The model and its loss are ``models/prior.py`` (``DiffusionPrior``, ``PriorConfig``); the noise
schedule and sampler are ``diffusion.py``. A run embeds the towers' training set once
(``OUT/embeddings.safetensors``) and writes ``OUT/prior``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..checkpoint import write_checkpoint
from ..data.dataset import drawn_view
from ..diffusion import make_scheduler
from ..inference.embed import embed_folder, load_towers
from ..models.prior import DiffusionPrior
from ..presets import PriorPreset, prior_preset
from ..training.loop import Objective, fit, make_accelerator
from ..training.measure import Setup, random_unit
from ..training.run_folder import cached_tensors, claim_run_folder, resume_point

log = logging.getLogger(__name__)

KIND = DiffusionPrior.kind


# ------------------------------------------------------------------------------------------ training


class EmbeddingPairs(torch.utils.data.Dataset):
    """(shape embedding, image embedding of one view) per object; the view is drawn from
    (seed, epoch, index) like every other random choice of the data pipeline."""

    def __init__(self, e_s, e_i, seed: int = 0):
        self.e_s, self.e_i, self.seed = e_s, e_i, seed  # (N, D), (N, V, D)

    def __len__(self):
        return len(self.e_s)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        return {"e_s": self.e_s[i], "e_i": self.e_i[i, v]}


def prior_step(model, batch):
    """The prior's training step: batch e_s (B, D), e_i (B, D) unit vectors -> (loss, {})."""
    return model(batch["e_s"], batch["e_i"]), {}


def build_prior(p: PriorPreset, meta: bool = False) -> tuple:
    """(DiffusionPrior, its training module) for a preset: what training and the dry run run.
    ``meta``: the network on the meta device (counted, never run)."""
    with torch.device("meta") if meta else contextlib.nullcontext():
        prior = DiffusionPrior(p.model, p.diffusion)
    return prior, Objective("prior", prior, make_scheduler(p.diffusion, "ddpm"))


def train_prior(preset: str, out, embed: str, data: str | None = None, resume: bool = False,
                train_overrides: dict | None = None, half: bool = False, progress: bool = True,
                stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Train the prior e_i -> e_s on embeddings of a data set made by the towers in ``embed`` (a
    ``train embed`` output folder); the embeddings are computed once and cached in
    ``out/embeddings.safetensors``. Writes ``out/prior``."""
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless overwrite
    p = prior_preset(preset, train=train_overrides)
    tcfg = p.train
    accelerator = make_accelerator(tcfg)
    tower, shape_tower, shape_cfg = load_towers(embed, device=accelerator.device)
    p.model.embed_dim = tower.cfg.embed_dim  # the prior lives in the towers' space
    model_cfg = {"prior": p.model.to_dict(), "diffusion": p.diffusion.to_dict()}
    start = 0
    if resume:
        start, tcfg, data = resume_point(out, "prior_training", preset, model_cfg, tcfg, train_overrides, data,
                                         release="prior")
    torch.manual_seed(tcfg.seed)
    # the prior learns on the objects the towers learned on, unless told otherwise
    folder = Path(data) if data else Path(shape_cfg["data"]["folder"])
    emb = cached_tensors(out / "embeddings.safetensors", accelerator, lambda: embed_folder(
        tower, shape_tower, folder, n_points=shape_cfg["train"]["n_points"], progress=progress))
    dataset = EmbeddingPairs(emb["e_s"], emb["e_i"], seed=tcfg.seed)
    prior, model = build_prior(p)
    identity = tower.identity()
    config = {"kind": "prior_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": {"folder": str(folder), "n_objects": len(dataset), "views": int(emb["e_i"].shape[1])},
              "image_tower": identity}
    if accelerator.is_main_process:
        n_params = sum(q.numel() for q in prior.parameters())
        log.info(f"train prior: preset {preset}, {n_params / 1e6:.2f}M params, image tower {identity['name']}, "
                 f"{len(dataset)} objects x {emb['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
                 f"device {accelerator.device}")

    def finalize(net, step, record, ema):
        write_checkpoint(out / "prior", net.prior.state_dict(),
                         {"kind": KIND, "preset": preset, "model": p.model.to_dict(),
                          "diffusion": p.diffusion.to_dict(), "image_tower": identity,
                          "shape_tower": shape_cfg.get("fingerprint"), "train": tcfg.to_dict(),
                          "data": config["data"], "step": step}, half=half,
                         extra_weights={"ema.safetensors": ema.prior.state_dict()} if ema is not None else None)
        log.info(f"wrote {out / 'prior'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator=accelerator, model=model, dataset=dataset, step_fn=prior_step, train=tcfg, out=out,
               config=config, start=start, resume=resume, finalize=finalize, progress=progress,
               stop_after=stop_after, desc="train prior")


# ------------------------------------------------------------------------------------------ dry run


def dry_run_setup(preset: str, meta: bool = False, overrides: dict | None = None):
    """The training module, step and random batches of ``train prior --preset`` (training/measure.py).
    ``overrides``: PriorConfig fields."""
    p = prior_preset(preset, overrides)
    prior, model = build_prior(p, meta)

    def batch(n, g):
        return {"e_s": random_unit(n, p.model.embed_dim, g), "e_i": random_unit(n, p.model.embed_dim, g)}

    notes = [f"embedding dim {p.model.embed_dim}, width {p.model.width}, {p.model.depth} blocks"]
    return Setup(model, prior_step, batch, p.train, {"prior": prior}, (), False, 1, notes)
