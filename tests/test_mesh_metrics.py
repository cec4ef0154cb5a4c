"""Metrics with known answers; meshing a known field (a sphere); mesh files round trip."""

import numpy as np
import pytest
import torch
import trimesh

from compress3d_lite.evaluation import metrics
from compress3d_lite.mesh import (
    MeshingError,
    decode_grid,
    decode_grid_adaptive,
    extract_mesh,
    grid_coords,
    marching_cubes,
    save_mesh,
)

# ------------------------------------------------------------------------------------------
# metrics


def sphere_points(n, radius, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * v / np.linalg.norm(v, axis=1, keepdims=True)


def test_identical_sets_are_perfect():
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    occ = pts[:, 0] > 0
    assert metrics.iou(occ, occ) == 1.0
    assert metrics.chamfer_l1(pts, pts) == 0.0
    assert metrics.f_score(pts, pts) == (1.0, 1.0, 1.0)
    assert metrics.psnr(pts, pts) == float("inf")


def test_iou_known_overlap():
    pred, gt = np.zeros(100, bool), np.zeros(100, bool)
    pred[:60], gt[30:] = True, True  # intersection 30, union 100
    assert metrics.iou(pred, gt) == pytest.approx(0.3)
    assert metrics.iou(np.zeros(10, bool), np.zeros(10, bool)) == 1.0  # both empty: exactly right
    assert metrics.iou(pred, ~pred) == 0.0
    with pytest.raises(ValueError):
        metrics.iou(pred, gt[:50])


def test_shifted_sparse_grid_gives_the_shift_exactly():
    # points 0.2 apart, shifted by 0.01: every nearest neighbour is the point's own copy
    g = np.linspace(-0.8, 0.8, 9)
    a = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    for shift, f in ((0.01, 1.0), (0.03, 0.0)):
        b = a + [shift, 0, 0]
        assert metrics.chamfer_l1(a, b) == pytest.approx(shift)
        assert metrics.f_score(a, b)[0] == f


def test_concentric_spheres():
    # dense samples on spheres of radius 0.5 and 0.55: every nearest-neighbour distance is just
    # over 0.05, so Chamfer-L1 ~ 0.05 and nothing lies within 0.02; radius 0.51: all but the
    # points in the rare gaps of the random sampling do
    a = sphere_points(20000, 0.5, seed=1)
    far, near = sphere_points(20000, 0.55, seed=2), sphere_points(20000, 0.51, seed=3)
    m = metrics.surface_metrics(a, far)
    assert 0.05 <= m["chamfer_l1"] < 0.052
    assert m["f_score"] == 0.0
    m = metrics.surface_metrics(a, near)
    assert 0.01 <= m["chamfer_l1"] < 0.013
    assert m["f_score"] > 0.99 and m["precision"] > 0.99 and m["recall"] > 0.99
    # half of the prediction missing: precision stays 1, recall drops to ~0.5
    half = a[a[:, 0] > 0]
    f, p, r = metrics.f_score(half, a)
    assert p == 1.0 and 0.45 < r < 0.55 and f == pytest.approx(2 * p * r / (p + r))


def test_psnr_of_known_noise():
    gt = np.random.default_rng(0).uniform(0.2, 0.8, (100000, 3))
    assert metrics.psnr(gt + 0.1, gt) == pytest.approx(20.0)  # MSE 0.01
    noisy = gt + np.random.default_rng(1).normal(0, 0.05, gt.shape)  # MSE 0.0025: 26.02 dB
    assert metrics.psnr(noisy, gt) == pytest.approx(10 * np.log10(1 / 0.0025), abs=0.05)
    with pytest.raises(ValueError):
        metrics.psnr(gt[:10], gt)


# ------------------------------------------------------------------------------------------
# meshing a known field


class SphereField(torch.nn.Module):
    """A stand-in for the VAE with the same ``query`` interface: the field of a ball.

    logit = sharpness * (radius - |x - centre|), colour = (x + 1) / 2."""

    def __init__(self, radius=0.6, centre=(0.1, -0.05, 0.0), sharpness=20.0):
        super().__init__()
        self.radius, self.sharpness = radius, sharpness
        self.register_buffer("centre", torch.tensor(centre))

    def query(self, planes, xyz):  # planes are ignored; xyz (B, M, 3)
        d = (xyz - self.centre).norm(dim=-1)
        return self.sharpness * (self.radius - d), ((xyz + 1) / 2).clamp(0, 1)


PLANES = torch.zeros(1, 3, 1, 2, 2)


def test_grid_coords_are_voxel_centres():
    c = grid_coords(4)
    assert np.allclose(c, [-0.75, -0.25, 0.25, 0.75])


def test_sphere_field_meshes_to_a_closed_sphere_of_the_right_radius():
    field = SphereField()
    mesh = extract_mesh(field, PLANES, res=64)
    centre = field.centre.numpy()
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(r.mean() - 0.6) < 0.005 and r.std() < 0.005
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # normals point out
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6 ** 3, rel=0.02)
    rgb = mesh.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(rgb - (mesh.vertices + 1) / 2).max() <= 0.5 / 255 + 1e-6  # colour head at the vertices


def test_adaptive_decode_agrees_with_dense():
    field = SphereField(radius=0.5, sharpness=50.0)
    dense = decode_grid(field, PLANES, 64)
    fine, fraction = decode_grid_adaptive(field, PLANES, 64, stride=4, return_fraction=True)
    assert fraction < 0.5
    assert np.array_equal(dense > 0, fine > 0)
    near = np.abs(dense) < 5  # wherever the surface is, the values are exact
    assert np.array_equal(dense[near], fine[near])
    v1, f1 = marching_cubes(dense)
    v2, f2 = marching_cubes(fine)
    assert np.array_equal(v1, v2) and np.array_equal(f1, f2)


def test_a_shape_touching_the_domain_boundary_still_closes():
    mesh = extract_mesh(SphereField(radius=1.2, centre=(0, 0, 0)), PLANES, res=32)
    assert mesh.is_watertight and mesh.volume > 0


@pytest.mark.parametrize("radius, where", [(-0.1, "outside"), (5.0, "inside")])
def test_empty_or_full_field_is_a_clear_error(radius, where):
    with pytest.raises(MeshingError, match=f"every grid point is {where}"):
        extract_mesh(SphereField(radius=radius), PLANES, res=16)


# ------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj"])
def test_saved_meshes_keep_geometry_and_colours(tmp_path, suffix):
    mesh = extract_mesh(SphereField(), PLANES, res=24)
    path = save_mesh(mesh, tmp_path / f"ball{suffix}")
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.faces) == len(mesh.faces)
    assert np.allclose(back.bounds, mesh.bounds, atol=1e-5)
    assert back.visual.kind == "vertex"
    a = np.asarray(mesh.visual.vertex_colors[:, :3], float)
    order = np.lexsort(np.round(back.vertices, 5).T)  # the files may reorder vertices
    b = np.asarray(back.visual.vertex_colors[order][:, :3], float)
    a = a[np.lexsort(np.round(mesh.vertices, 5).T)]
    if suffix == ".glb":  # stored linear: compare after our own sRGB round trip (8-bit linear)
        from compress3d_lite.data.mesh_import import srgb_encode

        b = srgb_encode(b / 255.0) * 255
        assert np.abs(a - b).max() < 12 and np.abs(a - b).mean() < 2
    else:
        assert np.abs(a - b).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ball{suffix}"]  # no temporary files left


def test_glb_colours_survive_our_own_import(tmp_path):
    """Colours are sRGB in the library, linear in glTF: writing then importing gives them back."""
    from compress3d_lite.data.mesh_import import load_colored_mesh

    mesh = extract_mesh(SphereField(), PLANES, res=24)
    cmesh, transform = load_colored_mesh(save_mesh(mesh, tmp_path / "ball.glb"))
    pts, cols, _ = cmesh.sample_surface(2000, seed=0)
    pts = trimesh.transformations.transform_points(pts, np.linalg.inv(transform))  # back to the file frame
    assert np.abs(cols - (pts + 1) / 2).mean() < 0.02


def test_unsupported_suffix_writes_nothing(tmp_path):
    mesh = extract_mesh(SphereField(), PLANES, res=16)
    with pytest.raises(MeshingError, match="unsupported output format"):
        save_mesh(mesh, tmp_path / "ball.stl")
    assert list(tmp_path.iterdir()) == []


def test_worst_rows_come_first_and_a_missing_value_is_the_worst():
    from compress3d_lite.evaluation.report import worst

    iou = [0.9, 0.4, None, 0.7, float("nan"), 0.2]
    assert worst(iou, k=4) == [2, 4, 5, 1]  # missing first (in order), then lowest
    assert worst([0.01, 0.05, 0.02], k=1, higher_is_better=False) == [1]  # a distance: largest is worst
    assert worst([1.0, 2.0], k=5) == [0, 1]  # k larger than the list
