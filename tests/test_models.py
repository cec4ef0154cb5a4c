"""The triplane VAE's blocks: shapes, locality of the 3D-aware attention, the splat, the projection."""

import pytest
import torch

from compress3d_lite.models import TriplaneVAE
from compress3d_lite.models.attention3d import AwareCrossAttention3D, volume_cubes
from compress3d_lite.models.autoencoder import AEConfig
from compress3d_lite.models.pointnet import LocalPoolPointNet, fourier_encode
from compress3d_lite.models.triplane import VolumeToPlanes, sample_triplane, scatter_to_volume
from compress3d_lite.presets import vae_preset


def _batch(B=2, N=256, M=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(B, N, 3, generator=g) * 1.8 - 0.9
    q = torch.rand(B, M, 3, generator=g) * 2 - 1
    return pts, torch.rand(B, N, 3, generator=g), q, (q.norm(dim=-1) < 0.6).float()


@pytest.mark.parametrize("preset", ["lite", "course"])
@pytest.mark.parametrize("attn", [True, False])
def test_shapes_through_every_block(preset, attn):
    cfg = vae_preset(preset).model
    cfg.attn = attn
    torch.manual_seed(0)
    net = TriplaneVAE(cfg)
    pts, col, q, lab = _batch()
    B, r, rl, c = 2, cfg.volume_res, cfg.latent_res, cfg.latent_channels
    feats = net.pointnet(pts, col)
    assert feats.shape == (B, 256, cfg.point_dim)
    vol = net.feature_volume(pts, col)
    assert vol.shape == (B, cfg.point_dim, r, r, r)
    planes = net.to_planes(vol)
    assert planes.shape == (B, 3, cfg.plane_channels, r, r)
    h = net.encoder(planes.flatten(0, 1))
    assert h.shape == (B * 3, cfg.enc_channels[-1], rl, rl)
    mu, logvar = net.encode(pts, col)
    assert mu.shape == logvar.shape == (B, 3, c, rl, rl)
    hi = net.decode(mu)
    assert hi.shape == (B, 3, cfg.plane_channels, r, r)
    logits, rgb = net.query(hi, q)
    assert logits.shape == (B, 300) and rgb.shape == (B, 300, 3)
    assert 0 <= rgb.min() and rgb.max() <= 1
    out = net(pts, col, q, lab)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert (net.attn is not None) == attn


def test_attention_is_local_to_each_cells_cube():
    """Changing voxels outside a latent cell's cube leaves that cell unchanged; inside, it changes."""
    torch.manual_seed(0)
    C, r, rl, ra = 8, 16, 4, 8  # volume 16^3 -> queried volume 8^3 -> cube 2 x 2 x 8 per 4 x 4 cell
    attn = AwareCrossAttention3D(C, 6, r, rl, ra, heads=2)
    torch.nn.init.normal_(attn.to_out.weight, std=0.5)  # at init the block is the identity
    latent, vol = torch.randn(1, 3, C, rl, rl), torch.randn(1, 6, r, r, r)
    base = attn(latent, vol)
    i, j = 1, 2  # xy-plane cell: x in voxels [4, 8), y in [8, 12), all z
    outside = vol.clone()
    outside[:, :, :4] += 3.0  # x < 4
    outside[:, :, 8:, :8] += 3.0  # x >= 8, y < 8
    outside[:, :, 4:8, 12:] += 3.0  # the x-range of the cell, y beyond its range
    after = attn(latent, outside)
    assert torch.allclose(after[0, 0, :, i, j], base[0, 0, :, i, j], atol=1e-6)
    assert not torch.allclose(after[0, 0], base[0, 0])  # other cells did see the change
    inside = vol.clone()
    inside[:, :, 5, 9, 15] += 3.0  # one voxel of the cell's cube, far end of the z column
    changed = attn(latent, inside)
    assert not torch.allclose(changed[0, 0, :, i, j], base[0, 0, :, i, j], atol=1e-4)
    mask = torch.ones(rl, rl, dtype=torch.bool)
    mask[i, j] = False
    assert torch.allclose(changed[0, 0][:, mask], base[0, 0][:, mask], atol=1e-6)  # only that xy cell


def test_volume_cubes_group_voxels_by_projection():
    vol = torch.arange(8 ** 3, dtype=torch.float32).view(1, 1, 8, 8, 8)  # value = (x*8 + y)*8 + z
    cubes = volume_cubes(vol, plane=1, latent_res=4)  # xz plane, cube 2 x 2 x 8 (all y)
    assert cubes.shape == (1, 4, 4, 32, 1)
    vals = cubes[0, 3, 1, :, 0].long()
    x, y, z = vals // 64, (vals // 8) % 8, vals % 8
    assert set(x.tolist()) == {6, 7} and set(z.tolist()) == {2, 3} and set(y.tolist()) == set(range(8))


def test_attention_starts_as_identity_and_returns_normalised_weights():
    attn = AwareCrossAttention3D(8, 4, 8, 4, 4, heads=2)
    latent, vol = torch.randn(2, 3, 8, 4, 4), torch.randn(2, 4, 8, 8, 8)
    out, w = attn(latent, vol, return_weights=True)
    assert torch.equal(out, latent)
    assert w.shape == (2, 3, 4, 4, 2, 4) and torch.allclose(w.sum(-1), torch.ones(()))


def test_splat_is_a_density_normalised_average():
    pts = torch.rand(1, 2000, 3) * 2 - 1
    feats = torch.full((1, 2000, 4), 2.5)
    vol, wsum = scatter_to_volume(pts, feats, 8)
    filled = wsum[0] > 0
    assert filled.float().mean() > 0.9
    assert torch.allclose(vol[0].flatten(1)[:, filled], torch.tensor(2.5))  # dense or sparse: same scale
    # one point spreads to the 8 voxels around it, the nearest with by far the largest weight
    _, w = scatter_to_volume(torch.tensor([[[-0.85, -0.87, -0.86]]]), torch.ones(1, 1, 1), 8)
    assert (w[0] > 0).sum() == 8 and w[0].argmax() == 0 and w[0, 0] > 5 * w[0, 1:].max()


def test_projection_kernel_spans_the_collapsed_axis():
    proj = VolumeToPlanes(2, 3, 8)
    vol = torch.randn(1, 2, 8, 8, 8)
    base = proj(vol)
    hit = vol.clone()
    hit[0, :, 2, 5, 7] += 1.0  # voxel x=2, y=5, z=7
    diff = (proj(hit) - base).abs().sum(2)[0]  # (3, 8, 8)
    assert diff[0].nonzero().tolist() == [[2, 5]]  # xy plane at (x, y)
    assert diff[1].nonzero().tolist() == [[2, 7]]  # xz plane at (x, z)
    assert diff[2].nonzero().tolist() == [[5, 7]]  # yz plane at (y, z)


def test_sample_triplane_reads_the_right_texels():
    R = 8
    planes = torch.randn(1, 3, 2, R, R)
    centre = lambda i: -1 + (i + 0.5) * 2 / R  # noqa: E731
    x, y, z = 1, 4, 6
    f = sample_triplane(planes, torch.tensor([[[centre(x), centre(y), centre(z)]]]))[0, 0]
    expected = torch.cat([planes[0, 0, :, x, y], planes[0, 1, :, x, z], planes[0, 2, :, y, z]])
    assert torch.allclose(f, expected, atol=1e-6)


def test_local_pool_pointnet_mixes_only_within_pool_cells():
    net = LocalPoolPointNet(width=8, n_blocks=3, pe_freqs=2, pool_res=2).eval()
    pts = torch.tensor([[[-0.5, -0.5, -0.5], [-0.4, -0.5, -0.5], [0.5, 0.5, 0.5]]])
    col = torch.rand(1, 3, 3)
    base = net(pts, col)
    col2 = col.clone()
    col2[0, 1] += 1.0  # a neighbour in the same cell as point 0, not point 2's cell
    out = net(pts, col2)
    assert not torch.allclose(out[0, 0], base[0, 0]) and torch.allclose(out[0, 2], base[0, 2])
    assert fourier_encode(torch.zeros(5, 3), 4).shape == (5, 27)


def test_config_round_trip_and_bad_fields():
    cfg = vae_preset("course").model
    assert AEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown AEConfig fields"):
        AEConfig.from_dict({**cfg.to_dict(), "wings": 2})
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_preset("huge")
    with pytest.raises(AssertionError, match="encoder levels"):
        TriplaneVAE(AEConfig(latent_res=4))


def test_a100_full_preset_is_paper_scale():
    cfg = vae_preset("a100_full").model
    assert (cfg.volume_res, cfg.latent_res, cfg.latent_channels, cfg.attn_res) == (128, 32, 32, 32)
    assert 3 * cfg.latent_res ** 2 * cfg.latent_channels == 98_304  # the paper's "0.10M" latent
