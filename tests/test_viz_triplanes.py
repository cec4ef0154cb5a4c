"""Tests for compress3d_lite.viz.triplanes: PCA colours, plane orientation and the triplane explorer.

A fake model with a known field (a ball of radius 0.5 around (0.4, 0, 0), coloured by position)
lets every panel be checked against the truth: a figure that draws the wrong thing fails here."""

import base64
import io

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from compress3d_lite import viz
from compress3d_lite.models.triplane import sample_triplane

CENTRE = np.array([0.4, 0.0, 0.0])


def _png(source: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


class BallModel:
    """decode: identity; query: occupancy logits of a ball (off-centre along x), rgb = position."""

    def decode(self, z):
        return z

    def query(self, planes, xyz):
        d = torch.linalg.vector_norm(xyz - torch.tensor(CENTRE, dtype=xyz.dtype), dim=-1)
        return 20 * (0.5 - d), (xyz + 1) / 2


def _planes(C=4, R=16):
    torch.manual_seed(0)
    return torch.randn(1, 3, C, R, R)


# -- PCA colours and orientation ------------------------------------------------------------


def test_pca_rgb_shares_one_basis_and_stays_in_range():
    maps = _planes()[0]  # (3, C, R, R)
    rgb = viz.pca_rgb(maps)
    assert rgb.shape == (3, 16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # one basis: the same texel features give the same colour on every map
    same = torch.stack([maps[0], maps[0]])
    a = viz.pca_rgb(same)
    assert np.allclose(a[0], a[1])
    # the first component follows the direction of largest variance: a ramp along one channel
    ramp = torch.zeros(1, 3, 8, 8)
    ramp[0, 1] = torch.linspace(-1, 1, 8)[None, :].expand(8, 8) * 10
    ramp[0, 0] = 0.01 * torch.randn(8, 8)
    red = viz.pca_rgb(ramp)[0, ..., 0]
    assert np.all(np.diff(red[0]) >= 0) and red[0, -1] > red[0, 0] + 0.5  # sign fixed: rises with the ramp
    # a basis fitted elsewhere is reused, and a channel mismatch is refused
    basis = viz.pca_basis(maps)
    assert np.allclose(viz.pca_rgb(maps, basis), rgb)
    with pytest.raises(ValueError, match="channels"):
        viz.pca_rgb(torch.randn(1, 5, 4, 4), basis)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        viz.pca_rgb(torch.randn(5, 4, 4))


def test_plane_images_put_each_axis_where_the_titles_say():
    """A feature at (x, y, z) = (+0.75, +0.75, -0.75) appears right and up on xy, right and down on
    xz (x →, z ↑), left and up on yz (z →, y ↑)."""
    R = 8
    p = torch.zeros(3, 1, R, R)
    ix, iy, iz = 7, 7, 0  # +x, +y, -z
    p[0, 0, ix, iy] = p[1, 0, ix, iz] = p[2, 0, iy, iz] = 1.0
    for k, (row, col) in enumerate([(0, 7), (7, 7), (0, 0)]):
        im = viz.plane_image(p[k, 0].numpy(), k)
        assert np.argwhere(im == 1).tolist() == [[row, col]], viz.PLANE_VIEWS[k]
    with pytest.raises(ValueError, match="triplane"):
        viz.triplane_rgb(torch.randn(2, 4, 8, 8))


# -- the explorer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def explorer():
    return viz.triplane_explorer(BallModel(), planes=_planes(), resolution=16, n_slices=5, mesh_resolution=24)


def test_explorer_draws_planes_channels_slices_and_the_mesh_of_one_object(explorer):
    kinds = [type(t).__name__ for t in explorer.data]
    assert kinds == ["Image"] * 3 + ["Heatmap"] * 3 + ["Image"] * 6 + ["Mesh3d"] + ["Scatter3d"] * 3
    mesh = explorer.data[12]
    v = np.stack([mesh.x, mesh.y, mesh.z], 1)
    assert len(mesh.i) > 50 and np.allclose(np.linalg.norm(v - CENTRE, axis=1), 0.5, atol=0.08)  # the ball
    assert mesh.flatshading is False and mesh.vertexcolor is not None
    # sliders: one over the slices (frames), one over the channels (restyle of the three heatmaps)
    slices, channels = explorer.layout.sliders
    assert len(slices.steps) == len(explorer.frames) == 5 and len(channels.steps) == 4
    assert all(s.method == "restyle" and list(s.args[1]) == [3, 4, 5] for s in channels.steps)
    assert np.allclose(channels.steps[2].args[0]["z"][0], viz.plane_image(_planes()[0, 0, 2].numpy(), 0))


def test_explorer_slices_show_the_field_where_the_outlines_say(explorer):
    for frame, step in zip(explorer.frames, explorer.layout.sliders[0].steps):
        value = float(step.label)
        assert list(frame.traces) == list(range(6, 12)) + [13, 14, 15]
        z_outline = frame.data[6]  # the z slice's square sits at z = value
        assert np.allclose(z_outline.z, value, atol=0.005)  # the label has two decimals
        occ = _png(frame.data[0].source)  # occupancy along z, dark blue inside
        inside = occ[..., 0] <= 107  # p >= 0.5 on the white-to-blue scale
        r = np.sqrt(max(0.25 - value ** 2, 0))  # the ball's cut at this z
        assert abs(inside.mean() - np.pi * r ** 2 / 4) < 0.06
        if inside.any():  # the ball sits right of centre: x → on the z slice
            cols = np.nonzero(inside.any(0))[0]
            assert cols.mean() > 16 / 2
            colour = _png(frame.data[3].source)[inside].mean(0) / 255  # rgb = (xyz + 1) / 2
            assert colour[0] == pytest.approx((CENTRE[0] + 1) / 2, abs=0.12)
            assert colour[2] == pytest.approx((value + 1) / 2, abs=0.05)


def test_explorer_decodes_a_latent_and_refuses_bad_input():
    fig = viz.triplane_explorer(BallModel(), latent=_planes(C=2, R=8), resolution=8, n_slices=3, mesh_resolution=16)
    assert len(fig.layout.sliders[1].steps) == 2
    with pytest.raises(ValueError, match="either latent"):
        viz.triplane_explorer(BallModel(), latent=_planes(), planes=_planes())
    with pytest.raises(ValueError, match="one triplane"):
        viz.triplane_explorer(BallModel(), planes=torch.randn(2, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="n_slices"):
        viz.triplane_explorer(BallModel(), planes=_planes(), resolution=8, n_slices=9)


def test_explorer_on_a_field_with_no_surface_shows_an_empty_scene():
    class Empty(BallModel):
        def query(self, planes, xyz):
            return torch.full(xyz.shape[:2], -5.0), torch.zeros(xyz.shape)

    fig = viz.triplane_explorer(Empty(), planes=_planes(), resolution=8, n_slices=3, mesh_resolution=16)
    assert len(fig.data[12].i) == 0


def test_explorer_on_the_real_decoder_samples_the_same_planes():
    """With a real triplane reader (models.triplane.sample_triplane) the colour slices are the
    decoder's colours: the explorer queries the planes it is given, not a copy."""

    class Reader(BallModel):
        def query(self, planes, xyz):
            f = sample_triplane(planes, xyz)  # (B, M, 3C)
            return f[..., 0] * 0 + 1.0, torch.sigmoid(f[..., :3])

    planes = _planes(C=1, R=8)
    fig = viz.triplane_explorer(Reader(), planes=planes, resolution=8, n_slices=8, mesh=None)
    img = _png(fig.frames[0].data[3].source) / 255  # colour along z at the first slice, everything inside
    xyz = torch.tensor([[[-1 + 1 / 8, 1 - 1 / 8, -1 + 1 / 8]]])  # top-left texel: x = -7/8, y = +7/8
    want = torch.sigmoid(sample_triplane(planes, xyz))[0, 0].numpy()
    assert np.allclose(img[0, 0], want, atol=1 / 255 + 1e-6)


def test_denoising_figure_steps_through_x_t_x0_and_meshes():
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    x_t = [torch.randn(1, 3, 4, 8, 8) for _ in range(3)]
    x0 = [torch.randn(1, 3, 4, 8, 8) for _ in range(3)]
    fig = viz.denoising_figure(x_t, x0, [None, ball, ball], ["a", "b", "c"], title="t", start=1)
    assert fig.layout.sliders[0].active == 1 and len(fig.data[2].i) == len(ball.faces)
    assert [f.name for f in fig.frames] == ["a", "b", "c"]
    assert len(fig.frames[0].data[2].i) == 0 and len(fig.frames[2].data[2].i) == len(ball.faces)
    strip = _png(fig.frames[1].data[0].source)
    assert strip.shape == (8, 3 * 8 + 2, 3)  # three planes side by side with a gap
    with pytest.raises(ValueError, match="names"):
        viz.denoising_figure(x_t, x0, [ball], ["a"])


def test_mesh_trace_is_smooth_shaded_without_dropped_normals():
    tr = viz.mesh_trace(np.eye(3), np.array([[0, 1, 2]]))
    assert tr.flatshading is False
    assert tr.lighting.vertexnormalsepsilon == 0 and tr.lighting.facenormalsepsilon == 0
    assert viz.mesh_trace(np.eye(3), np.array([[0, 1, 2]]), flatshading=True).flatshading is True
    assert isinstance(viz.trimesh_trace(None), go.Mesh3d)
