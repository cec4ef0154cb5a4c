"""Stage 4 and the pipeline: the triplane UNet, dual guidance, generate, bad images."""

import json

import numpy as np
import torch
from PIL import Image

from compress3d_lite.cli import main
from compress3d_lite.models.triplane_unet import AwareConv, TriplaneUNet, UNetConfig, cross_plane_features
from compress3d_lite.presets import unet_preset
from compress3d_lite.samples import sample_path

PNG = sample_path("toyshapes", "images", "000003_0.png")  # a lamp, RGBA


def _unet(seed=0):
    torch.manual_seed(seed)
    cfg = UNetConfig(latent_channels=4, latent_res=8, channels=(16, 32), embed_dim=8, time_dim=16, heads=2)
    net = TriplaneUNet(cfg).eval()
    for p in net.parameters():  # the zero-initialised output layers would hide everything
        torch.nn.init.normal_(p, std=0.1)
    return net, cfg


def test_unet_shapes_at_two_presets():
    for preset in ("lite", "course"):
        cfg = unet_preset(preset).model
        net = TriplaneUNet(cfg)
        x = torch.randn(2, 3, cfg.latent_channels, cfg.latent_res, cfg.latent_res)
        out = net(x, torch.tensor([0, 999]), torch.randn(2, cfg.embed_dim), torch.randn(2, cfg.embed_dim))
        assert out.shape == x.shape


def test_cross_plane_features_pool_along_the_shared_axis():
    h = torch.zeros(1, 3, 1, 6, 6)
    h[0, 1, 0, 2, :] = 1.0  # xz plane, the line x = 2 (all z)
    f = cross_plane_features(h)  # (1, 3, 2, 6, 6)
    xy_from_xz = f[0, 0, 0]  # indexed [x, y]
    assert (xy_from_xz[2] == 1).all() and xy_from_xz.sum() == 6  # row x = 2 of xy, nothing else
    yz_from_xz = f[0, 2, 1]  # xz pooled over x -> (z), broadcast over y: 1/6 everywhere
    torch.testing.assert_close(yz_from_xz, torch.full((6, 6), 1 / 6))


def test_aware_conv_mixes_information_across_planes():
    torch.manual_seed(0)
    conv = AwareConv(4, 4)
    h = torch.randn(1, 3, 4, 8, 8)
    poked = h.clone()
    poked[0, 2] += torch.randn(4, 8, 8)  # change only the yz plane
    d = (conv(poked) - conv(h)).abs()
    assert d[0, 0].max() > 1e-3 and d[0, 1].max() > 1e-3  # xy and xz see it
    plain = torch.nn.Conv2d(4, 4, 3, padding=1)  # a per-plane convolution would not
    assert torch.equal(plain(poked[0, :2]), plain(h[0, :2]))


def test_dual_guidance_limits():
    net, cfg = _unet()
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([10, 700])
    e_i, e_s = torch.randn(2, 8), torch.randn(2, 8)
    no, yes = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    full, uncond = net(x, t, e_i, e_s, no, no), net(x, t, e_i, e_s, yes, yes)
    image_only = net(x, t, e_i, e_s, no, yes)
    torch.testing.assert_close(net.guided(x, t, e_i, e_s, 1.0, 1.0), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.guided(x, t, e_i, e_s, 0.0, 0.0), uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.guided(x, t, e_i, e_s, 1.0, 0.0, use_shape=False), image_only, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, uncond, atol=1e-3)  # the conditions matter at all
    g = net.guided(x, t, e_i, e_s, 5.0, 1.0)
    torch.testing.assert_close(g, uncond + 5 * (image_only - uncond) + (full - image_only), atol=1e-4, rtol=1e-4)


def test_a100_full_unet_is_paper_size():
    cfg = unet_preset("a100_full").model
    with torch.device("meta"):
        n = sum(p.numel() for p in TriplaneUNet(cfg).parameters())
    assert abs(n - 864e6) / 864e6 < 0.1  # docs/paper.md §5: 864M


def test_same_seed_same_mesh_and_result_fields(pipe):
    a = pipe(str(PNG), num_inference_steps=4, mesh_resolution=32, seed=3)
    b = pipe(str(PNG), num_inference_steps=4, mesh_resolution=32, seed=3)
    assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and np.array_equal(a.mesh.faces, b.mesh.faces)
    assert a.latents.shape == (1, 3, pipe.unet.cfg.latent_channels, pipe.unet.cfg.latent_res, pipe.unet.cfg.latent_res)
    assert a.image_embeds.shape == a.shape_embeds.shape == (1, pipe.tower.cfg.embed_dim)
    assert set(a.timings) >= {"image_embedding", "prior", "diffusion", "decode_mesh", "total"}
    c = pipe(str(PNG), num_inference_steps=4, mesh_resolution=32, seed=4)
    assert not torch.equal(a.latents, c.latents)
    d = pipe(str(PNG), num_inference_steps=4, mesh_resolution=32, seed=3, use_prior=False)
    assert d.shape_embeds is None and "prior" not in d.timings


def test_generate_cli_on_rgba_jpeg_grayscale_and_a_bad_file(tmp_path, capsys):
    rgba = Image.open(PNG)
    rgba.convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    rgba.convert("L").save(tmp_path / "gray.png")
    (tmp_path / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    args = ["generate", str(PNG), str(tmp_path / "photo.jpg"), str(tmp_path / "notes.png"), str(tmp_path / "gray.png"),
            "-o", str(out), "--steps", "3", "--res", "32", "--format", "ply"]
    assert main(args) == 2  # one image failed
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.png: not an image file" in err[0]
    assert sorted(p.name for p in out.glob("*.ply")) == ["000003_0.ply", "gray.ply", "photo.ply"]
    report = json.loads((out / "generate.json").read_text())
    assert [("error" in r) for r in report["images"]] == [False, False, True, False]
    import trimesh

    mesh = trimesh.load(out / "photo.ply")
    assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)


def test_generate_cli_only_bad_images_writes_nothing(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["generate", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--steps", "2"]) == 2
    assert "a.png: empty file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_json_records_the_guidance_actually_used(tmp_path, pipe):
    out = tmp_path / "default"
    assert main(["generate", str(PNG), "-o", str(out), "--steps", "2", "--res", "32"]) == 0
    s = json.loads((out / "generate.json").read_text())["settings"]
    assert (s["guidance_image"], s["guidance_shape"]) == (pipe.default_guidance["image"], pipe.default_guidance["shape"])
    assert s["guidance_source"] == {"image": "checkpoint default", "shape": "checkpoint default"}
    out = tmp_path / "given"
    assert main(["generate", str(PNG), "-o", str(out), "--steps", "2", "--res", "32", "--guidance-shape", "3.5"]) == 0
    s = json.loads((out / "generate.json").read_text())["settings"]
    assert (s["guidance_image"], s["guidance_shape"]) == (pipe.default_guidance["image"], 3.5)
    assert s["guidance_source"] == {"image": "checkpoint default", "shape": "command line"}


def test_cond_map_starts_as_a_no_op_and_then_places_conditions_in_space():
    torch.manual_seed(0)
    cfg = UNetConfig(latent_channels=4, latent_res=8, channels=(16, 32), embed_dim=8, time_dim=16, heads=2)
    plain, mapped = TriplaneUNet(cfg), TriplaneUNet(cfg.override(cond_map=True))
    mapped.load_state_dict(plain.state_dict(), strict=False)  # the same weights, the map zero-initialised
    torch.nn.init.normal_(plain.conv_out.weight, std=0.1)
    torch.nn.init.normal_(mapped.conv_out.weight, std=0.1)
    mapped.conv_out.load_state_dict(plain.conv_out.state_dict())
    x, t, e = torch.randn(2, 3, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 8)
    torch.testing.assert_close(plain(x, t, e, e), mapped(x, t, e, e))
    torch.nn.init.normal_(mapped.cond_map.weight, std=0.1)
    delta = mapped(x, t, e, e) - plain(x, t, e, e)  # (2, 3, 4, 8, 8)
    assert delta.abs().max() > 1e-3 and delta.std(dim=(-1, -2)).mean() > 1e-4  # it varies over the plane
