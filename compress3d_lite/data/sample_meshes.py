"""Small mesh files made by us (no third-party content) for ``data_samples/`` and the tests.

Each file exercises one colour branch of ``mesh_import.py``:

    crate.obj + crate.mtl + crate.png   UV-mapped box with a procedural texture; the MTL also
                                        sets a grey Kd that the importer must NOT multiply in
    toy_lamp.glb                        a toy lamp as a multi-node glTF scene, one node per part,
                                        each a PBR material with only a baseColorFactor (the
                                        "flat material colour" Objaverse case), in cm units
    vertex_color_snowman.ply            a toy snowman as one mesh with per-vertex colours

    paths = write_sample_meshes("data_samples")

Output is deterministic (same bytes every run) and every file is well under 300 KB.
"""

from __future__ import annotations

import logging
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial

from .io import atomic_write_bytes
from .mesh_import import srgb_decode
from .primitives import Ellipsoid, similarity
from .toyshapes import make_toy_object

TOY_SEED = 0  # toy objects the samples are made from: make_toy_object(TOY_SEED, index, category)
LAMP_INDEX = 3
SNOWMAN_INDEX = 4
LAMP_UNITS = 50.0  # toy_lamp.glb is stored 50x larger and off-centre, like a cm-unit asset
CRATE_KD = (0.5, 0.5, 0.5)  # the grey diffuse in crate.mtl (must not tint the texture)

# ------------------------------------------------------------------------------------------
# (a) textured crate


CRATE_PALETTE = np.array([
    [150, 100, 55],  # plank light
    [120, 78, 40],  # plank dark
    [40, 28, 18],  # gap between planks
    [200, 40, 40],  # label red
    [240, 220, 60],  # label yellow stripe
], np.uint8)


def crate_texture(size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8: horizontal planks with dark gaps and a red label with a yellow
    stripe, drawn only with ``CRATE_PALETTE`` colours (no blending, so every texel is one of
    them)."""
    y, x = np.mgrid[0:size, 0:size]
    plank = (y * 5) // size  # 5 planks
    tex = CRATE_PALETTE[plank % 2].copy()  # (size, size, 3)
    tex[(y * 5) % size < max(1, size // 32)] = CRATE_PALETTE[2]  # gaps
    label = (np.abs(x - size / 2) < size * 0.25) & (np.abs(y - size / 2) < size * 0.15)
    tex[label] = CRATE_PALETTE[3]
    tex[label & (np.abs(y - size / 2) < size * 0.04)] = CRATE_PALETTE[4]
    return tex


def crate_obj_text(extents=(1.0, 0.8, 1.2)) -> str:
    """OBJ text of a box whose 6 faces each map the whole texture (24 vertices, 12 triangles)."""
    half = np.asarray(extents) / 2
    lines = ["# a UV-mapped crate made by compress3d_lite.data.sample_meshes", "mtllib crate.mtl", "o crate"]
    corners_uv = [(0, 0), (1, 0), (1, 1), (0, 1)]
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u_axis, v_axis = (axis + 1) % 3, (axis + 2) % 3  # u x v = +axis
            if sign < 0:  # keep counter-clockwise winding seen from outside
                u_axis, v_axis = v_axis, u_axis
            base = len(faces) * 4
            for cu, cv in corners_uv:
                p = np.zeros(3)
                p[axis] = sign * half[axis]
                p[u_axis] = (2 * cu - 1) * half[u_axis]
                p[v_axis] = (2 * cv - 1) * half[v_axis]
                lines.append("v {:.6f} {:.6f} {:.6f}".format(*p))
            faces.append(base)
    lines += [f"vt {u} {v}" for _ in faces for u, v in corners_uv]
    lines.append("usemtl crate")
    for b in faces:
        i = b + 1  # OBJ indices are 1-based
        lines.append(f"f {i}/{i} {i + 1}/{i + 1} {i + 2}/{i + 2}")
        lines.append(f"f {i}/{i} {i + 2}/{i + 2} {i + 3}/{i + 3}")
    return "\n".join(lines) + "\n"


def crate_mtl_text() -> str:
    kd = " ".join(f"{c:.3f}" for c in CRATE_KD)
    return f"newmtl crate\nKa 0 0 0\nKd {kd}\nKs 0 0 0\nmap_Kd crate.png\n"


def png_bytes(image: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# (b) toy lamp as a multi-node glTF scene, (c) vertex-coloured snowman


def lamp_glb_bytes() -> bytes:
    """A GLB with one node per lamp part; the node transform scales the part by LAMP_UNITS and
    moves it off-centre, so the importer's scene-graph and normalisation paths are exercised."""
    obj = make_toy_object(TOY_SEED, LAMP_INDEX, category="lamp")
    node_matrix = similarity((10.0, 40.0, -5.0), scale=LAMP_UNITS)
    scene = trimesh.Scene()
    for name, mesh, rgb in zip(obj.part_names, obj.meshes, obj.part_colors):
        part = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        linear = srgb_decode(rgb)  # glTF factors are linear (see mesh_import)
        part.visual = trimesh.visual.TextureVisuals(
            material=PBRMaterial(name=f"{name}_paint", baseColorFactor=[*linear, 1.0]))
        scene.add_geometry(part, node_name=name, geom_name=name, transform=node_matrix)
    return scene.export(file_type="glb")


def _low_poly(primitive) -> trimesh.Trimesh:
    """The part mesh, with ellipsoids at a coarser tessellation (keeps the PLY small)."""
    if isinstance(primitive, Ellipsoid):
        m = trimesh.creation.icosphere(subdivisions=3)
        m.apply_transform(np.diag([*primitive.radii, 1.0]))
        m.apply_transform(primitive.transform)
        return m
    return primitive.mesh()


def snowman_ply_bytes() -> bytes:
    """A binary PLY: the toy snowman's parts in one mesh, each vertex coloured by its part."""
    obj = make_toy_object(TOY_SEED, SNOWMAN_INDEX, category="snowman")
    meshes = [_low_poly(p) for p in obj.parts]
    colors = np.concatenate([np.repeat(c[None], len(m.vertices), 0) for m, c in zip(meshes, obj.part_colors)])
    mesh = trimesh.util.concatenate(meshes)
    rgba = np.concatenate([np.round(colors * 255), np.full((len(colors), 1), 255)], axis=1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh.export(file_type="ply", encoding="binary")


def write_sample_meshes(out_dir, overwrite: bool = False) -> list:
    """Write the sample files into ``out_dir``; returns their paths (main files first:
    crate.obj, toy_lamp.glb, vertex_color_snowman.ply, then crate.mtl, crate.png). A file of
    that name already there is a FileExistsError (nothing written) unless ``overwrite``."""
    out_dir = Path(out_dir)
    names = ("crate.obj", "toy_lamp.glb", "vertex_color_snowman.ply", "crate.mtl", "crate.png")
    there = [out_dir / n for n in names if (out_dir / n).exists()]
    if there and not overwrite:
        raise FileExistsError(17, "exists", str(there[0]))
    files = {
        "crate.obj": crate_obj_text().encode(),
        "toy_lamp.glb": lamp_glb_bytes(),
        "vertex_color_snowman.ply": snowman_ply_bytes(),
        "crate.mtl": crate_mtl_text().encode(),
        "crate.png": png_bytes(crate_texture()),
    }
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return [out_dir / name for name in files]


if __name__ == "__main__":  # python -m compress3d_lite.data.sample_meshes OUT_DIR
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for p in write_sample_meshes(sys.argv[1] if len(sys.argv) > 1 else "data_samples", overwrite=True):
        logging.getLogger(__name__).info("%s  %s B", p, f"{p.stat().st_size:,}")
