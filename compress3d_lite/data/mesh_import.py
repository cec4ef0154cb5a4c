"""Real-mesh import: GLB / glTF / OBJ(+MTL) / PLY files -> training examples (docs/design.md §2).

Real files break naive code (PBR materials without textures, parts without UVs, multi-part
scenes, open sheets, wildly different scales; docs/design.md §2), so this module never flattens
a scene with ``scene.dump(concatenate=True)`` and never calls trimesh's ``sample_surface(
sample_color=True)``. Instead it walks the scene graph and turns every (node, geometry) pair into one part of
a ``surface.ColoredMesh`` with its own colour source, picked by three branches:

    texture + UVs         -> TextureColor   glTF baseColorTexture x baseColorFactor, MTL map_Kd
    no texture (or no UV) -> ConstantColor  glTF baseColorFactor, MTL Kd
    vertex / face colours -> CornerColors   PLY vertex colours, glTF COLOR_0

Colour spaces: textures and our colours are sRGB (display) values. glTF stores
``baseColorFactor`` and vertex colours in *linear* space, so they are sRGB-encoded here (a
Kenney cake factor of 0.5 shows as 0.74 in any glTF viewer, and so it does here). A textured
glTF colour is encode(decode(texel) * factor), approximated by texel * encode(factor) (exact for
a pure 2.2 gamma). MTL ``Kd`` has no defined colour space and is used as is (like trimesh and
MeshLab); with a ``map_Kd`` texture the Kd is ignored, as most viewers do (avocado.mtl has a
grey Kd 0.4 that would otherwise darken the texture).

Then the object is moved into the data frame: the bounding box of the referenced vertices is
centred at the origin and scaled so its largest side is 1.8 (it fits [-0.9, 0.9]^3). Occupancy
labels come from the visibility test, or libigl's winding number where Embree is not installed
(``occupancy.py``), because almost no real mesh is watertight.

    cmesh, transform = load_colored_mesh("Duck.glb")
    example = import_mesh("Duck.glb", SampleSpec())        # the arrays of io.save_object
    entries, failures = import_files(["meshes/"], "data/imported", SampleSpec())

Every problem with an input file raises ``MeshImportError`` with a one-line message
"<path>: <problem>"; ``import_files`` collects those instead of stopping.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import trimesh
from tqdm.auto import tqdm

from ..config import HALF_EXTENT, SampleSpec
from . import io as data_io  # data_io.save_object is looked up per call, so a replaced one (a test's) is used
from .io import close_dataset, open_dataset
from .occupancy import mesh_occupancy, occupancy_method
from .render import ray_backend, ray_intersector
from .sampling import make_example
from .surface import ColoredMesh, ConstantColor, CornerColors, TextureColor

SUPPORTED = (".glb", ".gltf", ".obj", ".ply")
LINEAR_COLOR_FORMATS = (".glb", ".gltf")  # formats whose factors / vertex colours are linear
DEFAULT_RGB = (0.7, 0.7, 0.7)  # parts with no colour information at all


class MeshImportWarning(UserWarning):
    """A mesh we can import after a repair (vertices dropped); the message names the file."""


class MeshImportError(ValueError):
    """An input file that cannot be imported. The message is one line: "<path>: <problem>"."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    """``TypeName: message`` of an exception, squeezed onto one short line."""
    text = " ".join(str(e).split()) or "no message"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"


# ------------------------------------------------------------------------------------------
# colours


def srgb_encode(linear) -> np.ndarray:
    """Linear rgb in [0, 1] -> sRGB display values in [0, 1] (the standard sRGB curve)."""
    x = np.clip(np.asarray(linear, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def srgb_decode(srgb) -> np.ndarray:
    """sRGB display values in [0, 1] -> linear rgb (inverse of ``srgb_encode``)."""
    x = np.clip(np.asarray(srgb, np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def to_rgb01(colors) -> np.ndarray:
    """uint8 (0..255) or float (0..1) colours, RGB or RGBA -> float64 RGB in [0, 1], alpha dropped."""
    c = np.asarray(colors)
    c = c.astype(np.float64) / 255.0 if c.dtype.kind in "ui" else c.astype(np.float64)
    return np.clip(c[..., :3], 0.0, 1.0)


def image_rgb(image) -> np.ndarray:
    """A texture (PIL image in any mode: palette 'P', 'L', 'LA', 'RGBA', 16-bit 'I;16' ...)
    -> (H, W, 3) uint8 RGB, alpha dropped."""
    if hasattr(image, "mode") and image.mode.startswith(("I", "F")):  # 16-bit / float grey
        a = np.asarray(image, np.float64)
        a = a / 257.0 if a.max() > 255 else a
        grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"), np.uint8)
    a = np.asarray(image)
    a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.dtype.kind == "f" else a.astype(np.uint8)


def _material_color_source(visual, faces: np.ndarray, images: dict):
    """Colour source of a TextureVisuals part (a material, maybe a texture, maybe UVs)."""
    material = getattr(visual, "material", None)
    uv = getattr(visual, "uv", None)
    has_uv = uv is not None and len(uv) > int(faces.max()) and np.asarray(uv).ndim == 2
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        texture = material.baseColorTexture
        factor = (np.ones(3) if material.baseColorFactor is None
                  else srgb_encode(to_rgb01(material.baseColorFactor)))
    elif material is not None and hasattr(material, "image"):  # SimpleMaterial (OBJ/MTL)
        texture = material.image
        # with a texture, Kd is ignored (see module docstring); without one, Kd is the colour
        factor = np.ones(3) if texture is not None else to_rgb01(material.diffuse)
    else:  # no material at all, or a material type we do not know
        main = getattr(material, "main_color", None)
        return ConstantColor(DEFAULT_RGB if main is None else to_rgb01(main))
    if texture is None:
        return ConstantColor(factor)
    key = id(texture)
    if key not in images:  # parts sharing a texture share one array
        images[key] = image_rgb(texture)
    if not has_uv:  # a texture but no UVs to look it up: use its mean colour
        return ConstantColor(images[key].reshape(-1, 3).mean(0) / 255.0 * factor)
    corner_uv = np.asarray(uv, np.float64)[:, :2][faces]  # (F, 3, 2)
    return TextureColor(corner_uv, images[key], factor)


def color_source(mesh: trimesh.Trimesh, faces: np.ndarray, linear: bool, images: dict):
    """The colour source of one scene geometry: Texture-, Constant- or CornerColors.

    ``faces`` (F, 3) are the faces as they will be stored (maybe reversed by a mirroring
    transform); per-corner data is gathered through them. ``linear``: the file stores linear
    colours (glTF), which are sRGB-encoded. ``images`` caches texture arrays by image id.
    """
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        return _material_color_source(visual, faces, images)
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind in ("vertex", "face"):
        if visual.kind == "vertex":
            corners = to_rgb01(visual.vertex_colors)[faces]  # (F, 3, 3)
        else:
            corners = np.repeat(to_rgb01(visual.face_colors)[:, None, :], 3, axis=1)  # (F, 3, 3)
        return CornerColors(srgb_encode(corners) if linear else corners)
    return ConstantColor(DEFAULT_RGB)


# ------------------------------------------------------------------------------------------
# loading


def _load_scene(path: Path) -> trimesh.Scene:
    """Check the file, then parse it with trimesh; every failure is a MeshImportError."""
    if not path.exists():
        raise MeshImportError(f"{path}: no such file")
    if path.is_dir():
        raise MeshImportError(f"{path}: is a directory, not a mesh file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise MeshImportError(f"{path}: unsupported file type '{path.suffix}' "
                              f"(supported: {', '.join(SUPPORTED)})")
    if path.stat().st_size == 0:
        raise MeshImportError(f"{path}: empty file (0 bytes)")
    try:
        scene = trimesh.load_scene(str(path), process=False)
    except Exception as e:  # every parser error: ValueError, KeyError, struct.error, JSON ...
        raise MeshImportError(f"{path}: not a valid {ext[1:].upper()} mesh ({_one_line(e)})") from e
    if len(scene.geometry) == 0:
        raise MeshImportError(f"{path}: not a valid {ext[1:].upper()} mesh (no geometry found)")
    return scene


def scene_parts(scene: trimesh.Scene, linear: bool, source_name: str | None = None) -> list:
    """Every (node, triangle geometry) of ``scene`` in world coordinates, unreferenced
    vertices dropped: a list of (name, vertices (V, 3), faces (F, 3), colour source).

    Parts are ordered by geometry (file order), then by node, so names and order are
    deterministic (trimesh appends random suffixes to some glTF node names, so parts are named
    after their geometry, with "#k" for the k-th extra instance)."""
    parts, images, seen = [], {}, {}
    unused = [0]  # vertices no face uses, over every geometry
    nodes_of = scene.graph.geometry_nodes
    for geom_name, geom in scene.geometry.items():
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # point clouds, paths, empty meshes
        for node in nodes_of.get(geom_name, []):
            matrix, _ = scene.graph[node]  # (4, 4) node -> world
            faces = np.asarray(geom.faces, np.int64)
            if np.linalg.det(matrix[:3, :3]) < 0:  # a mirroring transform: keep normals outward
                faces = faces[:, ::-1]
            source = color_source(geom, faces, linear, images)
            used, faces = np.unique(faces, return_inverse=True)  # drop unreferenced vertices
            unused[0] += len(geom.vertices) - len(used)
            vertices = trimesh.transformations.transform_points(np.asarray(geom.vertices)[used], matrix)
            k = seen[geom_name] = seen.get(geom_name, 0) + 1
            parts.append((geom_name if k == 1 else f"{geom_name}#{k}", vertices,
                          faces.reshape(-1, 3), source))
    if unused[0]:
        warnings.warn(f"{source_name or 'mesh'}: dropped {unused[0]} vertices that no face uses",
                      MeshImportWarning, stacklevel=2)
    return parts


def _select_faces(source, keep: np.ndarray):
    """A colour source restricted to the faces where ``keep`` (per-face data follows the faces)."""
    if isinstance(source, CornerColors):
        return CornerColors(source.corners[keep])
    if isinstance(source, TextureColor):
        return TextureColor(source.corner_uv[keep], source.image, source.factor)
    return source  # a constant colour


OUTLIER_FACTOR = 20.0  # a vertex farther from the median than 20x the 99th-percentile distance is stray


def drop_far_vertices(parts: list, path) -> list:
    """Parts without the faces that use a vertex far from all the others (a stray vertex from an
    export bug would otherwise set the bounding box: the object shrinks to a dot and imports as
    empty). Robust: distances to the median vertex against their 99th percentile. Warns with the
    counts; raises MeshImportError when nothing would be left."""
    everything = np.concatenate([v for _, v, _, _ in parts])
    d = np.linalg.norm(everything - np.median(everything, axis=0), axis=1)
    radius = np.quantile(d, 0.99)
    if not radius > 0 or d.max() <= OUTLIER_FACTOR * radius:
        return parts
    out, n_far, n_faces = [], 0, 0
    for name, v, f, src in parts:
        far = np.linalg.norm(v - np.median(everything, axis=0), axis=1) > OUTLIER_FACTOR * radius
        keep = ~far[f].any(axis=1)
        n_far, n_faces = n_far + int(far.sum()), n_faces + int((~keep).sum())
        if keep.any():
            used, faces = np.unique(f[keep], return_inverse=True)
            out.append((name, v[used], faces.reshape(-1, 3), _select_faces(src, keep)))
    if not out:
        raise MeshImportError(f"{path}: every face uses a stray vertex; nothing is left to import")
    warnings.warn(f"{path}: removed {n_far} vertices far from the rest (over {OUTLIER_FACTOR:g}x the typical "
                  f"distance from the centre, up to {d.max():.3g} vs {radius:.3g}) and the {n_faces} faces that used "
                  "them", MeshImportWarning, stacklevel=2)
    return out


def normalize_transform(vertices: np.ndarray) -> np.ndarray:
    """4x4 similarity (float64) that centres the bounding box of ``vertices`` (V, 3) at the
    origin and scales its largest side to 2 * HALF_EXTENT."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    scale = 2 * HALF_EXTENT / np.max(hi - lo)
    transform = np.eye(4)
    transform[:3, :3] *= scale
    transform[:3, 3] = -(lo + hi) / 2 * scale
    return transform


def load_colored_mesh(path) -> tuple:
    """Load a GLB / glTF / OBJ(+MTL) / PLY file into the data frame.

    Returns ``(cmesh, transform)``: a ``ColoredMesh`` with one part per scene geometry instance
    (no shared atlas), already moved into the data frame, and the (4, 4) float64 map from the
    file's world frame to the data frame. Raises MeshImportError on any bad input.
    """
    path = Path(path)
    ext = path.suffix.lower()
    scene = _load_scene(path)
    try:
        parts = scene_parts(scene, linear=ext in LINEAR_COLOR_FORMATS, source_name=str(path))
    except Exception as e:  # a malformed visual / material trimesh accepted but we cannot read
        raise MeshImportError(f"{path}: unreadable geometry or material ({_one_line(e)})") from e
    if not parts:
        kinds = sorted({type(g).__name__ for g in scene.geometry.values()})
        raise MeshImportError(f"{path}: no triangle faces (only {', '.join(kinds)} geometry)")
    all_vertices = np.concatenate([v for _, v, _, _ in parts])  # (V, 3) referenced vertices
    bad = ~np.isfinite(all_vertices).all(axis=1)
    if bad.any():
        raise MeshImportError(f"{path}: {bad.sum()} of {len(bad)} vertices have NaN or inf coordinates")
    parts = drop_far_vertices(parts, path)
    all_vertices = np.concatenate([v for _, v, _, _ in parts])
    extent = np.max(all_vertices.max(axis=0) - all_vertices.min(axis=0))
    if not extent > 1e-12 * max(1.0, np.abs(all_vertices).max()):
        raise MeshImportError(f"{path}: degenerate mesh (all vertices coincide, zero extent)")
    transform = normalize_transform(all_vertices)
    cmesh = ColoredMesh.from_parts([
        (name, trimesh.Trimesh(trimesh.transformations.transform_points(v, transform), f, process=False), src)
        for name, v, f, src in parts
    ])
    return cmesh, transform


# ------------------------------------------------------------------------------------------
# one object, many files


def mesh_example(cmesh: ColoredMesh, transform: np.ndarray, source: str, spec: SampleSpec,
                 seed: int = 0, occupancy: str | None = None) -> dict:
    """The arrays of one imported object (io.py format) from an already loaded mesh; ``occupancy``:
    the inside test (occupancy.py; default ``occupancy_method()``)."""
    rng = np.random.default_rng(seed)
    method = occupancy or occupancy_method()
    intersector = ray_intersector(cmesh.mesh) if method == "visibility" else None
    example = make_example(cmesh, spec, rng,
                           inside=lambda p: mesh_occupancy(cmesh.mesh, p, method, intersector=intersector))
    example.update(transform=np.asarray(transform, np.float64),
                   part_names=np.array(cmesh.part_names, dtype=str), source=np.array(source))
    return example


def _import(path, spec: SampleSpec, seed: int) -> tuple:
    """(example, cmesh) of one file; every failure is a MeshImportError."""
    cmesh, transform = load_colored_mesh(path)
    try:
        return mesh_example(cmesh, transform, Path(path).name, spec, seed), cmesh
    except Exception as e:
        raise MeshImportError(f"{path}: sampling failed ({_one_line(e)})") from e


def import_mesh(path, spec: SampleSpec, seed: int = 0) -> dict:
    """Load ``path`` and sample one training example from it (deterministic in file + seed)."""
    return _import(path, spec, seed)[0]


def expand_paths(paths) -> tuple:
    """Files to import: files as given, directories searched recursively for SUPPORTED
    extensions (sorted). Returns (files, failures) where a directory with no mesh is a failure."""
    files, failures = [], []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
            files += found
            if not found:
                failures.append((str(p), f"{p}: directory has no {'/'.join(SUPPORTED)} files"))
        else:
            files.append(p)
    return files, failures


def output_names(files: list, earlier: dict | None = None) -> list:
    """One unique ``.npz`` name per input: ``<stem>.npz``, then ``<stem>_<ext>.npz``, then
    ``<stem>_<ext>_<k>.npz`` for later inputs sharing a stem (cow.obj, cow.glb -> cow, cow_glb).
    ``earlier``: the folder's entries from earlier imports ({file: entry}); a file imported again
    keeps its name (and is replaced), another file never takes a name already in use."""
    earlier = earlier or {}
    again = {e.get("path"): name for name, e in earlier.items()}
    names, taken = [], {name[:-4] for name in earlier}
    for f in map(Path, files):
        if str(f) in again:
            names.append(again[str(f)])
            continue
        with_ext = f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        name, k = (f.stem if f.stem not in taken else with_ext), 2
        while name in taken:
            name, k = f"{with_ext}_{k}", k + 1
        taken.add(name)
        names.append(f"{name}.npz")
    return names


def import_files(paths, out_dir, spec: SampleSpec, seed: int = 0, progress: bool = True) -> tuple:
    """Import every file (directories: recursively) into ``out_dir/<stem>.npz`` + ``index.json``.

    Returns ``(entries, failures)``: the index.json entries of the objects written, and a
    ``(path, one-line message)`` per input that could not be imported. A failure never leaves a
    partial file (``io.save_object`` is atomic). The folder's manifest (``io.open_dataset``): a
    later import with the same settings adds to it (``index.json`` lists every object), other
    settings are refused. Every object uses the same ``seed``, so a file's arrays do not depend
    on which other files are imported with it.
    """
    out_dir = Path(out_dir)
    files, failures = expand_paths(paths)
    if not files:
        return [], failures
    settings, info = {"seed": seed, "spec": spec.to_dict()}, {"ray_backend": ray_backend(),
                                                               "occupancy": occupancy_method()}
    created = not out_dir.exists()
    earlier = open_dataset(out_dir, "import", settings, **info)
    entries = []
    for path, name in tqdm(list(zip(files, output_names(files, earlier))), desc="import", unit="file",
                           disable=not progress):
        try:
            example, cmesh = _import(path, spec, seed)
            data_io.save_object(out_dir / name, example)
        except MeshImportError as e:
            failures.append((str(path), str(e)))
            continue
        except Exception as e:  # a bug or an exotic file: report it, keep going
            failures.append((str(path), f"{path}: import failed ({_one_line(e)})"))
            continue
        entries.append({"file": name, "source": path.name, "path": str(path),
                        "n_faces": int(len(cmesh.mesh.faces)), "n_parts": len(cmesh.part_names),
                        "inside_fraction": round(float(example["occ_labels"].mean()), 4)})
    if not entries and not earlier:  # every file failed: leave no data set behind
        (out_dir / "index.json").unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        return entries, failures
    close_dataset(out_dir, {**earlier, **{e["file"]: e for e in entries}}, "import", settings, **info)
    return entries, failures
