"""Inside/outside labels for real meshes that are not watertight: the visibility test.

Ray parity (trimesh ``mesh.contains``) and winding numbers need a closed, consistently oriented
surface. Almost no real mesh is one as loaded (13 of the 14 third-party meshes we test on): UV seams
split vertices, glass panes are single open sheets, game assets overlap parts and keep internal
faces (the Kenney cake). On such meshes parity flips at random and fills or empties whole
parts.

The visibility test asks a more robust question instead: *can this point see infinity?*

    a query point is OUTSIDE  if at least one of ``n_directions`` rays from it escapes
                              without hitting any triangle;
                     INSIDE   if every ray is blocked.

This is the "depth" sign method of marian42/mesh_to_sdf (``sign_method='depth'``) and the way
TSDF fusion of rendered depth maps watertights a mesh: the outside is what some camera can see.
The ray directions are a fixed Fibonacci sphere, so labels are deterministic.

What it gets right: open meshes with small holes, overlapping/non-manifold parts, internal
faces, flipped normals, duplicated sheets -- none of these change what is visible.

How it fails (documented, accepted):

* concave pockets that no ray direction can see into are filled: the inside of a closed box
  with a tiny hole, the cavity of a bottle, a room seen only through a keyhole become solid;
  a mug's interior is fine because it opens to the sky.
* a zero-thickness sheet (a plane, a leaf, a flag) has no inside: every point next to it sees
  infinity on its open side, so it is labelled empty -- the occupancy network can only learn it
  as a very thin solid from the near-surface queries.
* with a finite set of directions, a ray can slip through a crack between triangles (a mesh
  with gaps, or a ray grazing an edge) and label an inside point outside; more directions make
  this likelier, fewer make the pocket filling worse. 64 is the usual compromise.
"""

from __future__ import annotations

import functools

import numpy as np
import trimesh

from .render import ray_intersector

DIRECTIONS_PER_ROUND = 8  # rays per point per round; points that escape drop out early
MAX_RAYS_PER_CALL = 1 << 20  # bounds the memory of one ray batch (~50 MB of float64 arrays)


@functools.lru_cache(maxsize=8)
def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (a Fibonacci lattice): (n, 3) float64.

    z runs from 1 - 1/n to -1 + 1/n, never exactly +-1, so no ray is axis-aligned (axis-aligned
    rays graze the edges of box-like meshes and can slip between two triangles)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = i * np.pi * (3.0 - np.sqrt(5.0))  # the golden angle
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    dirs.setflags(write=False)
    return dirs


def _blocked_all(intersector, points: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(m, 3) points, (d, 3) directions -> (m,) True where every ray hits the mesh."""
    m, d = len(points), len(dirs)
    origins = np.repeat(points, d, axis=0)  # (m*d, 3): point 0 d times, then point 1 ...
    directions = np.tile(dirs, (m, 1))  # (m*d, 3)
    hit = np.asarray(intersector.intersects_any(origins, directions), bool)
    return hit.reshape(m, d).all(axis=1)


def visibility_occupancy(mesh: trimesh.Trimesh, points: np.ndarray, n_directions: int = 64,
                         intersector=None) -> np.ndarray:
    """(M, 3) query points -> (M,) bool, True = inside (no ray in ``n_directions`` escapes).

    Two shortcuts keep it fast (16k queries x 64 directions: about 0.1 s with embree for a
    typical object, 0.35 s if every query is inside; ~50x slower on trimesh's rtree fallback)
    without changing the result: points outside the mesh's bounding box are outside (every
    direction pointing away from the box escapes), and the directions are cast in rounds of
    ``DIRECTIONS_PER_ROUND`` spread over the whole sphere, so a point stops being traced as soon
    as one ray escapes. Only inside points pay for all ``n_directions`` rays.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    dirs = fibonacci_directions(int(n_directions))  # (D, 3)
    lo, hi = mesh.bounds
    inside = np.all((points >= lo) & (points <= hi), axis=1)  # candidates: still blocked so far
    if not inside.any():
        return inside
    intersector = intersector or ray_intersector(mesh)
    n_rounds = -(-len(dirs) // DIRECTIONS_PER_ROUND)
    for r in range(n_rounds):
        group = dirs[r::n_rounds]  # every n_rounds-th direction: spread from pole to pole
        idx = np.flatnonzero(inside)
        step = max(1, MAX_RAYS_PER_CALL // len(group))
        for s in range(0, len(idx), step):
            chunk = idx[s:s + step]
            inside[chunk] = _blocked_all(intersector, points[chunk], group)
        if not inside.any():
            break
    return inside
