"""Training: the loss drops, checkpoints round-trip, resume is exact, bad runs stop clearly."""

import json
import shutil

import pytest
import torch

from compress3d_lite.checkpoint import CheckpointError, read_config, write_checkpoint
from compress3d_lite.config import SampleSpec
from compress3d_lite.data.dataset import ObjectDataset
from compress3d_lite.data.toyshapes import write_toyshapes
from compress3d_lite.inference.vae import load_vae
from compress3d_lite.models import TriplaneVAE
from compress3d_lite.presets import vae_preset
from compress3d_lite.stages.vae import train_vae
from compress3d_lite.training.loop import StepBatchSampler
from compress3d_lite.training.run_folder import TrainingError

FAST = {"log_every": 5, "ckpt_every": 1000}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_toyshapes(16, folder, SampleSpec(n_points=1024, n_uniform=2048, n_near=2048, views=0), seed=0,
                    workers=1, progress=False)
    return folder


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss_clearly(tmp_path, toy_data):
    run = tmp_path / "run"
    train_vae("lite", run, data=str(toy_data), train_overrides={**FAST, "steps": 150, "lr": 3e-3}, progress=False)
    log = _log(run)
    first, last = log[0], log[-1]
    assert last["step"] == 150
    assert last["occ_bce"] < 0.6 * first["occ_bce"] and last["occ_acc"] > 0.75
    cfg = read_config(run / "model")
    assert len(cfg["latent_stats"]["std"]) == vae_preset("lite").model.latent_channels


def test_resume_after_interruption_is_exact(tmp_path, toy_data):
    over = {**FAST, "steps": 30}
    train_vae("lite", tmp_path / "straight", data=str(toy_data), train_overrides=over, progress=False)
    stopped = train_vae("lite", tmp_path / "resumed", data=str(toy_data), train_overrides=over, progress=False,
                       stop_after=15)
    assert stopped["step"] == 15 and read_config(tmp_path / "resumed" / "checkpoint")["step"] == 15
    assert not (tmp_path / "resumed" / "model").exists()
    train_vae("lite", tmp_path / "resumed", data=str(toy_data), resume=True, train_overrides=over, progress=False)
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [5, 10, 15, 20, 25, 30]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bit-identical


def test_resume_refuses_another_model_config(tmp_path, toy_data):
    train_vae("lite", tmp_path / "r", data=str(toy_data), train_overrides={**FAST, "steps": 4}, progress=False,
             stop_after=2)
    with pytest.raises(TrainingError, match="another model config"):
        train_vae("lite", tmp_path / "r", data=str(toy_data), resume=True, overrides={"attn": False},
                 train_overrides={"steps": 4}, progress=False)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_vae("lite", tmp_path / "new", data=str(toy_data), resume=True, progress=False)


def test_nan_loss_stops_with_a_clear_message(tmp_path, toy_data, monkeypatch):
    original = TriplaneVAE.forward

    def poisoned(self, *a, **k):
        out = original(self, *a, **k)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TriplaneVAE, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at step 0"):
        train_vae("lite", tmp_path / "nan", data=str(toy_data), train_overrides={**FAST, "steps": 5}, progress=False)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    cfg = vae_preset("lite").model
    torch.manual_seed(0)
    net = TriplaneVAE(cfg).eval()
    write_checkpoint(tmp_path / "ck", net.state_dict(), {"kind": "triplane_vae", "preset": "lite", "model": cfg.to_dict()})
    back, meta = load_vae(tmp_path / "ck")
    pts, col = torch.rand(1, 200, 3) * 1.8 - 0.9, torch.rand(1, 200, 3)
    with torch.no_grad():
        a, b = net.encode(pts, col)[0], back.encode(pts, col)[0]
        qa = net.query(net.decode(a), pts)[0]
        qb = back.query(back.decode(b), pts)[0]
    assert torch.equal(a, b) and torch.equal(qa, qb) and meta["preset"] == "lite"
    assert not list(tmp_path.glob(".ck*"))  # no temporary folder left behind


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    cfg = vae_preset("lite").model
    good = write_checkpoint(tmp_path / "good", TriplaneVAE(cfg).state_dict(),
                            {"kind": "triplane_vae", "preset": "lite", "model": cfg.to_dict()})
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_vae(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="made with preset 'lite', not 'course'"):
        load_vae(good, preset="course")
    corrupt = shutil.copytree(good, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_vae(corrupt)
    lfs = shutil.copytree(good, tmp_path / "lfs")
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        load_vae(lfs)
    other = shutil.copytree(good, tmp_path / "other")
    course = vae_preset("course").model.to_dict()
    (other / "config.json").write_text(json.dumps({**read_config(good), "model": course}))
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_vae(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config"):
        load_vae(other)


def test_shipped_checkpoint_loads_with_latent_stats():
    from pathlib import Path

    ck = Path(__file__).resolve().parents[1] / "data_samples" / "checkpoints" / "vae_course"
    net, cfg = load_vae(ck, preset="course")
    assert cfg["model"]["attn"] and len(cfg["latent_stats"]["mean"]) == cfg["model"]["latent_channels"]
    assert "train ae --preset course" in cfg["made_by"]["command"]


def test_step_sampler_is_a_function_of_seed_and_step():
    a = StepBatchSampler(10, 4, seed=1, start=0, steps=6)
    b = StepBatchSampler(10, 4, seed=1, start=3, steps=6)
    assert list(a)[3:] == list(b)
    epoch0 = [i for batch in list(a)[:2] for i, _ in batch]
    assert len(set(epoch0)) == 8  # no repeats inside an epoch
    shards = [StepBatchSampler(10, 4, 1, 0, 1, rank=r, world=2).batch(0) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(a.batch(0))


def test_dataset_accepts_index_epoch_pairs(toy_data):
    ds = ObjectDataset(toy_data, n_points=100, n_occ=100)
    ds.set_epoch(2)
    assert torch.equal(ds[(3, 2)]["points"], ds[3]["points"])


def test_render_losses_train_mask_and_depth(tmp_path):
    """With --render-loss the field is also rendered into the saved views, and those losses fall."""
    run = tmp_path / "render"
    train_vae("lite", run, overrides={"render_loss": True, "render_rays": 128, "render_samples": 24},
             train_overrides={**FAST, "steps": 60, "n_train": 8, "lr": 3e-3, "warmup_steps": 5}, progress=False)
    log = _log(run)
    assert {"render_rgb", "render_mask", "render_depth"} <= set(log[0])
    assert log[-1]["render_mask"] < 0.8 * log[0]["render_mask"]
    assert ObjectDataset(run / "data", views=True)[0]["images"].shape[-1] == 64


def test_field_renderer_matches_a_known_sphere():
    from compress3d_lite.data.render import intrinsics, look_at
    from compress3d_lite.models.field_renderer import pixel_rays, render_field

    def sphere(xyz):  # sharp occupancy of a sphere of radius 0.5, red
        logits = 200.0 * (0.5 - xyz.norm(dim=-1))
        return logits, torch.tensor([1.0, 0.0, 0.0]).expand(*xyz.shape[:-1], 3)

    c2w = torch.tensor(look_at([0.0, 0.0, 3.0]), dtype=torch.float32)[None]
    K = torch.tensor(intrinsics(64, 40.0), dtype=torch.float32)[None]
    pix = torch.tensor([[[32.0, 32.0], [2.0, 2.0]]])  # centre pixel, a corner pixel
    o, d, dz = pixel_rays(c2w, K, pix)
    rgb, mask, depth = render_field(sphere, o, d, dz, n_samples=256)
    assert mask[0, 0] > 0.99 and mask[0, 1] < 0.01
    assert abs(depth[0, 0].item() - 2.5) < 0.02  # the sphere's front at z = 0.5, camera at 3
    assert rgb[0, 0, 0] > 0.95 and rgb[0, 0, 1:].abs().max() < 1e-4  # facing the light: full red
