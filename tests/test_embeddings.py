"""Stage 2 and 3: towers, contrastive alignment, the diffusion prior, their checkpoints, images."""

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from compress3d_lite.checkpoint import CheckpointError, write_checkpoint
from compress3d_lite.config import SampleSpec
from compress3d_lite.data.images import ImageError, load_image
from compress3d_lite.data.toyshapes import write_toyshapes
from compress3d_lite.diffusion import DiffusionConfig, diffusion_loss, make_scheduler, sample
from compress3d_lite.inference.embed import load_shape_tower, load_towers
from compress3d_lite.inference.prior import load_prior
from compress3d_lite.models.contrastive import ContrastiveLoss, info_nce
from compress3d_lite.models.image_tower import IMAGE_TOWERS, ImageTower, PretrainedWeightsUnavailable, fetch_pretrained
from compress3d_lite.models.prior import DiffusionPrior, PriorConfig
from compress3d_lite.models.shape_tower import ShapeTower, ShapeTowerConfig
from compress3d_lite.stages.embed import train_embed
from compress3d_lite.stages.prior import train_prior
from compress3d_lite.training.run_folder import TrainingError

LITE_TOWER = IMAGE_TOWERS["toy_lite"]
FAST = {"log_every": 5, "ckpt_every": 1000}


def _tower(seed=0):
    torch.manual_seed(seed)
    return ImageTower(LITE_TOWER).eval()


# ------------------------------------------------------------------------------------------ towers


def test_towers_give_unit_embeddings_of_the_right_size():
    tower = _tower()
    e = tower(torch.randn(3, 3, LITE_TOWER.image_size, LITE_TOWER.image_size))
    assert e.shape == (3, LITE_TOWER.embed_dim)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    shape = ShapeTower(ShapeTowerConfig(width=16, blocks=2, hidden=32, embed_dim=LITE_TOWER.embed_dim)).eval()
    xyz, rgb = torch.rand(2, 300, 3) * 1.8 - 0.9, torch.rand(2, 300, 3)
    s = shape(xyz, rgb)
    assert s.shape == (2, LITE_TOWER.embed_dim)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(2))
    perm = torch.randperm(300)  # a point cloud is a set: order must not matter
    torch.testing.assert_close(shape(xyz[:, perm], rgb[:, perm]), s, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shape(xyz, rgb.flip(0)), s)  # but colours do


def test_tensor_and_pil_preprocessing_agree():
    tower = _tower()
    S = LITE_TOWER.image_size
    rgba = np.random.default_rng(0).integers(0, 256, (S, S, 4), dtype=np.uint8)
    rgba[: S // 2, :, 3] = 0  # a transparent half: must come out as the white background
    a = tower.preprocess([load_image(rgba)])
    b = tower.preprocess_rgba(torch.from_numpy(rgba).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(a, b, atol=1 / 255 / 0.26, rtol=0)  # PIL composites in 8 bits: one level
    white = (1 - tower.mean) / tower.std
    torch.testing.assert_close(a[0, :, : S // 2], white[0].expand(3, S // 2, S), atol=1e-5, rtol=0)


def test_pretrained_tower_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as e:
        fetch_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "open_clip.create_model('ViT-B-32'" in msg and "toy" in msg
    with pytest.raises(PretrainedWeightsUnavailable, match="no weights"):
        fetch_pretrained("ViT-B-32", "no_such_tag")


# ------------------------------------------------------------------------------------------ InfoNCE


def test_info_nce_values_and_a_tiny_batch_learns():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert info_nce(a, a, torch.tensor(math.log(100.0))) < 0.05  # perfectly matched pairs
    rand = info_nce(a, torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), torch.tensor(0.0))
    assert abs(rand - math.log(8)) < 0.3  # unrelated pairs at T = 1: about log(B)

    torch.manual_seed(0)
    tower = ImageTower(LITE_TOWER)
    shape = ShapeTower(ShapeTowerConfig(width=16, blocks=2, hidden=32, embed_dim=LITE_TOWER.embed_dim))
    loss_fn = ContrastiveLoss()
    pixels = torch.randn(8, 3, LITE_TOWER.image_size, LITE_TOWER.image_size)
    xyz, rgb = torch.rand(8, 256, 3) * 1.8 - 0.9, torch.rand(8, 256, 3)
    opt = torch.optim.Adam([*tower.parameters(), *shape.parameters(), *loss_fn.parameters()], lr=2e-3)
    losses = []
    for _ in range(40):
        loss = loss_fn(shape(xyz, rgb), tower(pixels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.5 and losses[-1] < 0.3 * losses[0]


# ------------------------------------------------------------------------------------------ diffusion


def test_ddim_with_an_oracle_returns_the_clean_sample():
    cfg = DiffusionConfig(sample_steps=10)
    x0 = torch.randn(4, 32) * 3
    for sampler in ("ddim", "dpm"):
        out = sample(lambda x, t: x0, x0.shape, cfg, sampler=sampler, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_noising_round_trip_and_oracle_loss():
    sched = make_scheduler(DiffusionConfig())
    x0, eps = torch.randn(5, 8), torch.randn(5, 8)
    t = torch.tensor([0, 10, 300, 700, 999])
    x_t = sched.add_noise(x0, eps, t)
    abar = sched.alphas_cumprod[t][:, None]
    torch.testing.assert_close((x_t - abar.sqrt() * x0) / (1 - abar).sqrt(), eps, atol=1e-4, rtol=1e-4)
    assert float(diffusion_loss(lambda x, tt: x0, x0, sched)) == 0.0  # x0-prediction: the oracle is exact
    assert float(diffusion_loss(lambda x, tt: x, x0, sched)) > 0.1  # the identity is not


def test_same_seed_same_samples_and_unknown_sampler():
    cfg = DiffusionConfig(sample_steps=5)
    prior = DiffusionPrior(PriorConfig(embed_dim=8, width=16, depth=2, time_dim=8), cfg).eval()
    e_i = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    a = prior.sample(e_i, generator=torch.Generator().manual_seed(3), n=2)
    b = prior.sample(e_i, generator=torch.Generator().manual_seed(3), n=2)
    assert a.shape == (4, 8)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError, match="does not sample the ddpm objective"):
        prior.sample(e_i, sampler="euler")


def test_prior_learns_a_toy_mapping_better_than_the_mean():
    torch.manual_seed(0)
    D = 16
    A = torch.randn(D, D)

    def pairs(n):
        e_i = torch.nn.functional.normalize(torch.randn(n, D), dim=-1)
        return e_i, torch.nn.functional.normalize(e_i @ A, dim=-1)

    cfg = PriorConfig(embed_dim=D, width=128, depth=2, time_dim=32, cond_drop=0.1)
    prior = DiffusionPrior(cfg, DiffusionConfig(sample_steps=20))
    sched = make_scheduler(prior.diffusion_cfg)
    opt = torch.optim.Adam(prior.parameters(), lr=2e-3)
    for _ in range(600):
        e_i, e_s = pairs(128)
        loss = prior.loss(e_s, e_i, sched)
        opt.zero_grad()
        loss.backward()
        opt.step()
    e_i, e_s = pairs(256)
    pred = prior.eval().sample(e_i, generator=torch.Generator().manual_seed(0))
    cos = (pred * e_s).sum(-1).mean()
    mean_dir = torch.nn.functional.normalize(pairs(4096)[1].mean(0), dim=0)
    baseline = (e_s @ mean_dir).mean()
    assert cos > 0.75 and cos > baseline + 0.4, (float(cos), float(baseline))
    guided = prior.sample(e_i, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert (guided * e_s).sum(-1).mean() > 0.6


def test_a100_full_prior_is_paper_size():
    from compress3d_lite.presets import prior_preset

    pcfg = prior_preset("a100_full").model
    n = sum(p.numel() for p in DiffusionPrior(pcfg, DiffusionConfig()).parameters())
    assert abs(n - 25.8e6) / 25.8e6 < 0.1  # docs/paper.md §4: 25.8M


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def view_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    write_toyshapes(16, folder, SampleSpec(n_points=1024, n_uniform=256, n_near=256, views=3, resolution=32),
                    seed=0, workers=1, progress=False)
    return folder


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_embed_training_resumes_exactly_and_writes_both_towers(tmp_path, view_data):
    over = {**FAST, "steps": 12, "batch_size": 8}
    train_embed("lite", tmp_path / "straight", data=str(view_data), train_overrides=over, progress=False)
    train_embed("lite", tmp_path / "resumed", data=str(view_data), train_overrides=over, progress=False, stop_after=6)
    train_embed("lite", tmp_path / "resumed", data=str(view_data), train_overrides=over, progress=False, resume=True)
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [5, 10, 12]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    tower, shape, cfg = load_towers(tmp_path / "resumed")
    assert cfg["image_tower"] == tower.identity() and cfg["image_tower"]["name"] == "toy_lite"
    with pytest.raises(TrainingError, match="another model config"):
        train_embed("course", tmp_path / "resumed", data=str(view_data), resume=True, progress=False)


def test_embed_training_refuses_data_without_views(tmp_path):
    folder = tmp_path / "noviews"
    write_toyshapes(2, folder, SampleSpec(n_points=256, n_uniform=64, n_near=64, views=0), seed=0, workers=1,
                    progress=False)
    with pytest.raises(TrainingError, match="needs rendered views"):
        train_embed("lite", tmp_path / "run", data=str(folder), progress=False)


def test_prior_training_records_its_tower_and_refuses_another(tmp_path, view_data):
    train_embed("lite", tmp_path / "embed", data=str(view_data), train_overrides={**FAST, "steps": 4, "batch_size": 8},
                progress=False)
    train_prior("lite", tmp_path / "prior", embed=str(tmp_path / "embed"),
                train_overrides={**FAST, "steps": 10, "batch_size": 16}, progress=False)
    tower, _, _ = load_towers(tmp_path / "embed")
    prior, cfg = load_prior(tmp_path / "prior" / "prior", image_tower=tower)
    assert cfg["image_tower"] == tower.identity()
    other = _tower(seed=123)  # same architecture, other weights
    with pytest.raises(CheckpointError, match="trained against image tower toy_lite"):
        load_prior(tmp_path / "prior" / "prior", image_tower=other)
    with pytest.raises(CheckpointError, match="trained against image tower"):
        load_shape_tower(tmp_path / "embed" / "shape_tower", image_tower=other)
    with pytest.raises(CheckpointError, match="not a diffusion prior"):
        load_prior(tmp_path / "embed" / "shape_tower")


def test_towers_identity_survives_fp16_and_catches_tampering(tmp_path):
    tower = _tower()
    identity = tower.identity()
    write_checkpoint(tmp_path / "t", tower.state_dict(),
                     {"kind": "image_tower", "model": LITE_TOWER.to_dict(), "identity": identity}, half=True)
    from compress3d_lite.inference.embed import load_image_tower

    assert load_image_tower(tmp_path / "t").identity() == identity
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["identity"]["weights"] = "0" * 16
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the identity"):
        load_image_tower(tmp_path / "t")
    with pytest.raises(CheckpointError, match="no published weights"):
        load_image_tower("toy")


# ------------------------------------------------------------------------------------------ images


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_load_image_rgba_grayscale_16bit_palette(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[:, :6] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    out = np.asarray(load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
    assert out.shape == (10, 12, 3) and (out[:, :6] == (255, 0, 0)).all() and (out[:, 6:] == 255).all()
    out = np.asarray(load_image(tmp_path / "a.png", background=0.0))
    assert (out[:, 6:] == 0).all()  # the background is a choice

    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    out = np.asarray(load_image(_save(Image.fromarray(gray, "L"), tmp_path / "g.jpg", quality=100)))
    assert out.shape == (10, 10, 3) and (out[..., 0] == out[..., 1]).all()

    deep = np.zeros((8, 8), np.uint16)
    deep[:, 4:] = 65535
    deep[:, :4] = 32768
    out = np.asarray(load_image(_save(Image.fromarray(deep), tmp_path / "d.png")))
    assert (out[:, 4:] == 255).all() and (abs(out[:, :4].astype(int) - 128) <= 1).all()  # scaled, not clipped

    pal = Image.fromarray(rgba, "RGBA").convert("P")
    assert load_image(pal).mode == "RGB"
    la = Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA")
    assert np.asarray(load_image(la))[..., 0].tolist() == gray.tolist()
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.asarray(load_image(f)).max() == 255  # float arrays are [0, 1]


def test_load_image_huge_files(tmp_path, monkeypatch):
    big = Image.new("RGB", (6000, 4000), (10, 200, 30))
    out = load_image(_save(big, tmp_path / "big.jpg", quality=80))
    assert max(out.size) <= 1024 and abs(out.size[0] / out.size[1] - 1.5) < 0.01
    assert abs(int(np.asarray(out)[500, 500, 1]) - 200) <= 3
    tower = _tower()
    assert tower.preprocess([out]).shape == (1, 3, LITE_TOWER.image_size, LITE_TOWER.image_size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # anything above 2000 px is a "bomb" now
    with pytest.raises(ImageError, match="big.jpg: too large"):
        load_image(tmp_path / "big.jpg")


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_text("hello, not a picture"), "not an image file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_load_image_bad_files(tmp_path, make, problem):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(ImageError, match=f"input.png: {problem}"):
        load_image(path)


def test_load_image_truncated_png(tmp_path):
    path = _save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "t.png")
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageError, match="t.png: (corrupt|not an image)"):
        load_image(path)
