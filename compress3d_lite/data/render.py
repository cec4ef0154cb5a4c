"""A small ray-cast renderer over trimesh: RGBA + depth views with a saved pinhole camera.

Camera model (saved with every rendered object):

* ``cam2world`` (4, 4): camera-to-world rigid transform in the **OpenCV convention**: the camera
  looks along its +z axis, +x is image right, +y is image down.
* ``intrinsics`` (3, 3): K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] in pixels, f from the vertical
  field of view. Pixel (row v, column u) has its centre at (u + 0.5, v + 0.5).
* ``depth``: z in the camera frame (not the ray length), 0 where the ray hits nothing.
  A pixel's world point is ``cam2world @ [depth * K^-1 (u + .5, v + .5, 1), 1]``.
* The world is y-up; orbit cameras look at the origin from ``radius`` away, with elevation
  measured from the xz plane towards +y. The default radius 4.6 with a 40 degree field of view
  keeps the whole [-0.9, 0.9]^3 object box in every view: its bounding sphere (radius 1.56)
  subtends at most asin(1.56 / 4.6) = 19.8 degrees, inside the 20 degree half-angle.

Rays are cast with Intel Embree (package ``embreex``) when it is installed, otherwise with
trimesh's pure-python/rtree intersector (about 50x slower, same results). ``ray_backend()`` says
which one is in use. Colour is the surface colour times a head-light Lambert term.
"""

from __future__ import annotations

import numpy as np
import trimesh
from trimesh.ray import ray_triangle

from ..config import AMBIENT
from .surface import ColoredMesh


def ray_backend() -> str:
    """'embree' when embreex is importable, else 'rtree' (trimesh's fallback)."""
    try:  # optional (pip install -e '.[fast]'): Intel Embree, where it has wheels
        import embreex  # noqa: F401
        from trimesh.ray import ray_pyembree  # noqa: F401

        return "embree"
    except ImportError:
        return "rtree"


def ray_intersector(mesh: trimesh.Trimesh):
    """The fastest available trimesh ray intersector for ``mesh``."""
    if ray_backend() == "embree":
        from trimesh.ray.ray_pyembree import RayMeshIntersector  # optional: only there when embreex is

        return RayMeshIntersector(mesh, scale_to_box=False)
    return ray_triangle.RayMeshIntersector(mesh)


def first_hits(intersector, mesh, origins, directions):
    """First hit of every ray -> (hit (n,) bool, face (n,), distance (n,), bary (n, 3)).

    The intersector finds the face; distance and barycentrics are then solved exactly on that
    face (Moller-Trumbore), which is cheaper than asking trimesh for hit locations.
    """
    n = len(origins)
    face = np.asarray(intersector.intersects_first(origins, directions), np.int64)
    hit = face >= 0
    face = np.where(hit, face, 0)
    dist = np.zeros(n, np.float64)
    bary = np.zeros((n, 3), np.float64)
    if hit.any():
        tri = mesh.triangles[face[hit]]  # (h, 3, 3)
        o, d = origins[hit], directions[hit]
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        pvec = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, pvec)
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        tvec = o - tri[:, 0]
        u = np.einsum("ij,ij->i", tvec, pvec) / det
        qvec = np.cross(tvec, e1)
        v = np.einsum("ij,ij->i", d, qvec) / det
        dist[hit] = np.einsum("ij,ij->i", e2, qvec) / det
        bary[hit] = np.clip(np.stack([1 - u - v, u, v], axis=1), 0, 1)
    return hit, face, dist, bary


# ------------------------------------------------------------------------------------------
# cameras


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV-convention cam2world (4, 4) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:  # looking straight up or down: pick another up vector
        x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # image down
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def intrinsics(resolution: int, fov_deg: float) -> np.ndarray:
    f = 0.5 * resolution / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0, resolution / 2], [0, f, resolution / 2], [0, 0, 1.0]])


def orbit_cameras(n_views, rng, radius=4.6, elevation_deg=(-10.0, 40.0)) -> np.ndarray:
    """``n_views`` cam2world matrices (n, 4, 4) evenly spread in azimuth (random start),
    elevation uniform in ``elevation_deg``; all look at the origin."""
    azimuth = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_views) / max(n_views, 1)
    elevation = np.deg2rad(rng.uniform(*elevation_deg, size=n_views))
    eyes = radius * np.stack(
        [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)],
        axis=1,
    )
    return np.stack([look_at(e) for e in eyes]) if n_views else np.zeros((0, 4, 4))


def _pixel_directions(K, resolution):
    """Unit ray directions through every pixel centre, in the camera frame: (H*W, 3)."""
    v, u = np.meshgrid(np.arange(resolution), np.arange(resolution), indexing="ij")
    pix = np.stack([u.ravel() + 0.5, v.ravel() + 0.5, np.ones(u.size)], axis=1)
    d_cam = pix @ np.linalg.inv(K).T  # (H*W, 3), z = 1
    return d_cam / np.linalg.norm(d_cam, axis=1, keepdims=True)


def camera_rays(cam2world, K, resolution, d_cam=None):
    """Rays through pixel centres: origins (H*W, 3), unit directions (H*W, 3), and the
    camera-z component of each unit direction (to turn ray length into depth)."""
    d_cam = _pixel_directions(K, resolution) if d_cam is None else d_cam
    d_world = d_cam @ cam2world[:3, :3].T
    origins = np.broadcast_to(cam2world[:3, 3], d_world.shape).copy()
    return origins, d_world, d_cam[:, 2]


# ------------------------------------------------------------------------------------------
# rendering


def render_views(cmesh: ColoredMesh, cam2world: np.ndarray, K: np.ndarray, resolution: int,
                 intersector=None):
    """Render every camera in ``cam2world`` (V, 4, 4).

    Returns ``images`` (V, H, W, 4) uint8 RGBA (alpha = coverage mask, rgb 0 off the object)
    and ``depths`` (V, H, W) float32 camera-z depth (0 off the object).
    """
    mesh = cmesh.mesh
    intersector = intersector or ray_intersector(mesh)
    n_views, hw = len(cam2world), resolution * resolution
    images = np.zeros((n_views, hw, 4), np.uint8)
    depths = np.zeros((n_views, hw), np.float32)
    d_cam = _pixel_directions(K, resolution)
    for i, c2w in enumerate(cam2world):
        origins, dirs, dz = camera_rays(c2w, K, resolution, d_cam)
        hit, face, dist, bary = first_hits(intersector, mesh, origins, dirs)
        albedo = cmesh.colors_at(face[hit], bary[hit])  # (n_hit, 3)
        cos = np.abs(np.einsum("ij,ij->i", mesh.face_normals[face[hit]], dirs[hit]))
        rgb = albedo * (AMBIENT + (1 - AMBIENT) * cos)[:, None]
        images[i, hit, :3] = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        images[i, hit, 3] = 255
        depths[i, hit] = (dist[hit] * dz[hit]).astype(np.float32)
    shape = (n_views, resolution, resolution)
    return images.reshape(*shape, 4), depths.reshape(shape)


def unproject_depth(depth: np.ndarray, cam2world: np.ndarray, K: np.ndarray) -> np.ndarray:
    """World points (n, 3) of the pixels of one view where depth > 0."""
    v, u = np.nonzero(depth > 0)
    pix = np.stack([u + 0.5, v + 0.5, np.ones(len(u))], axis=1)
    p_cam = (pix @ np.linalg.inv(K).T) * depth[v, u, None]
    return p_cam @ cam2world[:3, :3].T + cam2world[:3, 3]


def render_trimesh(mesh, cam2world: np.ndarray, resolution: int, fov_deg: float = 40.0) -> np.ndarray:
    """Views (V, H, W, 4) uint8 RGBA of a trimesh with vertex colours (e.g. a generated mesh),
    colours interpolated over each face, with the same camera model and shading as the data."""
    images, _ = render_views(ColoredMesh.from_vertex_colors(mesh), np.asarray(cam2world).reshape(-1, 4, 4),
                             intrinsics(resolution, fov_deg), resolution)
    return images
