"""Solid primitives with an exact inside test and a matching triangle mesh.

A toy object (see ``toyshapes.py``) is a union of these parts. Each primitive lives in its own
local frame and is placed by a similarity transform (rotation, uniform scale, translation), so
``contains`` stays exact after placement: a world point is mapped back into the local frame and
tested against the analytic shape. The mesh of a curved primitive is inscribed in the analytic
surface (its vertices lie on it), so mesh and analytic solid differ by at most the chord error
of the tessellation, far below the near-surface sampling noise.

Local frames use y as the up axis (the glTF convention, which most real meshes follow too).
"""

from __future__ import annotations

import functools

import numpy as np
import trimesh

SECTIONS = 64  # tessellation of round primitives: chord error 0.12% of the radius
ICO_SUBDIVISIONS = 4  # ellipsoids: 5120 faces, chord error about 0.03% of the radius


@functools.lru_cache(maxsize=None)
def _unit_sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=ICO_SUBDIVISIONS)


def similarity(translate=(0.0, 0.0, 0.0), rotate=None, scale: float = 1.0) -> np.ndarray:
    """4x4 matrix x -> R (s x) + t. ``rotate`` is a 3x3 matrix or None."""
    m = np.eye(4)
    r = np.eye(3) if rotate is None else np.asarray(rotate, dtype=np.float64)
    m[:3, :3] = r * scale
    m[:3, 3] = translate
    return m


def rot(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about a coordinate axis."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


_Z_TO_Y = rot("x", -90.0)  # trimesh builds round solids along +z; our local up axis is +y


class Primitive:
    """Base class: subclasses implement ``_local_mesh`` and ``_local_contains``."""

    kind = "primitive"

    def __init__(self, transform: np.ndarray | None = None):
        self.transform = np.eye(4) if transform is None else np.asarray(transform, np.float64)

    # -- placement -------------------------------------------------------------------------
    def placed(self, transform: np.ndarray) -> "Primitive":
        """The same primitive with ``transform`` applied after its own (in place, returns self)."""
        self.transform = np.asarray(transform, np.float64) @ self.transform
        return self

    def to_local(self, points: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(self.transform)
        return points @ inv[:3, :3].T + inv[:3, 3]

    # -- the two views of the solid --------------------------------------------------------
    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N,) bool, exact for the analytic solid."""
        return self._local_contains(self.to_local(np.asarray(points, np.float64)))

    def mesh(self) -> trimesh.Trimesh:
        m = self._local_mesh()
        m.apply_transform(self.transform)
        return m

    def params(self) -> dict:
        raise NotImplementedError

    def _local_mesh(self) -> trimesh.Trimesh:
        raise NotImplementedError

    def _local_contains(self, p: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Box(Primitive):
    kind = "box"

    def __init__(self, extents, transform=None):
        super().__init__(transform)
        self.extents = np.asarray(extents, np.float64)

    def params(self):
        return {"extents": self.extents.tolist()}

    def _local_mesh(self):
        return trimesh.creation.box(extents=self.extents)

    def _local_contains(self, p):
        return np.all(np.abs(p) <= self.extents / 2, axis=1)


class Ellipsoid(Primitive):
    kind = "ellipsoid"

    def __init__(self, radii, transform=None):
        super().__init__(transform)
        self.radii = np.broadcast_to(np.asarray(radii, np.float64), (3,)).copy()

    def params(self):
        return {"radii": self.radii.tolist()}

    def _local_mesh(self):
        m = _unit_sphere().copy()
        m.apply_transform(np.diag([*self.radii, 1.0]))  # vertices stay on the analytic surface
        return m

    def _local_contains(self, p):
        return np.sum((p / self.radii) ** 2, axis=1) <= 1.0


class Frustum(Primitive):
    """Truncated cone along local +y: radius ``r_bottom`` at y=-h/2, ``r_top`` at y=+h/2.

    r_top == r_bottom is a cylinder, r_top == 0 a cone.
    """

    kind = "frustum"

    def __init__(self, r_bottom, r_top, height, transform=None):
        super().__init__(transform)
        self.r_bottom, self.r_top, self.height = float(r_bottom), float(r_top), float(height)

    def params(self):
        return {"r_bottom": self.r_bottom, "r_top": self.r_top, "height": self.height}

    def _local_mesh(self):
        h = self.height / 2
        profile = [[0, -h], [self.r_bottom, -h], [self.r_top, h], [0, h]]
        if self.r_top == 0:
            profile = profile[:3]
        m = trimesh.creation.revolve(profile, sections=SECTIONS)
        m.apply_transform(similarity(rotate=_Z_TO_Y))
        return m

    def _local_contains(self, p):
        h = self.height
        t = np.clip((p[:, 1] + h / 2) / h, 0.0, 1.0)
        radius = self.r_bottom + (self.r_top - self.r_bottom) * t
        return (np.abs(p[:, 1]) <= h / 2) & (np.hypot(p[:, 0], p[:, 2]) <= radius)


class Tube(Primitive):
    """Hollow cylinder (open at both ends) along local +y."""

    kind = "tube"

    def __init__(self, r_inner, r_outer, height, transform=None):
        super().__init__(transform)
        self.r_inner, self.r_outer, self.height = float(r_inner), float(r_outer), float(height)

    def params(self):
        return {"r_inner": self.r_inner, "r_outer": self.r_outer, "height": self.height}

    def _local_mesh(self):
        m = trimesh.creation.annulus(self.r_inner, self.r_outer, self.height, sections=SECTIONS)
        m.apply_transform(similarity(rotate=_Z_TO_Y))
        return m

    def _local_contains(self, p):
        rho = np.hypot(p[:, 0], p[:, 2])
        return (np.abs(p[:, 1]) <= self.height / 2) & (rho >= self.r_inner) & (rho <= self.r_outer)


class Torus(Primitive):
    """Torus in the local xy plane (axis z); ``half=True`` keeps only x >= 0 (a handle)."""

    kind = "torus"

    def __init__(self, major, minor, half=False, transform=None):
        super().__init__(transform)
        self.major, self.minor, self.half = float(major), float(minor), bool(half)

    def params(self):
        return {"major": self.major, "minor": self.minor, "half": self.half}

    def _local_mesh(self):
        m = trimesh.creation.torus(self.major, self.minor, major_sections=SECTIONS, minor_sections=24)
        if self.half:
            m = trimesh.intersections.slice_mesh_plane(m, [1, 0, 0], [0, 0, 0], cap=True)
        return m

    def _local_contains(self, p):
        inside = (np.hypot(p[:, 0], p[:, 1]) - self.major) ** 2 + p[:, 2] ** 2 <= self.minor**2
        if self.half:
            inside &= p[:, 0] >= 0
        return inside


class ConvexPolytope(Primitive):
    """Convex hull of a few points: roofs, fins, wings. Inside = behind every face plane."""

    kind = "convex"

    def __init__(self, vertices, transform=None):
        super().__init__(transform)
        self.vertices = np.asarray(vertices, np.float64)
        hull = trimesh.convex.convex_hull(self.vertices)
        self._normals = hull.face_normals
        self._offsets = np.einsum("ij,ij->i", hull.face_normals, hull.triangles[:, 0])

    def params(self):
        return {"vertices": self.vertices.tolist()}

    def _local_mesh(self):
        return trimesh.convex.convex_hull(self.vertices)

    def _local_contains(self, p):
        return np.all(p @ self._normals.T <= self._offsets + 1e-12, axis=1)


def prism(profile_xy, depth) -> np.ndarray:
    """Vertices of a prism: a 2D convex profile in xy extruded symmetrically along z."""
    profile_xy = np.asarray(profile_xy, np.float64)
    n = len(profile_xy)
    z = np.full((n, 1), depth / 2)
    return np.vstack([np.hstack([profile_xy, -z]), np.hstack([profile_xy, z])])
