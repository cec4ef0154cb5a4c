"""Stage 2 at inference (docs/paper.md §3): the image and shape towers loaded (with the check that
they belong together) and used to embed images, rendered views, points, meshes and data folders.

    tower, shape_tower, _ = load_towers(shipped_checkpoint("embed_course"))
    e_i = embed_images(tower, ["photo.png"])                                # (1, D) unit
    e_s = embed_points(shape_tower, points, colors)                         # (B, D) unit
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, read_config, resolve_folder
from ..config import check_sizes
from ..data.dataset import ObjectDataset
from ..data.images import load_image
from ..data.surface import ColoredMesh
from ..models.image_tower import IMAGE_TOWERS, ImageTower, fingerprint
from ..models.shape_tower import ShapeTower
from ..presets import EMBED_SIZE_BOUNDS


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
    check_sizes(cfg.get("model"), EMBED_SIZE_BOUNDS, Path(path) / "config.json")  # before building
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
