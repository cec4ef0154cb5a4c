"""Stage 2, the image and shape embeddings (docs/paper.md §3): presets, the contrastive training
run, loading the towers (with the check that they belong together), embedding images, points,
meshes and whole data folders, and the dry-run setup.

    compress3d-lite train embed --preset course --out runs/embed_course     # ~16 min on 2 CPU cores
    tower, shape_tower, _ = load_towers(shipped_checkpoint("embed_course"))
    e_i = embed_images(tower, ["photo.png"])                                # (1, D) unit
    e_s = embed_points(shape_tower, points, colors)                         # (B, D) unit

The models are ``models/image_tower.py`` (open_clip), ``models/shape_tower.py`` (PointNet) and
``models/contrastive.py`` (InfoNCE and the two training modules). A run writes
``OUT/shape_tower`` and, for a tower trained here, ``OUT/image_tower``.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from ..checkpoint import write_checkpoint
from ..data.dataset import ObjectDataset, drawn_view
from ..inference.embed import embed_folder
from ..models.contrastive import FrozenTowerAligner, ShapeImageAligner
from ..models.image_tower import ImageTower, ImageTowerConfig
from ..models.shape_tower import ShapeTower
from ..presets import embed_preset
from ..training.loop import fit, make_accelerator
from ..training.measure import Setup, random_points, random_unit, step_flops
from ..training.run_folder import cached_tensors, claim_run_folder, data_config, prepare_data, resume_point

log = logging.getLogger(__name__)

BIG_TOWER = 1e9  # in a dry run, image towers above this many parameters stay on the meta device


# ------------------------------------------------------------------------------------------ training


class PointsAndViewEmbedding(torch.utils.data.Dataset):
    """An object's points/colours (drawn as in ObjectDataset) and the precomputed image embedding
    of one of its views (drawn from (seed, epoch, index), like every other random choice)."""

    def __init__(self, objects, e_i, seed: int = 0):
        self.objects, self.e_i, self.seed = objects, e_i, seed  # ObjectDataset, (N, V, D)

    def __len__(self):
        return len(self.objects)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        item = self.objects[key]
        return {"points": item["points"], "colors": item["colors"], "e_i": self.e_i[i, v]}


def embed_step(model, batch):
    """The towers' training step: InfoNCE between the shape embeddings of ``points``/``colors``
    (B, N, 3) and the image embeddings of one view per object -- the RGBA view ``image``
    (B, 4, H, W) through a tower trained jointly, or the precomputed ``e_i`` (B, D) of a frozen one."""
    first = batch["e_i"] if "e_i" in batch else batch["image"]
    loss, e_i, e_s, scale = model(first, batch["points"], batch["colors"])
    acc = ((e_s @ e_i.t()).argmax(dim=1) == torch.arange(len(e_s), device=e_s.device)).float().mean()
    return loss, {"batch_top1": acc, "temperature": 1 / scale.exp()}


def train_embed(preset: str, out, data: str | None = None, resume: bool = False, image_tower: str | None = None,
                train_overrides: dict | None = None, half: bool = False, progress: bool = True,
                stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Align a shape tower to an image tower with InfoNCE (OpenShape's recipe).

    A pretrained tower (``colab_t4``, ``a100_full``) is frozen: it embeds every view once (cached
    in ``out/image_embeddings.safetensors``) and is then dropped; only the shape tower trains.
    ``lite`` and ``course`` train a small open_clip ViT from scratch jointly with the shape tower
    on toy renders (offline). Writes ``out/shape_tower`` and, for a tower trained here,
    ``out/image_tower``; each records the identity of the image tower (docs/design.md §6)."""
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless overwrite
    p = embed_preset(preset, image_tower, train_overrides)
    tower_cfg, shape_cfg, tcfg, frozen = p.tower, p.shape_tower, p.train, p.frozen
    model_cfg = {"image_tower": tower_cfg.to_dict(), "frozen": frozen, "shape_tower": shape_cfg.to_dict()}
    start = 0
    if resume:
        start, tcfg, data = resume_point(out, "embed_training", preset, model_cfg, tcfg, train_overrides, data,
                                         release="shape_tower")
    accelerator = make_accelerator(tcfg)
    torch.manual_seed(tcfg.seed)
    tower = ImageTower.pretrained(tower_cfg) if tower_cfg.pretrained else ImageTower(tower_cfg)
    identity, n_img = tower.identity(), sum(q.numel() for q in tower.parameters())
    folder = prepare_data(data, out, tcfg, accelerator, views=8, resolution=max(64, tower_cfg.image_size))
    if frozen:  # embed every view once with the fixed tower, then train without it
        objects = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=0, seed=tcfg.seed)
        emb = cached_tensors(out / "image_embeddings.safetensors", accelerator,
                             lambda: {"e_i": embed_folder(tower.to(accelerator.device).eval(), None, folder, 1,
                                                           progress)["e_i"]})
        tower = None  # free its memory: training never needs it again
        dataset = PointsAndViewEmbedding(objects, emb["e_i"], seed=tcfg.seed)
        model = FrozenTowerAligner(ShapeTower(shape_cfg))
    else:
        objects = dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=0, seed=tcfg.seed, views="one")
        model = ShapeImageAligner(tower, ShapeTower(shape_cfg), frozen)
    config = {"kind": "embed_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": data_config(folder, objects)}
    if accelerator.is_main_process:
        n_shape = sum(q.numel() for q in model.shape_tower.parameters())
        how = (f"frozen, embeddings of all {emb['e_i'].shape[1]} views precomputed" if frozen
               else "trained from scratch")
        log.info(f"train embed: preset {preset}, image tower {tower_cfg.name} ({n_img / 1e6:.2f}M params, {how}), "
                 f"shape tower {n_shape / 1e6:.2f}M params, {len(dataset)} objects, steps {start} -> {tcfg.steps}, "
                 f"device {accelerator.device}")

    def finalize(net, step, record, ema):
        common = {"preset": preset, "train": tcfg.to_dict(), "data": config["data"], "step": step}
        if not frozen:
            write_checkpoint(out / "image_tower", net.image_tower.state_dict(),
                             {"kind": "image_tower", "model": tower_cfg.to_dict(),
                              "identity": net.image_tower.identity(), **common}, half=half)
        write_checkpoint(out / "shape_tower", net.shape_tower.state_dict(),
                         {"kind": "shape_tower", "model": shape_cfg.to_dict(),
                          "image_tower": identity if frozen else net.image_tower.identity(),
                          "temperature": net.loss_fn.temperature, **common}, half=half)
        log.info(f"wrote {out / 'shape_tower'}{'' if frozen else ' and ' + str(out / 'image_tower')} (step {step}, "
                 f"final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator=accelerator, model=model, dataset=dataset, step_fn=embed_step, train=tcfg, out=out,
               config=config, start=start, resume=resume, finalize=finalize, progress=progress,
               stop_after=stop_after, desc="train embed")


# ------------------------------------------------------------------------------------------ dry run


def probe_tower(cfg: ImageTowerConfig, on_meta: bool) -> dict:
    """A frozen tower's precompute cost: parameters, weight bytes and forward FLOPs per view,
    traced on the meta device for a big tower, else run once on a random view with random init."""
    t0 = time.perf_counter()
    tower = ImageTower.architecture(cfg, meta=on_meta)
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size, device="meta" if on_meta else "cpu")
    with torch.no_grad(), step_flops() as flops:
        tower(x)
    n = sum(q.numel() for q in tower.parameters())
    return {"arch": cfg.arch, "params": n, "weights_bytes": 4 * n, "flops_per_view": flops["total"],
            "device": "meta" if on_meta else "cpu", "seconds": time.perf_counter() - t0,
            "how": ("built on the meta device (random init on the CPU would need "
                    f"{4 * n / 2**30:.1f} GiB for the visual tower alone): counted and traced, never run")
            if on_meta else "built with random init and run once on a random view"}


def dry_run_setup(preset: str, meta: bool = False, overrides: dict | None = None):
    """The training module, step and random batches of ``train embed --preset`` (training/measure.py).
    ``overrides``: ``image_tower`` (a name) and ShapeTowerConfig fields. A pretrained tower is
    built with random init."""
    overrides = dict(overrides or {})
    p = embed_preset(preset, overrides.pop("image_tower", None))
    p.shape_tower = p.shape_tower.override(**overrides)
    tower_cfg, shape_cfg, tcfg, D = p.tower, p.shape_tower, p.train, p.tower.embed_dim
    notes, extra = [], {}
    if p.frozen:  # OpenShape's recipe: the tower embeds every view once; training sees the embeddings
        tower = ImageTower.architecture(tower_cfg, meta=True)
        n_tower = sum(q.numel() for q in tower.parameters())
        extra["image_tower"] = probe_tower(tower_cfg, on_meta=meta or n_tower > BIG_TOWER)
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = FrozenTowerAligner(ShapeTower(shape_cfg))
        parts = {f"image tower {tower_cfg.name} (frozen, precomputed)": tower, "shape tower": model.shape_tower,
                 "temperature": model.loss_fn}
        notes.append(f"image tower {tower_cfg.arch} built with random init ({tower_cfg.pretrained} weights are "
                     "not downloaded); frozen: its embeddings of all views are computed once before training, "
                     "so the step below trains the shape tower against random unit image embeddings")

        def batch(n, g):
            return {**random_points(n, tcfg.n_points, g), "e_i": random_unit(n, D, g)}
    else:
        with torch.device("meta") if meta else contextlib.nullcontext():
            tower = ImageTower(tower_cfg)
            model = ShapeImageAligner(tower, ShapeTower(shape_cfg), False)
        parts = {f"image tower {tower_cfg.name} (trained)": tower, "shape tower": model.shape_tower,
                 "temperature": model.loss_fn}
        size = max(64, tower_cfg.image_size)  # what train embed renders

        def batch(n, g):
            return {**random_points(n, tcfg.n_points, g), "image": torch.rand(n, 4, size, size, generator=g)}
    return Setup(model, embed_step, batch, tcfg, parts, (), False, 2, notes, extra)
