"""The paper-format evaluation's protocol (``Protocol``), the fixed cameras every asset and ground
truth is rendered from (``eval_cameras``) and its test set with the reference renders
(``paper_test_set``). Shared by paper.py (generation) and paper_ablations.py (the autoencoder);
the protocol itself is written down in paper.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SampleSpec
from ..data.images import load_image
from ..data.render import intrinsics, look_at, render_views
from .test_set import POINTS, held_out, input_view, occupancy_queries, surface_points


@dataclass
class Protocol:
    split: str = "test"
    n: int = 56
    input_res: int = 64  # the towers' training resolution
    views: int = 4
    view_res: int = 128
    elevation_deg: float = 20.0
    radius: float = 4.6
    fov_deg: float = 40.0
    mesh_res: int = 64
    steps: int = 25
    seed: int = 0
    background: str = "white"


def eval_cameras(p: Protocol) -> np.ndarray:
    """(views, 4, 4) the fixed cameras every asset and ground truth is rendered from."""
    az = np.deg2rad(45.0 + 360.0 * np.arange(p.views) / p.views)
    el = np.deg2rad(p.elevation_deg)
    eyes = p.radius * np.stack([np.cos(el) * np.sin(az), np.full_like(az, np.sin(el)), np.cos(el) * np.cos(az)], 1)
    return np.stack([look_at(e) for e in eyes])


@dataclass
class TestObject:
    index: int
    category: str
    obj: object
    image: object  # PIL, the pipeline's input
    gt_views: np.ndarray  # (views, H, W, 4) uint8
    gt_points: np.ndarray  # (POINTS["paper"].surface, 3) on the visible surface
    queries: np.ndarray  # (POINTS["paper"].iou, 3)
    inside: np.ndarray  # (POINTS["paper"].iou,) exact occupancy


def paper_test_set(p: Protocol, seed: int | None = None) -> list:
    """The test set with its inputs and reference renders (deterministic; test_set.py's objects)."""
    cams, out = eval_cameras(p), []
    for item in held_out(p.split, p.n, "paper", seed=seed):
        rgba, _ = input_view(item, p.input_res, SampleSpec(fov_deg=p.fov_deg))
        gt_views, _ = render_views(item.obj.colored_mesh(), cams, intrinsics(p.view_res, p.fov_deg), p.view_res)
        gt_points, _ = surface_points(item, POINTS["paper"].surface)
        queries, inside = occupancy_queries(item, POINTS["paper"].iou)
        out.append(TestObject(item.index, item.category, item.obj, load_image(rgba), gt_views, gt_points, queries,
                              inside))
    return out
