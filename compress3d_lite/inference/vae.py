"""Stage 1 at inference (docs/paper.md §2): the trained triplane VAE loaded, its latent
statistics, data folders encoded, and a point cloud reconstructed into a coloured mesh.

    vae, cfg = load_vae(shipped_checkpoint("vae_course"))
    data = load_points("Duck.glb", n_points=2048)                    # the data frame, with its transform
    mesh = reconstruct_points(vae, data["points"], data["colors"])   # (compress3d-lite reconstruct)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, read_config, resolve_folder
from ..config import SampleSpec, check_sizes
from ..data.dataset import ObjectDataset
from ..data.io import load_object
from ..data.mesh_import import import_mesh
from ..mesh import extract_mesh
from ..models.autoencoder import TriplaneVAE
from ..presets import VAE_SIZE_BOUNDS


@torch.no_grad()
def encode_latents(vae, folder, n_points: int, device, limit: int | None = None, progress: bool = False):
    """Posterior means (N, 3, c', r', r') of the objects of a data folder (epoch 0's point draw),
    the first ``limit`` of them when given."""
    ds = ObjectDataset(folder, n_points=n_points)
    n = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for i in tqdm(range(n), desc="encode", disable=not progress):
        item = ds[i]
        mu, _ = vae.encode(item["points"][None].to(device), item["colors"][None].to(device))
        out.append(mu.cpu())
    return torch.cat(out)


def load_vae(path, device="cpu", preset: str | None = None):
    """(TriplaneVAE in eval mode, config dict) from a checkpoint folder or Hub repo id. ``preset``
    (optional) must match the checkpoint's preset; any mismatch is a CheckpointError naming it."""
    folder = resolve_folder(path)
    check_sizes(read_config(folder).get("model"), VAE_SIZE_BOUNDS, folder / "config.json")  # before building
    model = TriplaneVAE.load(folder, device)
    cfg = model.checkpoint_info
    if preset is not None and cfg.get("preset") != preset:
        raise CheckpointError(f"{path}: made with preset {cfg.get('preset')!r}, not {preset!r}")
    return model, cfg


def latent_stats(cfg: dict, device="cpu"):
    """Per-channel latent mean and std from a VAE (or UNet) config, shaped (1, 1, c', 1, 1)."""
    stats = cfg.get("latent_stats")
    if not stats:
        return None, None
    mean = torch.tensor(stats["mean"], device=device).view(1, 1, -1, 1, 1)
    std = torch.tensor(stats["std"], device=device).view(1, 1, -1, 1, 1)
    return mean, std


DEFAULT_VAE = "vae_course"  # the shipped course VAE (compress3d_lite.samples finds it)


INPUT_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".npz")


class ReconstructError(ValueError):
    """Bad input to ``reconstruct``: the message is one line naming the file."""


def load_points(path, n_points: int, seed: int = 0) -> dict:
    """Coloured surface points of a mesh file or object .npz, in the data frame: {"points" (N, 3),
    "colors" (N, 3) float32, "transform" (4, 4) original -> data frame}. Raises MeshImportError /
    DataFormatError / ReconstructError naming ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ReconstructError(f"{path}: unsupported input '{path.suffix}' (supported: {', '.join(INPUT_FORMATS)})")
    if suffix == ".npz":
        obj = load_object(path)
        points, colors = obj["points"], obj["colors"]
        if len(points) > n_points:  # a random subset of the size the model was trained on
            keep = np.sort(np.random.default_rng(seed).choice(len(points), n_points, replace=False))
            points, colors = points[keep], colors[keep]
        return {"points": points, "colors": colors, "transform": obj["transform"]}
    # only the surface points are needed: a handful of occupancy queries, no rendered views
    spec = SampleSpec(n_points=n_points, n_uniform=8, n_near=8, views=0)
    example = import_mesh(path, spec, seed=seed)
    return {k: example[k] for k in ("points", "colors", "transform")}


@torch.inference_mode()
def reconstruct_points(model, points, colors, res: int = 128, timings: dict | None = None):
    """(N, 3) points + (N, 3) colours in the data frame -> coloured trimesh in the data frame:
    encode to the posterior mean (deterministic), decode, marching cubes (mesh.py)."""
    timings = {} if timings is None else timings
    device = next(model.parameters()).device
    pts = torch.as_tensor(np.asarray(points, np.float32), device=device)[None]  # (1, N, 3)
    cols = torch.as_tensor(np.asarray(colors, np.float32), device=device)[None]  # (1, N, 3)
    t = time.perf_counter()
    mu, _ = model.encode(pts, cols)  # (1, 3, c', r', r'): the posterior mean
    timings["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    planes = model.decode(mu)  # (1, 3, C, r, r)
    timings["decode"] = time.perf_counter() - t
    return extract_mesh(model, planes, res=res, timings=timings)
