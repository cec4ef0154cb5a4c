"""Reconstruct a mesh through the triplane VAE: points -> latent -> triplane -> mesh.

    compress3d-lite reconstruct Duck.glb -o duck_vae.glb               # the shipped course VAE
    compress3d-lite reconstruct object.npz --ckpt runs/vae/model -o out.ply --res 64

    input  a mesh file (GLB / glTF / OBJ / PLY, read by data.mesh_import) or an object .npz
           (data.io); from it, the coloured surface points the VAE was trained on
           (train.n_points of the checkpoint), in the [-1, 1] data frame
    encode the posterior mean mu (B, 3, c', r', r') -- no sampling, so the output is deterministic
    decode the high-res triplane (B, 3, C, r, r)
    mesh   marching cubes of the occupancy field + colour head at the vertices (mesh.py)
    frame  the inverse of the input's stored ``transform``: the mesh comes back in the input's
           original frame and scale (a 155-unit fox comes back 155 units long)
    write  .glb / .ply / .obj by the output suffix, atomically

Everything that can be wrong with the input (output suffix, checkpoint, input file) is checked
before any work and raises an error naming the file; nothing is written unless all went well.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .mesh import MESH_FORMATS, MeshingError, extract_mesh, save_mesh

DEFAULT_CKPT = "vae_course"  # the shipped course VAE (compress3d_lite.samples finds it)
INPUT_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".npz")


class ReconstructError(ValueError):
    """Bad input to ``reconstruct``: the message is one line naming the file."""


def load_points(path, n_points: int, seed: int = 0) -> dict:
    """Coloured surface points of a mesh file or object .npz, in the data frame.

    Returns {"points" (N, 3) float32, "colors" (N, 3) float32, "transform" (4, 4) original ->
    data frame}. Raises MeshImportError / DataFormatError / ReconstructError naming ``path``."""
    from .config import SampleSpec
    from .data.io import load_object
    from .data.mesh_import import import_mesh

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
    """(N, 3) points + (N, 3) colours in the data frame -> coloured trimesh in the data frame."""
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


def to_original_frame(mesh, transform):
    """Map a data-frame mesh back with the inverse of ``transform`` (original -> data frame)."""
    return mesh.apply_transform(np.linalg.inv(np.asarray(transform, np.float64)))


def reconstruct(input_path, output, ckpt=None, res: int = 128, seed: int = 0,
                preset: str | None = None, log=print):
    """The whole command: checks, then read -> encode -> decode -> mesh -> original frame -> write.

    Returns (mesh in the original frame, timings dict in seconds)."""
    from .checkpoint import load_vae
    from .samples import shipped_checkpoint

    ckpt = ckpt or shipped_checkpoint(DEFAULT_CKPT)
    output = Path(output)
    if output.suffix.lower() not in MESH_FORMATS:
        raise ReconstructError(f"{output}: unsupported output format '{output.suffix}' "
                               f"(supported: {', '.join(MESH_FORMATS)})")
    if output.is_dir():
        raise ReconstructError(f"{output}: is a directory, not an output file")
    if res < 8:
        raise ReconstructError(f"--res must be >= 8, got {res}")
    timings = {}
    t = time.perf_counter()
    model, cfg = load_vae(ckpt, preset=preset)
    timings["load_checkpoint"] = time.perf_counter() - t
    n_points = int(cfg.get("train", {}).get("n_points", 2048))
    t = time.perf_counter()
    data = load_points(input_path, n_points, seed)
    timings["read_input"] = time.perf_counter() - t
    log(f"reconstruct {input_path} with {ckpt} (preset {cfg.get('preset')}, step {cfg.get('step')}): "
        f"{len(data['points'])} surface points, grid {res}^3")
    try:
        mesh = reconstruct_points(model, data["points"], data["colors"], res, timings)
    except MeshingError as e:
        raise ReconstructError(f"{input_path}: {e}") from None
    t = time.perf_counter()
    mesh = to_original_frame(mesh, data["transform"])
    save_mesh(mesh, output)
    timings["write"] = time.perf_counter() - t
    model_time = sum(timings[k] for k in ("encode", "decode", "field", "marching_cubes", "colors"))
    log("timing: " + " | ".join(f"{k} {v:.3f} s" for k, v in timings.items())
        + f" | encode+decode+mesh {model_time:.3f} s")
    lo, hi = mesh.bounds
    log(f"wrote {output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, in the input's frame "
        f"(bounds {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()})")
    return mesh, timings
