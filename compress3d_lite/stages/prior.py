"""Stage 3, the diffusion prior: image embedding -> shape embedding (docs/paper.md §4). Its presets,
training run, loading and dry-run setup.

    compress3d-lite train prior --preset course --embed runs/embed_course --out runs/prior_course

The model and its loss are ``models/prior.py`` (``DiffusionPrior``, ``PriorConfig``); the noise
schedule and sampler are ``diffusion.py``. A run embeds the towers' training set once
(``OUT/embeddings.safetensors``) and writes ``OUT/prior``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import read_config, resolve_folder, write_checkpoint
from ..config import Config, check_sizes, choose_preset, preset_bounds
from ..data.dataset import drawn_view
from ..diffusion import DiffusionConfig, make_scheduler
from ..models.prior import DiffusionPrior, PriorConfig
from ..training.loop import Objective, TrainConfig, cached_tensors, fit, make_accelerator
from ..training.run_folder import claim_run_folder, resume_point
from ..training.measure import Setup, random_unit
from .embed import check_tower, embed_folder, load_towers

KIND = DiffusionPrior.kind


# ------------------------------------------------------------------------------------------ presets


@dataclass
class PriorPreset(Config):
    """A prior run: the MLP, its noise schedule and sampler (x0-prediction), the training run."""

    model: PriorConfig
    train: TrainConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


PRESETS = {
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


SIZE_BOUNDS = preset_bounds(p.model for p in PRESETS.values())  # what a loaded config.json may ask for


def prior_preset(name: str, model: dict | None = None, train: dict | None = None) -> PriorPreset:
    """A copy of the named preset with validated changes to its PriorConfig / TrainConfig."""
    return choose_preset(PRESETS, name, "prior").override(model=model or {}, train=train or {})


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
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless --overwrite
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
        print(f"train prior: preset {preset}, {n_params / 1e6:.2f}M params, image tower {identity['name']}, "
              f"{len(dataset)} objects x {emb['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
              f"device {accelerator.device}")

    def finalize(net, step, record, ema):
        write_checkpoint(out / "prior", net.prior.state_dict(),
                         {"kind": KIND, "preset": preset, "model": p.model.to_dict(),
                          "diffusion": p.diffusion.to_dict(), "image_tower": identity,
                          "shape_tower": shape_cfg.get("fingerprint"), "train": tcfg.to_dict(),
                          "data": config["data"], "step": step}, half=half,
                         extra_weights={"ema.safetensors": ema.prior.state_dict()} if ema is not None else None)
        print(f"wrote {out / 'prior'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, prior_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train prior")


# ------------------------------------------------------------------------------------------ loading


def load_prior(path, image_tower=None, device="cpu", use_ema: bool = True):
    """(DiffusionPrior, config) from a checkpoint folder or Hub repo id (its EMA weights when it has
    them); with ``image_tower`` given, refuses a prior trained in another tower's space."""
    folder = resolve_folder(path)
    cfg = read_config(folder)
    check_sizes(cfg.get("model"), SIZE_BOUNDS, Path(folder) / "config.json")  # before building
    if cfg.get("kind") == KIND and image_tower is not None:  # before building: the cheaper refusal
        check_tower(path, cfg.get("image_tower"), image_tower)
    model = DiffusionPrior.load(folder, device, use_ema=use_ema)
    return model, model.checkpoint_info


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
