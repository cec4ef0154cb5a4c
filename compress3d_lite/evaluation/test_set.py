"""The held-out test sets every evaluator draws from, built by one recipe.

Splits are seed ranges of the toy generator: object ``i`` of a split is
``make_toy_object(SPLITS[split], i)``, i = 0 .. n-1. The shipped checkpoints train on seed 0, so
"val" (seed 500) and "test" (seed 1000) are objects the models have never seen; categories cycle,
so n = 56 is 4 objects of each of the 14 categories.

Each evaluator draws its random choices (surface samples, the input camera, occupancy queries)
from its own stream, ``np.random.default_rng([split seed, i, STREAMS[evaluator]])``, so a change
to one evaluator's draws never moves another's numbers. ``POINTS`` holds how many points each
evaluator measures an object at.

    for item in held_out("test", 56, "generate"):
        rgba, camera = input_view(item, 64)          # one view at a random orbit camera
        points, colors = surface_points(item, 512)   # the visible surface
        queries, inside = occupancy_queries(item, 50_000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..config import SampleSpec
from ..data.render import intrinsics, orbit_cameras, render_views
from ..data.sampling import sample_surface
from ..data.toyshapes import ToyObject, make_toy_object

SPLITS = {"train": 0, "val": 500, "test": 1000}  # the generator seed of each split
STREAMS = {"vae": 3, "embed": 4, "generate": 5, "paper": 8}  # each evaluator's random stream


class EvalPoints(NamedTuple):
    """How many points an evaluator measures each object at."""

    iou: int  # occupancy queries (IoU)
    surface: int  # surface samples, each side (Chamfer-L1, F-score, colour)


# Each evaluator's point counts, the one place they are set. The VAE's are denser (the Occupancy
# Networks protocol's 100,000 queries): a reconstruction is one decode per object, so it can afford
# them, and its Chamfer must resolve the finer error of a reconstruction. Generation and the paper's
# protocol decode several variants per object (with and without the prior, guidance grids, sweeps).
POINTS = {
    "vae": EvalPoints(iou=100_000, surface=30_000),
    "generate": EvalPoints(iou=50_000, surface=10_000),
    "paper": EvalPoints(iou=50_000, surface=10_000),
}


@dataclass
class HeldOut:
    """Object ``index`` of a split, and the random generator of one evaluator's draws for it."""

    index: int
    obj: ToyObject
    rng: np.random.Generator

    @property
    def category(self) -> str:
        return self.obj.category


def held_out(split: str, n: int, stream: str, seed: int | None = None, min_n: int = 1) -> list:
    """Objects 0..n-1 of ``split`` (or of the generator ``seed``) with ``stream``'s generators.
    A bad split or n is a ValueError naming the argument."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < min_n:
        raise ValueError(f"`n` must be >= {min_n}")
    seed = SPLITS[split] if seed is None else seed
    return [HeldOut(i, make_toy_object(seed, i), np.random.default_rng([seed, i, STREAMS[stream]]))
            for i in range(n)]


def input_view(item: HeldOut, resolution: int, spec: SampleSpec | None = None) -> tuple:
    """(RGBA (H, W, 4) uint8, cam2world (1, 4, 4)): one view at a random orbit camera drawn from
    the item's generator, rendered as the training views are (camera model of ``spec``)."""
    spec = spec or SampleSpec()
    cam = orbit_cameras(1, item.rng, spec.radius, spec.elevation_deg)
    return render_input(item, cam, resolution, spec), cam


def render_input(item: HeldOut, cam, resolution: int, spec: SampleSpec | None = None):
    """RGBA (H, W, 4) uint8: the item seen from ``cam`` (1, 4, 4), rendered as the training views are."""
    spec = spec or SampleSpec()
    rgba, _ = render_views(item.obj.colored_mesh(), cam, intrinsics(resolution, spec.fov_deg), resolution)
    return rgba[0]


def surface_samples(item: HeldOut, n: int) -> tuple:
    """(points (n, 3), colors (n, 3), part index (n,)) area-uniform on the visible surface (faces
    hidden inside another part are left out), drawn from the item's generator."""
    return sample_surface(item.obj.colored_mesh(), n, item.rng, keep=item.obj.exposed)


def surface_points(item: HeldOut, n: int) -> tuple:
    """(points (n, 3), colors (n, 3)) of ``surface_samples`` (the same draws)."""
    points, colors, _ = surface_samples(item, n)
    return points, colors


def occupancy_queries(item: HeldOut, n: int) -> tuple:
    """(queries (n, 3) uniform in [-1, 1]^3, exact inside (n,) bool), drawn from the item's generator."""
    queries = item.rng.uniform(-1.0, 1.0, size=(n, 3))
    return queries, item.obj.contains(queries)
