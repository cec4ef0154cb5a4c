"""From a coloured mesh to one training example (docs/design.md §2, the data contract).

One example holds

* ``points`` (N, 3) / ``colors`` (N, 3): area-uniform coloured surface samples, the VAE's
  input point cloud (docs/paper.md §2.1: a coloured point cloud, N x 6);
* ``occ_points`` (M, 3) / ``occ_labels`` (M,): occupancy queries, uniform in [-1, 1]^3 and near
  the surface (the surface samples plus gaussian offsets at two scales), with labels from an
  exact or robust inside test;
* optionally ``images`` / ``depths`` / ``cam2world`` / ``intrinsics``: rendered views.

The same function serves toy objects (exact labels from the composition) and imported meshes
(labels from the visibility test or the winding number, ``occupancy.py``); they differ only in the inside test and
in an optional filter that drops surface samples lying inside the solid (the internal faces
where toy parts overlap).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import SampleSpec
from .render import intrinsics, orbit_cameras, ray_intersector, render_views
from .surface import ColoredMesh


def uniform_queries(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size=(n, 3))


def near_surface_queries(surface: np.ndarray, n: int, sigmas, rng) -> np.ndarray:
    """``n`` points: random surface points plus N(0, sigma^2) offsets, an equal share per sigma."""
    idx = rng.integers(0, len(surface), size=n)
    sigma = np.asarray(sigmas, np.float64)[np.arange(n) % len(sigmas)]
    return np.clip(surface[idx] + rng.normal(size=(n, 3)) * sigma[:, None], -1.0, 1.0)


def sample_surface(cmesh: ColoredMesh, n: int, rng, keep: Callable | None = None):
    """``n`` coloured surface samples; ``keep(points, part_ids) -> bool mask`` may reject some
    (oversampling until ``n`` are kept)."""
    pts, cols, parts = [], [], []
    have, draw = 0, n if keep is None else int(1.25 * n)
    for _ in range(20):
        p, c, k = cmesh.sample_surface(draw, seed=rng)
        if keep is not None:
            m = keep(p, k)
            p, c, k = p[m], c[m], k[m]
        pts.append(p), cols.append(c), parts.append(k)
        have += len(p)
        if have >= n:
            break
        draw = int(1.5 * n)
    if have < n:
        raise ValueError("could not sample enough visible surface points")
    return (np.concatenate(pts)[:n], np.concatenate(cols)[:n], np.concatenate(parts)[:n])


def make_example(cmesh: ColoredMesh, spec: SampleSpec, rng: np.random.Generator,
                 inside: Callable[[np.ndarray], np.ndarray], keep: Callable | None = None) -> dict:
    """All arrays of one object (see module docstring), deterministic given ``rng``."""
    points, colors, parts = sample_surface(cmesh, spec.n_points, rng, keep)
    occ_points = np.concatenate([
        uniform_queries(spec.n_uniform, rng),
        near_surface_queries(points, spec.n_near, spec.near_sigmas, rng),
    ])
    example = {
        "points": points.astype(np.float32),
        "colors": colors.astype(np.float32),
        "point_parts": parts.astype(np.int16),
        "occ_points": occ_points.astype(np.float32),
        "occ_labels": inside(occ_points.astype(np.float32).astype(np.float64)),
    }
    if spec.views > 0:
        cam2world = orbit_cameras(spec.views, rng, spec.radius, spec.elevation_deg)
        K = intrinsics(spec.resolution, spec.fov_deg)
        images, depths = render_views(cmesh, cam2world, K, spec.resolution, ray_intersector(cmesh.mesh))
        example.update(images=images, depths=depths, cam2world=cam2world,
                       intrinsics=np.broadcast_to(K, (spec.views, 3, 3)).copy())
    return example
