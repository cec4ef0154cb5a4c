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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, read_config, resolve_folder, write_checkpoint
from ..config import Config, ConfigError, check_sizes, choose_preset, preset_bounds
from ..data.dataset import ObjectDataset, drawn_view
from ..data.images import load_image
from ..data.surface import ColoredMesh
from ..models.contrastive import FrozenTowerAligner, ShapeImageAligner
from ..models.image_tower import IMAGE_TOWERS, ImageTower, ImageTowerConfig, fingerprint
from ..models.shape_tower import ShapeTower, ShapeTowerConfig
from ..training.loop import TrainConfig, cached_tensors, fit, make_accelerator
from ..training.run_folder import claim_run_folder, data_config, prepare_data, resume_point
from ..training.measure import Setup, random_points, random_unit, step_flops

BIG_TOWER = 1e9  # in a dry run, image towers above this many parameters stay on the meta device


# ------------------------------------------------------------------------------------------ presets


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


PRESETS = {
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


SIZE_BOUNDS = preset_bounds(p.shape_tower for p in PRESETS.values())  # what a shape tower's config.json may ask


def embed_preset(name: str, image_tower: str | None = None, train: dict | None = None) -> EmbedPreset:
    """A copy of the named preset, optionally with another image tower by name (e.g. ``vit_b32``
    for the course shape tower) and TrainConfig changes; the shape tower's output size follows
    the image tower's."""
    p = choose_preset(PRESETS, name, "embed").override(train=train or {})
    if image_tower is not None:
        if image_tower not in IMAGE_TOWERS:
            raise ConfigError(f"unknown image tower {image_tower!r}; choose from {', '.join(IMAGE_TOWERS)}")
        p.image_tower = image_tower
    p.shape_tower.embed_dim = p.tower.embed_dim
    return p


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
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless --overwrite
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
        print(f"train embed: preset {preset}, image tower {tower_cfg.name} ({n_img / 1e6:.2f}M params, {how}), "
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
        print(f"wrote {out / 'shape_tower'}{'' if frozen else ' and ' + str(out / 'image_tower')} (step {step}, "
              f"final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, embed_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train embed")


# ------------------------------------------------------------------------------------------ loading


def load_image_tower(spec, device="cpu") -> ImageTower:
    """An ImageTower from a checkpoint folder (a tower trained here) or the name of a pretrained
    one in ``IMAGE_TOWERS`` (``vit_b32``, ``vit_bigg14``: open_clip weights from the hub)."""
    if isinstance(spec, str) and spec in IMAGE_TOWERS and not Path(spec).exists():
        cfg = IMAGE_TOWERS[spec]
        if not cfg.pretrained:
            raise CheckpointError(f"image tower {spec!r} is trained from scratch and has no published weights; "
                                  "give the folder of a trained one (e.g. the shipped embed_course/image_tower) "
                                  "or a pretrained name (vit_b32, vit_bigg14)")
        return ImageTower.pretrained(cfg).to(device).eval()
    tower = ImageTower.load(resolve_folder(spec), device)
    if tower.identity() != tower.checkpoint_info.get("identity"):
        raise CheckpointError(f"{spec}: weights do not match the identity recorded in config.json (modified file?)")
    return tower


def check_tower(path, recorded: dict, tower) -> None:
    """A shape tower, prior or UNet must be used with the image tower it was trained against."""
    have = tower.identity()
    if recorded != have:
        def name(d):
            return f"{d.get('name')} ({d.get('weights') or d.get('pretrained')})" if d else "unknown"
        raise CheckpointError(f"{path}: was trained against image tower {name(recorded)}, "
                              f"not {name(have)}; use the image tower it was trained with, or retrain it")


def load_shape_tower(path, image_tower=None, device="cpu"):
    """(ShapeTower, config) from a checkpoint folder; with ``image_tower`` given, refuses one
    trained against another tower. ``config["fingerprint"]`` identifies its weights."""
    cfg = read_config(path)
    check_sizes(cfg.get("model"), SIZE_BOUNDS, Path(path) / "config.json")  # before building
    if cfg.get("kind") == ShapeTower.kind and image_tower is not None:  # before building: the cheaper refusal
        check_tower(path, cfg.get("image_tower"), image_tower)
    model = ShapeTower.load(path, device)
    cfg = model.checkpoint_info
    cfg["fingerprint"] = fingerprint(model.state_dict())
    return model, cfg


def load_towers(embed_dir, image_tower=None, device="cpu"):
    """(image tower, shape tower, shape tower config) of a ``train embed`` output folder:
    ``embed_dir/shape_tower`` and ``embed_dir/image_tower`` (or, for a pretrained tower, the
    name recorded in the shape tower's config, or ``image_tower`` given explicitly)."""
    embed_dir = resolve_folder(embed_dir) if not Path(embed_dir).exists() else Path(embed_dir)
    shape_path = embed_dir / "shape_tower"
    if not shape_path.exists():
        raise CheckpointError(f"{embed_dir}: no shape_tower/ inside (expected the output folder of train embed)")
    if image_tower is None:
        if (embed_dir / "image_tower").exists():
            image_tower = embed_dir / "image_tower"
        else:
            image_tower = (read_config(shape_path).get("image_tower") or {}).get("name")
            if not image_tower:
                raise CheckpointError(f"{shape_path}: records no image tower")
    tower = image_tower if hasattr(image_tower, "identity") else load_image_tower(image_tower, device)
    shape, cfg = load_shape_tower(shape_path, tower, device)
    return tower, shape, cfg


# ------------------------------------------------------------------------------------------ embedding


@torch.no_grad()
def embed_images(tower, images, background: float | None = None, batch_size: int = 64) -> torch.Tensor:
    """Image files / arrays / PIL images -> (B, D) unit image embeddings. RGBA is composited on
    the tower's background (white unless told); see data.images.load_image for what is accepted."""
    bg = tower.cfg.background if background is None else background
    device = next(tower.parameters()).device
    out = []
    for k in range(0, len(images), batch_size):
        pil = [load_image(im, background=bg) for im in images[k:k + batch_size]]
        out.append(tower(tower.preprocess(pil).to(device)))
    return torch.cat(out)


@torch.no_grad()
def embed_rgba(tower, rgba: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, 4, H, W) RGBA tensors in [0, 1] (rendered views) -> (B, D) unit image embeddings."""
    device = next(tower.parameters()).device
    return torch.cat([tower(tower.preprocess_rgba(rgba[k:k + batch_size].to(device)))
                      for k in range(0, len(rgba), batch_size)])


@torch.no_grad()
def embed_points(shape_tower, points, colors) -> torch.Tensor:
    """(B, N, 3) xyz in the data frame + (B, N, 3) rgb in [0, 1] -> (B, D) unit shape embeddings."""
    device = next(shape_tower.parameters()).device
    points = torch.as_tensor(np.asarray(points, dtype=np.float32) if not torch.is_tensor(points) else points)
    colors = torch.as_tensor(np.asarray(colors, dtype=np.float32) if not torch.is_tensor(colors) else colors)
    if points.ndim == 2:
        points, colors = points[None], colors[None]
    return shape_tower(points.float().to(device), colors.float().to(device))


@torch.no_grad()
def embed_folder(tower, shape_tower, folder, n_points: int, progress: bool = True) -> dict:
    """Every object of a data folder (with rendered views): {"e_s": (N, D), "e_i": (N, V, D),
    "category": (N,)} -- the shape embedding of an ``n_points`` subset (epoch 0's draw) and the
    image embedding of every view. ``shape_tower=None``: the image embeddings only (no "e_s")."""
    ds = ObjectDataset(Path(folder), n_points=n_points, views=True)
    e_s, e_i, cat = [], [], []
    for i in tqdm(range(len(ds)), desc="embed", disable=not progress):
        item = ds[i]
        if shape_tower is not None:
            e_s.append(embed_points(shape_tower, item["points"], item["colors"]).cpu())
        e_i.append(embed_rgba(tower, item["images"])[None].cpu())
        cat.append(item["category"])
    out = {"e_i": torch.cat(e_i), "category": torch.stack(cat)}
    return {"e_s": torch.cat(e_s), **out} if e_s else out


@torch.no_grad()
def embed_mesh(shape_tower, mesh, n_points: int = 512, seed: int = 0) -> torch.Tensor:
    """A trimesh with vertex colours (e.g. a generated one) -> (1, D): the shape embedding of
    ``n_points`` area-uniform surface samples with colours interpolated over the faces."""
    points, colors, _ = ColoredMesh.from_vertex_colors(mesh).sample_surface(n_points, seed)
    return embed_points(shape_tower, points, colors)


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
