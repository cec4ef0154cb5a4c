"""Embeddings of images, point clouds and whole data sets with the stage-2 towers.

    tower, shape_tower, _ = load_towers("data_samples/checkpoints/embed_course")
    e_i = embed_images(tower, ["data_samples/toyshapes/000000_view0.png"])    # (1, D) unit
    e_s = embed_points(shape_tower, points, colors)                          # (B, D) unit
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def embed_images(tower, images, background: float | None = None, batch_size: int = 64) -> torch.Tensor:
    """Image files / arrays / PIL images -> (B, D) unit image embeddings. RGBA is composited on
    the tower's background (white unless told); see data.images.load_image for what is accepted."""
    from .data.images import load_image

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
    from tqdm.auto import tqdm

    from .data.dataset import ObjectDataset

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
    ``n_points`` area-uniform surface samples with colours interpolated over the faces (the same
    kind of input the shape tower was trained on)."""
    from .data.surface import ColoredMesh

    points, colors, _ = ColoredMesh.from_vertex_colors(mesh).sample_surface(n_points, seed)
    return embed_points(shape_tower, points, colors)
