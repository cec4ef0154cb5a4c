"""A triangle mesh that knows the colour of every point on its surface.

Toy objects and imported meshes both end up as a ``ColoredMesh``: one concatenated
``trimesh.Trimesh`` plus a list of colour sources, each covering a contiguous range of faces
(one range per part or per scene geometry). A colour source answers "what colour is the point
with barycentric coordinates ``bary`` on face ``f``?", so surface sampling and ray-cast
rendering share one colour path:

    ConstantColor   one colour for the whole range (toy parts; flat glTF/MTL materials)
    CornerColors    a colour per face corner, interpolated (vertex colours; face colours)
    TextureColor    a UV per face corner, looked up in an image and multiplied by a factor

Sources never share an atlas, so a scene with many textured parts never builds the huge packed
texture that ``trimesh.util.concatenate`` makes (an 8192 x 4096 RGBA atlas, about 128 MB, for a
glTF truck of four textured parts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh


class ConstantColor:
    def __init__(self, rgb):
        self.rgb = np.asarray(rgb, np.float32)[:3]

    def __call__(self, faces, bary):
        return np.broadcast_to(self.rgb, (len(faces), 3))


class CornerColors:
    """``corners`` (F, 3, 3): an rgb in [0, 1] at each corner of each face of the range."""

    def __init__(self, corners):
        self.corners = np.asarray(corners, np.float32)

    def __call__(self, faces, bary):
        return np.einsum("nk,nkc->nc", bary, self.corners[faces])


class TextureColor:
    """``corner_uv`` (F, 3, 2) UVs, ``image`` (H, W, 3|4) uint8, ``factor`` rgb multiplier.

    The lookup is trimesh's ``uv_to_color`` (nearest texel, wrapped UVs, v pointing up), done on
    an array that is converted from PIL once instead of once per call.
    """

    def __init__(self, corner_uv, image, factor=(1.0, 1.0, 1.0)):
        self.corner_uv = np.asarray(corner_uv, np.float64)
        self.image = np.asarray(image)[..., :3]
        self.factor = np.asarray(factor, np.float32)[:3]

    def __call__(self, faces, bary):
        uv = np.einsum("nk,nkc->nc", bary, self.corner_uv[faces])
        uv = np.nan_to_num(uv)
        h, w = self.image.shape[:2]
        x = np.round((uv[:, 0] * (w - 1)) % w).astype(np.int64) % w
        y = np.round(((1 - uv[:, 1]) * (h - 1)) % h).astype(np.int64) % h
        return self.image[y, x].astype(np.float32) / 255.0 * self.factor


@dataclass
class ColoredMesh:
    mesh: trimesh.Trimesh  # all parts concatenated, not merged
    sources: list  # one colour source per part
    face_part: np.ndarray  # (F,) part index of every face
    part_names: list

    @classmethod
    def from_parts(cls, parts):
        """``parts``: list of (name, trimesh.Trimesh, colour source)."""
        vertices, faces, face_part, offset = [], [], [], 0
        for i, (_, mesh, _) in enumerate(parts):
            vertices.append(np.asarray(mesh.vertices, np.float64))
            faces.append(np.asarray(mesh.faces, np.int64) + offset)
            face_part.append(np.full(len(mesh.faces), i, np.int32))
            offset += len(mesh.vertices)
        mesh = trimesh.Trimesh(np.vstack(vertices), np.vstack(faces), process=False)
        return cls(mesh, [p[2] for p in parts], np.concatenate(face_part), [p[0] for p in parts])

    @classmethod
    def from_vertex_colors(cls, mesh: trimesh.Trimesh, name: str = "mesh") -> "ColoredMesh":
        """A trimesh with vertex colours (e.g. a generated one): colours interpolated over faces."""
        rgb = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float32) / 255.0
        return cls.from_parts([(name, mesh, CornerColors(rgb[np.asarray(mesh.faces)]))])

    def part_face_start(self) -> np.ndarray:
        """Index of the first face of each part."""
        counts = np.bincount(self.face_part, minlength=len(self.sources))
        return np.concatenate([[0], np.cumsum(counts)[:-1]])

    def colors_at(self, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(n,) face indices and (n, 3) barycentric coordinates -> (n, 3) float32 rgb in [0, 1]."""
        out = np.zeros((len(faces), 3), np.float32)
        parts = self.face_part[faces]
        starts = self.part_face_start()
        for p in np.unique(parts):
            sel = parts == p
            out[sel] = self.sources[p](faces[sel] - starts[p], bary[sel])
        return np.clip(out, 0.0, 1.0)

    def sample_surface(self, n: int, seed) -> tuple:
        """Area-uniform surface samples: (n, 3) points, (n, 3) colours, (n,) part ids."""
        points, faces, bary = trimesh.sample.sample_surface(
            self.mesh, n, return_barycentric=True, seed=seed
        )
        return points, self.colors_at(faces, bary), self.face_part[faces]
