"""Field -> mesh: dense decode on a grid, marching cubes, vertex colours, GLB/PLY/OBJ.

The VAE decodes a latent to a triplane, and the triplane is a *field*: occupancy logits and
colours at any point of [-1, 1]^3 (``model.query``). A mesh is the level set logit = 0 (p = 0.5):

    1. decode_grid       logits at the voxel centres of a res^3 grid, -1 + (i + 0.5) * 2 / res
                         (the same convention as the feature volume in models/triplane.py)
    2. marching cubes    scikit-image on the logit grid at level 0, padded by one voxel of
                         "outside" so that a shape touching the domain boundary still closes
    3. vertex colours    the colour head queried at the mesh vertices
    4. save_mesh         .glb (vertex colours as COLOR_0), .ply, .obj; written atomically

The paper extracts its meshes with FlexiCubes (dual marching cubes, grid ~90) from a decoded SDF
(docs/paper.md §2.7, §7); with field supervision we have occupancy, and marching cubes on the logits
is the classic choice (Occupancy Networks). Our colours are sRGB display values (docs/design.md §2); glTF stores vertex
colours in linear space, so GLB colours are converted on the way out (and ``data.mesh_import``
converts them back on the way in).

Speed: a dense 128^3 decode is 2.1M field queries, most of them far from the surface where the
answer is obviously "outside". ``decode_grid_adaptive`` (the default for ``extract_mesh``)
queries a coarse grid first, then the full resolution only in the coarse cells the surface may
cross -- the hierarchical idea of Occupancy Networks' MISE. Where the surface is, the values are
exact, so marching cubes gives the dense mesh (a test checks it on a known field). It can miss a
part thinner than a coarse cell (see its docstring); measured with the course checkpoint on 28
test objects at 128^3, its grid had the dense grid's sign at every voxel while querying ~20% of
them (a coarse stride of 4 instead of 2 missed airplane wings). ``adaptive=False`` is always dense.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import torch
import trimesh
from scipy.ndimage import binary_dilation
from skimage.measure import marching_cubes as sk_marching_cubes

from .config import check_count
from .data.io import atomic_write_bytes
from .data.mesh_import import srgb_decode

MESH_FORMATS = (".glb", ".ply", ".obj")


class MeshingError(ValueError):
    """The field has no surface to extract (all inside or all outside), or a bad output path."""


def grid_coords(res: int) -> np.ndarray:
    """The voxel-centre coordinates of one axis of a res^3 grid over [-1, 1]: (res,)."""
    return (-1.0 + (np.arange(res) + 0.5) * 2.0 / res).astype(np.float32)


@torch.inference_mode()
def query_points(model, planes, xyz, chunk: int = 65536) -> tuple:
    """Occupancy logits (M,) and rgb (M, 3) as numpy at points ``xyz`` (M, 3), in chunks.

    ``planes`` is one decoded triplane (1, 3, C, r, r). Chunks of ~64k points keep the head's
    activations in cache; much larger chunks are slower on a CPU, not faster."""
    xyz = torch.as_tensor(np.asarray(xyz, np.float32), device=planes.device)
    logits, rgbs = [], []
    for i in range(0, len(xyz), chunk):
        logit, rgb = model.query(planes, xyz[None, i:i + chunk])  # (1, m), (1, m, 3)
        logits.append(logit[0].float().cpu())
        rgbs.append(rgb[0].float().cpu())
    if not logits:
        return np.zeros(0, np.float32), np.zeros((0, 3), np.float32)
    return torch.cat(logits).numpy(), torch.cat(rgbs).numpy()


@torch.inference_mode()
def query_logits(model, planes, xyz, chunk: int = 65536) -> np.ndarray:
    """Occupancy logits only (M,) at ``xyz`` (M, 3)."""
    return query_points(model, planes, xyz, chunk)[0]


def _product_grid(xs, ys, zs) -> np.ndarray:
    """(len(xs) * len(ys) * len(zs), 3) points, x slowest (C order of an [x, y, z] grid)."""
    g = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1)
    return g.reshape(-1, 3)


def decode_grid(model, planes, res: int, chunk: int = 65536) -> np.ndarray:
    """Dense decode: occupancy logits at every voxel centre of a res^3 grid, (res, res, res)
    float32 indexed [x, y, z]. The reference that ``decode_grid_adaptive`` must agree with."""
    c = grid_coords(res)
    return query_logits(model, planes, _product_grid(c, c, c), chunk).reshape(res, res, res)


def coarse_indices(res: int, stride: int) -> np.ndarray:
    """Fine-grid indices of the coarse samples: every ``stride``-th voxel plus the last one, (K,)."""
    return np.unique(np.r_[np.arange(0, res, stride), res - 1])


def refine_mask(coarse: np.ndarray, idx: np.ndarray, res: int, margin: float, dilate: int = 1) -> np.ndarray:
    """Which fine voxels to query exactly, from the coarse samples ``coarse`` (K, K, K) at fine
    indices ``idx`` (K,): (res, res, res) bool.

    A coarse cell (the fine voxels from idx[a] to idx[a + 1] along each axis, both ends) is
    active when its 8 corners disagree in sign or one is within ``margin`` of 0; active cells
    grow by ``dilate`` cells, and every fine voxel of an active cell is marked."""
    K = len(idx)
    corners = [coarse[i:K - 1 + i, j:K - 1 + j, k:K - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    lo, hi = np.minimum.reduce(corners), np.maximum.reduce(corners)  # (K-1, K-1, K-1)
    near = np.minimum.reduce([np.abs(v) for v in corners]) < margin
    active = (lo <= 0) & (hi > 0) | near
    if dilate:
        active = binary_dilation(active, structure=np.ones((3, 3, 3), bool), iterations=dilate)
    counts = np.diff(idx)  # (K-1,) fine voxels per cell, counting the lower end only
    mask = np.zeros((res, res, res), bool)
    mask[:res - 1, :res - 1, :res - 1] = active.repeat(counts, 0).repeat(counts, 1).repeat(counts, 2)
    for axis in range(3):  # close each block: add its upper boundary voxel
        upper, lower = [slice(None)] * 3, [slice(None)] * 3
        upper[axis], lower[axis] = slice(1, None), slice(None, -1)
        mask[tuple(upper)] |= mask[tuple(lower)]
    return mask


def fill_from_coarse(coarse: np.ndarray, idx: np.ndarray, res: int) -> np.ndarray:
    """(res, res, res): every fine voxel takes the value of its nearest coarse sample."""
    nearest = np.abs(np.arange(res)[:, None] - idx[None, :]).argmin(1)  # (res,) fine -> coarse
    return coarse[np.ix_(nearest, nearest, nearest)]


def decode_grid_adaptive(model, planes, res: int, stride: int = 2, margin: float = 6.0,
                         dilate: int = 0, chunk: int = 65536, return_fraction: bool = False):
    """Coarse-to-fine decode, the same signs as ``decode_grid`` wherever the surface is.

    1. query every ``stride``-th voxel centre (plus the last one): a coarse grid of K^3 samples
       that are exact values of the fine grid;
    2. a coarse cell is *active* when its 8 corners disagree in sign or one of them is within
       ``margin`` logits of 0; active cells grow by ``dilate`` cells (``refine_mask``);
    3. query every fine voxel of the active cells exactly; every other voxel takes the value of
       its nearest coarse sample (a corner of its own cell, so the same sign).

    A part thinner than a coarse cell whose field stays below -``margin`` at all 8 corners is
    missed; ``stride=1`` (or ``decode_grid``) never misses anything.
    Returns (res, res, res) logits, and with ``return_fraction`` also the share of voxels queried.
    """
    if stride <= 1 or res <= 2 * stride:
        grid = decode_grid(model, planes, res, chunk)
        return (grid, 1.0) if return_fraction else grid
    c = grid_coords(res)
    idx = coarse_indices(res, stride)
    K = len(idx)
    coarse = query_logits(model, planes, _product_grid(c[idx], c[idx], c[idx]), chunk).reshape(K, K, K)
    mask = refine_mask(coarse, idx, res, margin, dilate)
    grid = fill_from_coarse(coarse, idx, res)
    ijk = np.nonzero(mask)
    grid[ijk] = query_logits(model, planes, np.stack([c[i] for i in ijk], axis=-1), chunk)
    fraction = (K ** 3 + len(ijk[0])) / res ** 3
    return (grid, fraction) if return_fraction else grid


def marching_cubes(logits: np.ndarray, level: float = 0.0) -> tuple:
    """Marching cubes of a (res, res, res) [x, y, z] grid of voxel-centre values over [-1, 1]^3.

    Returns (vertices (V, 3) float32 in [-1, 1], faces (F, 3) int64), faces wound so that normals
    point out of the region where logits > level. Raises MeshingError when there is no surface."""
    res = logits.shape[0]
    lo, hi = float(logits.min()), float(logits.max())
    if not (lo < level < hi):
        where = "outside" if hi <= level else "inside"
        raise MeshingError(f"the decoded field has no surface: every grid point is {where} "
                           f"(logits in [{lo:.2f}, {hi:.2f}], level {level})")
    # one voxel of "outside" around the grid closes shapes that touch the domain boundary
    pad = np.pad(logits, 1, mode="constant", constant_values=min(lo, level - 1.0))
    h = 2.0 / res
    # skimage's default winding ("descent") makes normals point up the field, i.e. inwards for
    # logits; "ascent" winds the faces so that normals point out of the shape
    verts, faces, _, _ = sk_marching_cubes(pad, level=level, spacing=(h, h, h), gradient_direction="ascent")
    verts = verts - 1.0 - 0.5 * h  # padded voxel 0 sits at -1 - h/2
    return verts.astype(np.float32), faces.astype(np.int64)


def extract_mesh(model, planes, res: int = 128, level: float = 0.0, adaptive: bool = True,
                 chunk: int = 65536, timings: dict | None = None) -> trimesh.Trimesh:
    """The triplane's surface (logit = ``level``; 0 is p = 0.5) as a trimesh with vertex colours
    from the colour head, in the [-1, 1] data frame. ``planes``: one triplane (1, 3, C, r, r).

    ``timings`` (optional dict) receives the seconds of "field", "marching_cubes" and "colors".
    Raises MeshingError when the field is empty or full."""
    timings = {} if timings is None else timings
    if planes.shape[0] != 1:
        raise ValueError(f"extract_mesh takes one triplane (1, 3, C, r, r), got batch {planes.shape[0]}")
    t = time.perf_counter()
    grid = decode_grid_adaptive(model, planes, res, chunk=chunk) if adaptive else decode_grid(model, planes, res, chunk)
    timings["field"] = time.perf_counter() - t
    t = time.perf_counter()
    verts, faces = marching_cubes(grid, level)
    timings["marching_cubes"] = time.perf_counter() - t
    t = time.perf_counter()
    _, rgb = query_points(model, planes, verts, chunk)  # (V, 3) in [0, 1]
    colors = np.concatenate([np.round(np.clip(rgb, 0, 1) * 255), np.full((len(rgb), 1), 255)], axis=1)
    mesh = trimesh.Trimesh(verts, faces, vertex_colors=colors.astype(np.uint8), process=False)
    timings["colors"] = time.perf_counter() - t
    return mesh


def mesh_bytes(mesh: trimesh.Trimesh, suffix: str) -> bytes:
    """The file bytes of ``mesh`` as .glb / .ply / .obj (vertex colours included)."""
    suffix = suffix.lower()
    if suffix not in MESH_FORMATS:
        raise MeshingError(f"unsupported mesh format '{suffix}' (supported: {', '.join(MESH_FORMATS)})")
    if suffix == ".glb":
        # glTF vertex colours are linear (glTF 2.0 spec, COLOR_0); ours are sRGB display values
        rgba = np.asarray(mesh.visual.vertex_colors)
        linear = np.round(srgb_decode(rgba[:, :3] / 255.0) * 255).astype(np.uint8)
        out = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False,
                              vertex_colors=np.concatenate([linear, rgba[:, 3:]], axis=1))
        return out.export(file_type="glb")
    if suffix == ".ply":
        return mesh.export(file_type="ply", encoding="binary")
    text = mesh.export(file_type="obj", include_color=True, include_normals=False, include_texture=False)
    return text.encode() if isinstance(text, str) else text


def save_mesh(mesh: trimesh.Trimesh, path) -> Path:
    """Write ``mesh`` to ``path`` in the format of its suffix, atomically (never a partial file)."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise MeshingError(f"{path}: unsupported output format '{path.suffix}' (supported: {', '.join(MESH_FORMATS)})")
    atomic_write_bytes(path, mesh_bytes(mesh, path.suffix))
    return path


MAX_MESH_RES = 1024  # marching-cubes grids above this are refused whatever the memory
MESH_BYTES_PER_CELL = 48  # what meshing needs per grid cell, with room to spare (field, padding, skimage)


def check_mesh_resolution(res, name: str = "mesh_resolution") -> None:
    """A marching-cubes grid side in 8..MAX_MESH_RES whose grid fits in the free memory; a
    TypeError or ValueError naming ``name`` and the largest grid that fits otherwise."""
    check_count(name, res, 8, MAX_MESH_RES)
    need, free = MESH_BYTES_PER_CELL * res ** 3, psutil.virtual_memory().available
    if need > free:
        fits = max(8, min(MAX_MESH_RES, int((free / MESH_BYTES_PER_CELL) ** (1 / 3))))
        raise ValueError(f"{name} must be in 8..{fits} on this machine (a {res}^3 grid needs about "
                         f"{need / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB are free), got {res}")


