"""Toy objects: exact occupancy, colours, rendering and reproducibility."""

import numpy as np
import pytest
import trimesh

from compress3d_lite.config import SampleSpec
from compress3d_lite.data import CATEGORIES, make_toy_object, object_rng, toy_example
from compress3d_lite.data.io import npz_bytes
from compress3d_lite.data.primitives import Box, ConvexPolytope, Ellipsoid, Frustum, Torus, Tube, prism, rot, similarity
from compress3d_lite.data.render import first_hits, ray_intersector, unproject_depth
from compress3d_lite.data.toyshapes import HALF_EXTENT

SPEC = SampleSpec(n_points=2048, n_uniform=4096, n_near=4096, views=2, resolution=64)


def test_at_least_12_composite_categories():
    assert len(CATEGORIES) >= 12
    for i, name in enumerate(CATEGORIES):
        obj = make_toy_object(0, i)
        assert obj.category == name
        assert len(obj.parts) >= 3, f"{name} is not a composite object"


@pytest.mark.parametrize("primitive", [
    Box((0.5, 0.3, 0.7), similarity((0.1, 0, 0), rot("y", 30))),
    Ellipsoid((0.5, 0.2, 0.3), similarity(rotate=rot("x", 20))),
    Frustum(0.5, 0.2, 0.8), Frustum(0.4, 0.0, 0.6, similarity(rotate=rot("z", 90))),
    Tube(0.3, 0.45, 0.6), Torus(0.4, 0.1), Torus(0.4, 0.1, half=True, transform=similarity(scale=1.5)),
    ConvexPolytope(prism([[-0.5, 0], [0.5, 0], [0, 0.4]], 0.6)),
])
def test_primitive_contains_matches_its_mesh(primitive):
    mesh = primitive.mesh()
    assert mesh.is_watertight
    p = np.random.default_rng(0).uniform(-1, 1, (20000, 3))
    assert (primitive.contains(p) == mesh.contains(p)).mean() > 0.995


@pytest.mark.parametrize("index", range(len(CATEGORIES)))
def test_occupancy_labels_agree_with_trimesh_containment(index):
    obj = make_toy_object(7, index)
    ex = toy_example(obj, SPEC, object_rng(7, index))
    pts, labels = ex["occ_points"].astype(np.float64), ex["occ_labels"]
    inside_mesh = np.zeros(len(pts), bool)
    for m in obj.meshes:  # union of the watertight part meshes
        inside_mesh |= m.contains(pts)
    agreement = (labels == inside_mesh).mean()
    assert agreement >= 0.99, f"{obj.category}: {agreement:.4f}"
    assert 0.02 < labels.mean() < 0.8  # near-surface queries make both classes common


def test_objects_fit_the_data_frame():
    for i in range(len(CATEGORIES)):
        obj = make_toy_object(3, i)
        lo, hi = obj.colored_mesh().mesh.bounds
        assert np.all(lo >= -HALF_EXTENT - 1e-6) and np.all(hi <= HALF_EXTENT + 1e-6)
        assert np.isclose(np.max(hi - lo), 2 * HALF_EXTENT)


@pytest.mark.parametrize("index", [0, 4, 7, 10])
def test_sampled_colours_match_part_colours_and_points_lie_on_their_part(index):
    obj = make_toy_object(1, index)
    ex = toy_example(obj, SPEC, object_rng(1, index))
    parts = ex["point_parts"].astype(int)
    np.testing.assert_allclose(ex["colors"], obj.part_colors[parts], atol=1e-6)
    for k, mesh in enumerate(obj.meshes):
        sel = parts == k
        if sel.any():
            _, dist, _ = trimesh.proximity.closest_point(mesh, ex["points"][sel][:200])
            assert dist.max() < 1e-4, f"{obj.part_names[k]}: sample {dist.max():.2e} off its part"
    # no sample lies inside another part (samples are on the visible union surface)
    for k, prim in enumerate(obj.parts):
        other = parts != k
        assert prim.contains(ex["points"][other].astype(np.float64)).mean() < 0.002


def test_render_masks_agree_with_ray_hits_and_depth_lands_on_surface():
    obj = make_toy_object(2, 3)
    ex = toy_example(obj, SPEC, object_rng(2, 3))
    mesh = obj.colored_mesh().mesh
    tm_rays = trimesh.ray.ray_triangle.RayMeshIntersector(mesh)  # independent (rtree) intersector
    res = SPEC.resolution
    for v in range(SPEC.views):
        c2w, K = ex["cam2world"][v], ex["intrinsics"][v]
        vv, uu = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
        pix = np.stack([uu.ravel() + 0.5, vv.ravel() + 0.5, np.ones(res * res)], 1)
        d = pix @ np.linalg.inv(K).T @ c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        hit = tm_rays.intersects_any(np.broadcast_to(c2w[:3, 3], d.shape), d)
        mask = ex["images"][v, ..., 3].ravel() > 0
        assert (mask == hit).mean() > 0.995
        assert mask.sum() > 50
        pts = unproject_depth(ex["depths"][v], c2w, K)
        _, dist, _ = trimesh.proximity.closest_point(mesh, pts[::7])
        assert np.percentile(dist, 99) < 2e-3


def test_first_hits_distance_and_barycentrics_are_exact():
    mesh = trimesh.creation.box(extents=(1, 1, 1))
    o = np.array([[0.1, 0.2, -3.0], [0.3, -0.1, -3.0], [5.0, 5.0, -3.0]])
    d = np.tile([0.0, 0.0, 1.0], (3, 1))
    hit, face, dist, bary = first_hits(ray_intersector(mesh), mesh, o, d)
    assert hit.tolist() == [True, True, False]
    np.testing.assert_allclose(dist[:2], 2.5, atol=1e-6)
    recon = np.einsum("nk,nkc->nc", bary[:2], mesh.triangles[face[:2]])
    np.testing.assert_allclose(recon, o[:2] + 2.5 * d[:2], atol=1e-6)


def test_rendered_colours_are_shaded_part_colours():
    obj = make_toy_object(0, 1)  # table: few flat parts
    ex = toy_example(obj, SPEC, object_rng(0, 1))
    rgb = ex["images"][..., :3][ex["images"][..., 3] > 0].astype(float) / 255
    # every covered pixel is a part colour times a shading factor in [AMBIENT, 1]
    best = np.zeros(len(rgb))
    for c in obj.part_colors:
        s = (rgb @ c) / max(c @ c, 1e-9)
        best = np.maximum(best, 1 - np.abs(rgb - s[:, None] * c).max(1) * ((s >= 0.3) & (s <= 1.01)))
    assert (best > 0.97).mean() > 0.98


def test_same_seed_same_bytes_different_seed_different_bytes():
    a = npz_bytes(toy_example(make_toy_object(5, 2), SPEC, object_rng(5, 2)))
    b = npz_bytes(toy_example(make_toy_object(5, 2), SPEC, object_rng(5, 2)))
    c = npz_bytes(toy_example(make_toy_object(6, 2), SPEC, object_rng(6, 2)))
    assert a == b and a != c


def test_random_proportions_and_palettes_vary_within_a_category():
    objs = [make_toy_object(0, i) for i in range(0, 5 * len(CATEGORIES), len(CATEGORIES))]
    assert len({o.category for o in objs}) == 1
    colours = np.stack([o.part_colors[0] for o in objs])
    extents = np.stack([np.ptp(o.colored_mesh().mesh.vertices, axis=0) for o in objs])
    assert np.ptp(colours, axis=0).max() > 0.2 and np.ptp(extents, axis=0).max() > 0.1


def test_unknown_category_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown toy category 'spaceship'"):
        make_toy_object(0, 0, category="spaceship")


def test_default_cameras_keep_the_whole_object_box_in_view():
    from compress3d_lite.data.render import intrinsics, orbit_cameras, render_views
    from compress3d_lite.data.surface import ColoredMesh, ConstantColor

    box = trimesh.creation.box(extents=(1.8, 1.8, 1.8))  # the largest object the data frame allows
    cm = ColoredMesh.from_parts([("box", box, ConstantColor((1, 0, 0)))])
    spec = SampleSpec()
    cams = orbit_cameras(8, np.random.default_rng(0), spec.radius, spec.elevation_deg)
    images, _ = render_views(cm, cams, intrinsics(64, spec.fov_deg), 64)
    alpha = images[..., 3]
    assert alpha.any(axis=(1, 2)).all()
    border = np.concatenate([alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1]], axis=1)
    assert not border.any(), "object box touches the image border"


def test_rtree_fallback_renders_the_same_views(monkeypatch):
    from compress3d_lite.data import render

    obj = make_toy_object(0, 5)
    spec = SampleSpec(n_points=256, n_uniform=256, n_near=256, views=2, resolution=40)
    fast = toy_example(obj, spec, object_rng(0, 5))
    monkeypatch.setattr(render, "ray_backend", lambda: "rtree")
    assert "ray_triangle" in type(render.ray_intersector(obj.colored_mesh().mesh)).__module__
    slow = toy_example(obj, spec, object_rng(0, 5))
    same_mask = (fast["images"][..., 3] == slow["images"][..., 3]).mean()
    assert same_mask > 0.998
    both = (fast["depths"] > 0) & (slow["depths"] > 0)
    np.testing.assert_allclose(fast["depths"][both], slow["depths"][both], atol=1e-4)
