"""The UNet's optional near-surface occupancy loss (stages/unet.py, SurfaceObjective): the loss
written out by hand on the same draws equals the library's, only the UNet learns (the VAE is
frozen and not saved), and the queries it trains on are the near-surface ones of each object."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress3d_lite.config import ConfigError
from compress3d_lite.data.io import load_object, read_index
from compress3d_lite.diffusion import make_scheduler
from compress3d_lite.inference.unet import load_unet
from compress3d_lite.models.autoencoder import TriplaneVAE
from compress3d_lite.models.triplane_unet import TriplaneUNet
from compress3d_lite.presets import unet_preset, vae_preset
from compress3d_lite.samples import sample_path, shipped_checkpoint
from compress3d_lite.stages.unet import SurfaceObjective, near_surface_set, unet_step


def _objective(weight=0.5):
    torch.manual_seed(0)
    vae = TriplaneVAE(vae_preset("lite").model)
    p = unet_preset("lite", model={"surface_weight": weight}, diffusion={
        "objective": "rectified_flow", "sampler": "euler", "timesteps": "logit_normal", "logit_mean": 1.0})
    unet = TriplaneUNet(p.model, p.diffusion)
    mean, std = torch.full((1, 1, 4, 1, 1), 0.1), torch.full((1, 1, 4, 1, 1), 2.0)
    return SurfaceObjective(unet, make_scheduler(p.diffusion, "ddpm"), vae, mean, std), vae, unet, mean, std


def _batch(B=3, K=16):
    g = torch.Generator().manual_seed(1)
    return {"z": torch.randn(B, 3, 4, 8, 8, generator=g), "e_i": F.normalize(torch.randn(B, 64, generator=g), dim=1),
            "e_s": F.normalize(torch.randn(B, 64, generator=g), dim=1), "q": torch.rand(B, K, 3, generator=g) * 2 - 1,
            "occ": (torch.rand(B, K, generator=g) > 0.5).float()}


def test_the_surface_loss_written_out_equals_the_library():
    model, vae, unet, mean, std = _objective(weight=0.5)
    b = _batch()
    torch.manual_seed(7)
    loss, parts = unet_step(model, b)
    # by hand, with the same draws in the same order: condition drops, noise, timesteps
    torch.manual_seed(7)
    B = b["z"].shape[0]
    drop_i, drop_s = torch.rand(B) < unet.cfg.cond_drop, torch.rand(B) < unet.cfg.cond_drop
    noise = torch.randn_like(b["z"])
    s = torch.sigmoid(torch.randn(B) * 1.0 + 1.0)  # logit-normal, mean 1, std 1
    x_t = (1 - s.view(-1, 1, 1, 1, 1)) * b["z"] + s.view(-1, 1, 1, 1, 1) * noise
    v = unet(x_t, s * 1000, b["e_i"], b["e_s"], drop_i, drop_s)
    diffusion = F.mse_loss(v, noise - b["z"])
    x0 = (x_t - s.view(-1, 1, 1, 1, 1) * v) * std[0] + mean[0]
    logits, _ = vae.query(vae.decode(x0), b["q"])
    bce = F.binary_cross_entropy_with_logits(logits, b["occ"], reduction="none").mean(1)
    surface = (bce * (1 - s)).mean()
    assert torch.allclose(parts["diffusion"], diffusion, atol=1e-5)
    assert torch.allclose(parts["surface"], surface, atol=1e-5)
    assert torch.allclose(loss, diffusion + 0.5 * surface, atol=1e-5)


def test_only_the_unet_learns_and_is_saved():
    model, vae, unet, *_ = _objective()
    loss, _ = unet_step(model, _batch())
    loss.backward()
    assert all(p.grad is None for p in vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    assert {k.split(".")[0] for k in model.state_dict()} == {"unet"}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())


def test_a_negative_surface_weight_is_refused():
    with pytest.raises(ConfigError, match="surface_weight"):
        unet_preset("lite", model={"surface_weight": -1.0})


def test_the_queries_are_each_objects_near_surface_ones():
    folder = sample_path("toyshapes")
    n_uniform = read_index(folder)["spec"]["n_uniform"]
    got = near_surface_set(folder, n=64, seed=0)
    n = len(read_index(folder)["objects"])
    assert got["q"].shape == (n, 64, 3) and got["occ"].shape == (n, 64)
    obj = load_object(folder / read_index(folder)["objects"][2]["file"])
    near = obj["occ_points"][n_uniform:]
    # every drawn query is one of that object's near-surface queries, with its own label
    d = np.abs(got["q"][2].numpy()[:, None] - near[None]).sum(-1)
    hit = d.argmin(1)
    assert d.min(1).max() < 1e-6
    assert np.array_equal(got["occ"][2].numpy(), obj["occ_labels"][n_uniform:][hit].astype(np.float32))
    assert 0 < got["occ"].mean() < 1  # near the surface: both inside and outside


def test_train_diffusion_with_the_surface_loss_records_it_and_loads(tmp_path):
    out = tmp_path / "surface"
    cmd = [sys.executable, "-m", "compress3d_lite.cli", "train", "diffusion", "--preset", "lite",
           "--vae", str(shipped_checkpoint("vae_course")), "--embed", str(shipped_checkpoint("embed_course")),
           "--data", str(sample_path("toyshapes")), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    done = subprocess.run(cmd + ["--surface-weight", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "unet" / "config.json").read_text())["model"]["surface_weight"] == 1.0
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["surface"] > 0 and record["loss"] > record["diffusion"]  # both parts, logged
    assert (out / "surface.safetensors").exists()
    load_unet(out / "unet")
    bad = subprocess.run([str(tmp_path / "bad") if c == str(out) else c for c in cmd] + ["--surface-weight", "-1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "surface_weight" in bad.stderr and "Traceback" not in bad.stderr
