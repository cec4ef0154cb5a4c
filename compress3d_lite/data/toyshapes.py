"""Toy dataset ("toyshapes"): procedurally generated coloured composite objects.

Every object is a union of solid primitives (``primitives.py``) with one colour per part, built
by a category recipe with random proportions and a random colour palette. Because the object is
a union of analytic solids, its occupancy is exact: a point is inside when it is inside any
part. One object is fully determined by ``(seed, index)``, whatever the number of workers.

    obj = make_toy_object(seed=0, index=3)
    obj.category, obj.part_names, obj.contains(points), obj.colored_mesh()

The recipes put y up, like glTF. After building, every object is centred and scaled so that
its bounding box fits in [-0.9, 0.9]^3 (docs/design.md §2); ``obj.transform`` is that map.
"""

from __future__ import annotations

import colorsys
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..config import HALF_EXTENT, SampleSpec
from .io import close_dataset, end_with_parent, open_dataset, save_object
from .primitives import Box, ConvexPolytope, Ellipsoid, Frustum, Primitive, Torus, Tube, prism, rot, similarity
from .render import ray_backend
from .sampling import make_example
from .surface import ColoredMesh, ConstantColor

# ------------------------------------------------------------------------------------------
# colour palettes


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, np.clip(s, 0, 1), np.clip(v, 0, 1)))


class Palette:
    """A random harmonious palette (analogous, complementary or triadic hues) plus named
    material colours with a little jitter (wood, metal, snow, dark, ...)."""

    SCHEMES = {"analogous": (0.0, 0.08, -0.08), "complementary": (0.0, 0.5, 0.04),
               "triadic": (0.0, 1 / 3, 2 / 3)}

    def __init__(self, rng):
        self.rng = rng
        base = rng.uniform()
        offsets = self.SCHEMES[rng.choice(list(self.SCHEMES))]
        self.main = [_hsv(base + o, rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95)) for o in offsets]

    def __getitem__(self, i):
        return self.main[i % len(self.main)]

    def named(self, name):
        r = self.rng
        h, s, v = {"wood": (0.08, 0.55, 0.5), "metal": (0.6, 0.05, 0.7), "snow": (0.6, 0.03, 0.97),
                   "dark": (0.6, 0.2, 0.12), "orange": (0.07, 0.9, 0.95), "green": (0.33, 0.7, 0.55),
                   "cream": (0.12, 0.2, 0.92), "glass": (0.55, 0.35, 0.9)}[name]
        return _hsv(h + r.uniform(-0.03, 0.03), s + r.uniform(-0.1, 0.1), v + r.uniform(-0.12, 0.08))


# ------------------------------------------------------------------------------------------
# category recipes: rng, palette -> list of (part name, primitive, rgb)


def _cyl(r, h, at=(0, 0, 0), rotate=None):
    return Frustum(r, r, h, similarity(at, rotate))


def mug(rng, pal):
    r_out, h = rng.uniform(0.3, 0.5), rng.uniform(0.6, 1.1)
    wall = rng.uniform(0.05, 0.09)
    body, handle = pal[0], pal[int(rng.integers(0, 2))]
    major = rng.uniform(0.18, 0.3) * h
    return [
        ("body", Tube(r_out - wall, r_out, h, similarity((0, h / 2, 0))), body),
        ("bottom", _cyl(r_out, wall, (0, wall / 2, 0)), body),
        ("handle", Torus(major, rng.uniform(0.035, 0.06), half=True,
                         transform=similarity((r_out - wall / 2, h * 0.55, 0))), handle),
    ]


def table(rng, pal):
    w, d, h, t = rng.uniform(1.0, 1.8), rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.0), rng.uniform(0.05, 0.1)
    top, legs = (pal.named("wood"), pal.named("wood")) if rng.uniform() < 0.5 else (pal[0], pal[1])
    leg_r, inset = rng.uniform(0.03, 0.07), rng.uniform(0.08, 0.15)
    parts = [("top", Box((w, t, d), similarity((0, h - t / 2, 0))), top)]
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        at = (sx * (w / 2 - inset), (h - t) / 2, sz * (d / 2 - inset))
        leg = _cyl(leg_r, h - t, at) if rng.uniform() < 0.5 else Box((2 * leg_r, h - t, 2 * leg_r), similarity(at))
        parts.append((f"leg{i}", leg, legs))
    return parts


def chair(rng, pal):
    w, d, seat_h, t = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0.7, 0.9), rng.uniform(0.06, 0.12)
    back_h, leg = rng.uniform(0.6, 1.0), rng.uniform(0.04, 0.07)
    seat, frame = pal[0], pal.named("wood") if rng.uniform() < 0.6 else pal[1]
    parts = [("seat", Box((w, t, d), similarity((0, seat_h - t / 2, 0))), seat),
             ("back", Box((w, back_h, t), similarity((0, seat_h + back_h / 2, -d / 2 + t / 2))), seat)]
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        at = (sx * (w / 2 - leg), (seat_h - t) / 2, sz * (d / 2 - leg))
        parts.append((f"leg{i}", Box((2 * leg, seat_h - t, 2 * leg), similarity(at)), frame))
    return parts


def lamp(rng, pal):
    base_r, base_h = rng.uniform(0.25, 0.4), rng.uniform(0.05, 0.1)
    pole_h, shade_h = rng.uniform(0.8, 1.4), rng.uniform(0.35, 0.6)
    shade_bottom = rng.uniform(0.3, 0.5)
    metal = pal.named("metal") if rng.uniform() < 0.5 else pal[1]
    return [
        ("base", Frustum(base_r, base_r * rng.uniform(0.6, 0.9), base_h, similarity((0, base_h / 2, 0))), metal),
        ("pole", _cyl(rng.uniform(0.025, 0.045), pole_h, (0, base_h + pole_h / 2, 0)), metal),
        ("shade", Frustum(shade_bottom, shade_bottom * rng.uniform(0.4, 0.75), shade_h,
                          similarity((0, base_h + pole_h + shade_h * 0.3, 0))), pal[0]),
    ]


def snowman(rng, pal):
    r = sorted(rng.uniform(0.2, 0.45, size=3), reverse=True)
    y0 = r[0]
    y1 = y0 + r[0] * 0.8 + r[1] * 0.8
    y2 = y1 + r[1] * 0.8 + r[2] * 0.8
    snow, dark = pal.named("snow"), pal.named("dark")
    parts = [("bottom", Ellipsoid(r[0], similarity((0, y0, 0))), snow),
             ("middle", Ellipsoid(r[1], similarity((0, y1, 0))), snow),
             ("head", Ellipsoid(r[2], similarity((0, y2, 0))), snow),
             ("nose", Frustum(r[2] * 0.18, 0.0, r[2] * rng.uniform(0.8, 1.4),
                              similarity((0, y2, r[2] * 1.2), rot("x", 90))), pal.named("orange"))]
    for i, sx in enumerate((-1, 1)):
        parts.append((f"eye{i}", Ellipsoid(r[2] * 0.13, similarity((sx * r[2] * 0.35, y2 + r[2] * 0.3, r[2] * 0.88))), dark))
    if rng.uniform() < 0.6:
        hat_h = r[2] * rng.uniform(0.8, 1.3)
        parts += [("brim", _cyl(r[2] * 1.1, r[2] * 0.1, (0, y2 + r[2] * 0.85, 0)), pal[0]),
                  ("hat", _cyl(r[2] * 0.7, hat_h, (0, y2 + r[2] * 0.85 + hat_h / 2, 0)), pal[0])]
    return parts


def rocket(rng, pal):
    r, h = rng.uniform(0.15, 0.25), rng.uniform(1.0, 1.6)
    nose_h = rng.uniform(0.3, 0.6)
    fin_span, fin_h = rng.uniform(0.15, 0.3), rng.uniform(0.25, 0.45)
    parts = [("body", _cyl(r, h, (0, h / 2, 0)), pal.named("snow") if rng.uniform() < 0.5 else pal[0]),
             ("nose", Frustum(r, 0.0, nose_h, similarity((0, h + nose_h / 2, 0))), pal[1]),
             ("nozzle", Frustum(r * 0.6, r * 0.8, 0.12, similarity((0, -0.05, 0))), pal.named("metal"))]
    n_fins = int(rng.integers(3, 5))
    fin = prism([[r * 0.9, 0], [r + fin_span, -0.05], [r * 0.9, fin_h]], 0.04)
    for i in range(n_fins):
        parts.append((f"fin{i}", ConvexPolytope(fin, similarity((0, 0, 0), rot("y", 360 * i / n_fins))), pal[2]))
    return parts


def tree(rng, pal):
    trunk_h, trunk_r = rng.uniform(0.3, 0.6), rng.uniform(0.06, 0.12)
    parts = [("trunk", _cyl(trunk_r, trunk_h, (0, trunk_h / 2, 0)), pal.named("wood"))]
    if rng.uniform() < 0.5:  # pine: stacked cones
        y, r = trunk_h * 0.8, rng.uniform(0.5, 0.7)
        for i in range(int(rng.integers(2, 5))):
            h = r * rng.uniform(1.1, 1.5)
            parts.append((f"cone{i}", Frustum(r, 0.0, h, similarity((0, y + h / 2, 0))), pal.named("green")))
            y, r = y + h * 0.45, r * 0.75
    else:  # broadleaf: a blob of ellipsoids
        c = trunk_h + rng.uniform(0.3, 0.45)
        parts.append(("crown", Ellipsoid(rng.uniform(0.35, 0.55, size=3), similarity((0, c, 0))), pal.named("green")))
        for i in range(int(rng.integers(1, 4))):
            off = rng.uniform(-0.3, 0.3, size=3) * [1, 0.6, 1]
            parts.append((f"leaves{i}", Ellipsoid(rng.uniform(0.2, 0.35), similarity((0, c, 0) + off)), pal.named("green")))
    return parts


def mushroom(rng, pal):
    stem_h, stem_r = rng.uniform(0.4, 0.8), rng.uniform(0.08, 0.16)
    cap_r, cap_h = rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.3)
    cap_y = stem_h
    parts = [("stem", Frustum(stem_r * 1.2, stem_r, stem_h, similarity((0, stem_h / 2, 0))), pal.named("cream")),
             ("cap", Ellipsoid((cap_r, cap_h, cap_r), similarity((0, cap_y, 0))), pal[0])]
    for i in range(int(rng.integers(3, 7))):
        a, e = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.2)
        n = np.array([np.cos(e) * np.cos(a), np.sin(e), np.cos(e) * np.sin(a)])
        p = n * [cap_r, cap_h, cap_r]
        parts.append((f"spot{i}", Ellipsoid(cap_r * rng.uniform(0.08, 0.14), similarity(p + [0, cap_y, 0])), pal.named("snow")))
    return parts


def dumbbell(rng, pal):
    bar_l, bar_r = rng.uniform(0.8, 1.4), rng.uniform(0.04, 0.07)
    side = rot("z", 90)  # frusta are along y; the bar lies along x
    parts = [("bar", _cyl(bar_r, bar_l, rotate=side), pal.named("metal"))]
    spheres = rng.uniform() < 0.4
    for i, sx in enumerate((-1, 1)):
        if spheres:
            rr = rng.uniform(0.18, 0.3)
            parts.append((f"weight{i}", Ellipsoid(rr, similarity((sx * bar_l / 2, 0, 0))), pal[0]))
        else:
            rr, t = rng.uniform(0.2, 0.35), rng.uniform(0.1, 0.2)
            parts.append((f"weight{i}", _cyl(rr, t, (sx * (bar_l / 2 - t / 2), 0, 0), side), pal[0]))
            parts.append((f"collar{i}", _cyl(rr * 0.5, t * 0.5, (sx * (bar_l / 2 - t - t / 4), 0, 0), side), pal[1]))
    return parts


def house(rng, pal):
    w, d, h = rng.uniform(0.8, 1.4), rng.uniform(0.7, 1.2), rng.uniform(0.5, 0.9)
    roof_h, over = rng.uniform(0.3, 0.6), rng.uniform(0.03, 0.1)
    roof = prism([[-w / 2 - over, 0], [w / 2 + over, 0], [0, roof_h]], d + 2 * over)
    door_w, door_h = w * rng.uniform(0.15, 0.25), h * rng.uniform(0.45, 0.7)
    parts = [("walls", Box((w, h, d), similarity((0, h / 2, 0))), pal[0]),
             ("roof", ConvexPolytope(roof, similarity((0, h, 0))), pal[1]),
             ("door", Box((door_w, door_h, 0.04), similarity((rng.uniform(-0.2, 0.2) * w, door_h / 2, d / 2))), pal.named("dark"))]
    if rng.uniform() < 0.7:
        cw = rng.uniform(0.08, 0.15)
        parts.append(("chimney", Box((cw, roof_h, cw), similarity((w * 0.25, h + roof_h * 0.6, 0))), pal[2]))
    return parts


def car(rng, pal):
    l, w, h = rng.uniform(1.2, 1.8), rng.uniform(0.6, 0.8), rng.uniform(0.25, 0.4)
    wheel_r, clearance = rng.uniform(0.13, 0.2), rng.uniform(0.08, 0.14)
    cab_l, cab_h = l * rng.uniform(0.4, 0.6), h * rng.uniform(0.7, 1.1)
    body_y = clearance + h / 2 + wheel_r * 0.5
    cab = prism([[-cab_l / 2, 0], [cab_l / 2, 0], [cab_l * 0.35, cab_h], [-cab_l * 0.3, cab_h]], w * 0.9)
    parts = [("body", Box((l, h, w), similarity((0, body_y, 0))), pal[0]),
             ("cabin", ConvexPolytope(cab, similarity((-l * 0.05, body_y + h / 2, 0))), pal.named("glass"))]
    wheel_axis = rot("x", 90)
    for i, (sx, sz) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
        at = (sx * l * 0.32, wheel_r, sz * (w / 2))
        parts.append((f"wheel{i}", _cyl(wheel_r, 0.12, at, wheel_axis), pal.named("dark")))
    return parts


def airplane(rng, pal):
    l, r = rng.uniform(1.4, 2.0), rng.uniform(0.1, 0.16)
    span, chord = rng.uniform(1.2, 2.0), rng.uniform(0.25, 0.4)
    sweep = rng.uniform(0.0, 0.3)
    wing = np.array([[0, 0, -span / 2], [chord, 0, -span / 2], [chord, 0, span / 2], [0, 0, span / 2]])
    wing[[0, 1], 0] += sweep
    wing[[2, 3], 0] += sweep
    wing_v = np.vstack([[0, 0, 0], [chord, 0, 0], wing]) + [0, -0.02, 0]
    wing_v = np.vstack([wing_v, wing_v + [0, 0.04, 0]])
    tail = prism([[-l * 0.45, 0], [-l * 0.3, 0], [-l * 0.47, r * 3.0]], 0.04)
    stab = np.array([[-l * 0.45, 0, -span * 0.2], [-l * 0.35, 0, 0], [-l * 0.45, 0, span * 0.2]])
    stab = np.vstack([stab, stab + [0, 0.03, 0]])
    return [("fuselage", Ellipsoid((l / 2, r, r)), pal[0]),
            ("wings", ConvexPolytope(wing_v - [chord / 2, 0, 0]), pal[1]),
            ("tail", ConvexPolytope(tail), pal[1]),
            ("stabiliser", ConvexPolytope(stab), pal[2])]


def bottle(rng, pal):
    r, h = rng.uniform(0.18, 0.3), rng.uniform(0.6, 1.0)
    shoulder, neck_r, neck_h = rng.uniform(0.15, 0.3), rng.uniform(0.06, 0.1), rng.uniform(0.15, 0.3)
    glass = pal[0]
    parts = [("body", _cyl(r, h, (0, h / 2, 0)), glass),
             ("shoulder", Frustum(r, neck_r, shoulder, similarity((0, h + shoulder / 2, 0))), glass),
             ("neck", _cyl(neck_r, neck_h, (0, h + shoulder + neck_h / 2, 0)), glass),
             ("cap", _cyl(neck_r * 1.15, 0.06, (0, h + shoulder + neck_h + 0.03, 0)), pal[1])]
    if rng.uniform() < 0.7:
        lh = h * rng.uniform(0.3, 0.5)
        parts.append(("label", Tube(r * 0.98, r * 1.02, lh, similarity((0, h * 0.45, 0))), pal[2]))
    return parts


def robot(rng, pal):
    tw, th, td = rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.7), rng.uniform(0.25, 0.4)
    leg_h, head = rng.uniform(0.35, 0.55), rng.uniform(0.2, 0.32)
    metal, accent = pal.named("metal"), pal[0]
    y_t = leg_h + th / 2
    parts = [("torso", Box((tw, th, td), similarity((0, y_t, 0))), accent),
             ("head", Box((head, head, head), similarity((0, leg_h + th + head / 2, 0))), metal),
             ("antenna", _cyl(0.015, 0.15, (0, leg_h + th + head + 0.07, 0)), pal[1]),
             ("antenna_tip", Ellipsoid(0.035, similarity((0, leg_h + th + head + 0.15, 0))), pal[1])]
    for i, sx in enumerate((-1, 1)):
        parts.append((f"eye{i}", Ellipsoid(head * 0.1, similarity((sx * head * 0.22, leg_h + th + head * 0.6, head / 2))), pal.named("dark")))
        parts.append((f"arm{i}", _cyl(0.05, th * 0.9, (sx * (tw / 2 + 0.05), y_t, 0)), metal))
        parts.append((f"leg{i}", Box((0.12, leg_h, 0.14), similarity((sx * tw * 0.25, leg_h / 2, 0))), metal))
    return parts


CATEGORIES = {f.__name__: f for f in (mug, table, chair, lamp, snowman, rocket, tree, mushroom,
                                        dumbbell, house, car, airplane, bottle, robot)}


# ------------------------------------------------------------------------------------------
# the object


@dataclass
class ToyObject:
    category: str
    part_names: list
    parts: list  # Primitive, in the data frame
    part_colors: np.ndarray  # (P, 3) float32 in [0, 1]
    transform: np.ndarray  # (4, 4) recipe frame -> data frame
    meshes: list  # trimesh.Trimesh of each part, in the data frame

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Exact occupancy of the union of the parts: (N, 3) -> (N,) bool."""
        inside = np.zeros(len(points), bool)
        for p in self.parts:
            inside |= p.contains(points)
        return inside

    def exposed(self, points: np.ndarray, part_ids: np.ndarray) -> np.ndarray:
        """True for surface samples of part k that no other part covers (the visible surface
        of the union; samples on overlapping, internal faces are False)."""
        covered = np.zeros(len(points), bool)
        for k, p in enumerate(self.parts):
            others = part_ids != k
            if others.any():
                covered[others] |= p.contains(points[others])
        return ~covered

    def colored_mesh(self) -> ColoredMesh:
        """All parts as one mesh, each part with its constant colour."""
        return ColoredMesh.from_parts(
            [(n, m, ConstantColor(c)) for n, m, c in zip(self.part_names, self.meshes, self.part_colors)]
        )


def _normalise(parts: list[Primitive]) -> tuple:
    """Centre and scale the parts (in place) so that their meshes fit in [-0.9, 0.9]^3.
    Returns the similarity transform and the placed part meshes."""
    meshes = [p.mesh() for p in parts]
    lo = np.min([m.bounds[0] for m in meshes], axis=0)
    hi = np.max([m.bounds[1] for m in meshes], axis=0)
    scale = 2 * HALF_EXTENT / np.max(hi - lo)
    t = similarity(-(lo + hi) / 2 * scale, scale=scale)
    for p, m in zip(parts, meshes):
        p.placed(t)
        m.apply_transform(t)
    return t, meshes


def object_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of object ``index`` of a dataset generated with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def toy_example(obj: ToyObject, spec: SampleSpec, rng: np.random.Generator) -> dict:
    """The arrays of one toy object (``sampling.make_example``) plus its category and parts."""
    example = make_example(obj.colored_mesh(), spec, rng, obj.contains, keep=obj.exposed)
    example.update(category=np.array(obj.category), part_names=np.array(obj.part_names),
                   part_colors=obj.part_colors, transform=obj.transform)
    return example


def make_toy_object(seed: int, index: int, category: str | None = None) -> ToyObject:
    """Object ``index`` of the toy set with ``seed``. Categories cycle through ``CATEGORIES``
    (so any 14 consecutive indices cover every category) unless ``category`` is given."""
    rng = object_rng(seed, index)
    names = list(CATEGORIES)
    category = category or names[index % len(names)]
    if category not in CATEGORIES:
        raise ValueError(f"unknown toy category {category!r}; known: {', '.join(names)}")
    recipe = CATEGORIES[category](rng, Palette(rng))
    parts = [p for _, p, _ in recipe]
    transform, meshes = _normalise(parts)
    colors = np.clip(np.array([c for _, _, c in recipe], np.float32), 0, 1)
    return ToyObject(category, [n for n, _, _ in recipe], parts, colors, transform, meshes)


# ------------------------------------------------------------------------------------------
# writing a dataset folder


def _write_one(job) -> dict:
    """Worker: make, render and save object ``index``; returns its index.json entry."""
    seed, index, spec_dict, out_dir, png = job
    spec = SampleSpec.from_dict(spec_dict)
    obj = make_toy_object(seed, index)
    example = toy_example(obj, spec, object_rng(seed, index))
    name = f"{index:06d}.npz"
    save_object(Path(out_dir) / name, example)
    if png and spec.views:
        for v, image in enumerate(example["images"]):
            Image.fromarray(image).save(Path(out_dir) / "images" / f"{index:06d}_{v}.png")
    return {"file": name, "index": index, "category": obj.category, "n_parts": len(obj.parts)}


def write_toyshapes(n: int, out_dir, spec: SampleSpec | None = None, seed: int = 0, workers: int = 1,
                    png: bool = False, progress: bool = True, start: int = 0) -> list:
    """Generate objects ``start .. start+n-1`` of the toy set with ``seed`` into ``out_dir``
    (one ``NNNNNN.npz`` each, plus ``index.json``; ``png`` also writes the views as PNG files).
    Output bytes do not depend on ``workers``. The folder's manifest (``io.open_dataset``): a
    rerun with the same seed and spec continues it (an interrupted run is finished, more objects
    are added), other settings are refused; ``index.json`` lists every object of the folder."""
    spec = spec or SampleSpec()
    out_dir = Path(out_dir)
    settings = {"seed": seed, "spec": spec.to_dict()}
    info = {"categories": list(CATEGORIES), "ray_backend": ray_backend()}
    done = open_dataset(out_dir, "toyshapes", settings, **info)
    if png:
        (out_dir / "images").mkdir(exist_ok=True)
    jobs = [(seed, i, spec.to_dict(), str(out_dir), png) for i in range(start, start + n)]
    bar = dict(total=n, desc="toyshapes", unit="obj", disable=not progress)
    workers = max(1, min(int(workers), n, os.cpu_count() or 1))
    if workers == 1:
        entries = [_write_one(j) for j in tqdm(jobs, **bar)]
    else:
        with mp.get_context("spawn").Pool(workers, initializer=end_with_parent) as pool:
            entries = list(tqdm(pool.imap(_write_one, jobs, chunksize=4), **bar))
    close_dataset(out_dir, {**done, **{e["file"]: e for e in entries}}, "toyshapes", settings, **info)
    return entries
