"""Scaling up: dry runs at every preset, gradient checkpointing, the frozen-tower embed path and
two-process training on the CPU (accelerate launch, gloo)."""

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress3d_lite.checkpoint import read_config
from compress3d_lite.cli import main
from compress3d_lite.config import SampleSpec
from compress3d_lite.data.toyshapes import write_toyshapes
from compress3d_lite.inference.embed import load_towers
from compress3d_lite.inference.vae import load_vae
from compress3d_lite.models import TriplaneVAE
from compress3d_lite.models.autoencoder import AEConfig
from compress3d_lite.models.triplane_unet import TriplaneUNet, UNetConfig
from compress3d_lite.presets import unet_preset, vae_preset
from compress3d_lite.samples import sample_path
from compress3d_lite.scaling.dry_run import dry_run, format_dry_run
from compress3d_lite.stages.embed import train_embed
from compress3d_lite.training.measure import activation_bytes
from compress3d_lite.training.run_folder import model_identity

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sample_path("checkpoints")


# ------------------------------------------------------------------------------------------ dry runs


def test_dry_run_a100_full_prior_and_unet_are_paper_size():
    prior = dry_run("prior", "a100_full", step=False)  # 25M: measured, no optimiser step
    assert abs(prior["params"]["total"] - 25.8e6) / 25.8e6 < 0.1 and prior["params"]["paper"] == 25.8e6
    assert prior["flops"]["per_step"] > 0 and not prior["cpu_step"]["optimizer_step"]
    unet = dry_run("diffusion", "a100_full", measure_step=False,  # 887M: counted on the meta device only
                   overrides={"grad_checkpoint": True})
    assert abs(unet["params"]["total"] - 864e6) / 864e6 < 0.1 and unet["params"]["paper"] == 864e6
    assert unet["grad_checkpoint"] and unet["memory"]["weights"] == 4 * unet["params"]["total"]
    assert unet["memory"]["autocast_copies"] == 2 * unet["params"]["total"]  # bf16
    assert "paper: 864.00M" in format_dry_run(unet)


@pytest.mark.parametrize("stage", ["ae", "embed", "prior", "diffusion"])
def test_dry_run_lite_takes_one_finite_step(stage):
    r = dry_run(stage, "lite")
    step = r["cpu_step"]
    assert step["optimizer_step"] and math.isfinite(step["loss"]) and step["loss"] > 0
    assert r["flops"]["per_step"] > 0 and r["activations"]["per_sample_fp32"] > 0
    assert r["memory"]["total"] > r["memory"]["weights"] + r["memory"]["adamw"]
    text = format_dry_run(r)
    assert "one optimiser step" in text and "estimated" in text


def test_dry_run_cli_needs_no_out_and_writes_json(tmp_path, capsys):
    assert main(["train", "diffusion", "--preset", "lite", "--dry-run", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "parameters: 0.38M" in out and "FLOPs per step" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["stage"] == "diffusion" and report["cpu_step"]["optimizer_step"]
    assert main(["train", "diffusion", "--preset", "lite"]) == 2  # without --dry-run the folders are required
    assert "--out, --vae, --embed required" in capsys.readouterr().err


def test_dry_run_of_a_frozen_pretrained_tower_downloads_nothing(monkeypatch):
    import open_clip

    calls = []
    real = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: calls.append(k.get("pretrained")) or real(*a, **k))
    r = dry_run("embed", "colab_t4", step=False, overrides={"batch_size": 4})
    assert calls and all(p is None for p in calls)  # random init only
    assert r["image_tower"]["params"] > 80e6 and r["image_tower"]["flops_per_view"] > 1e9
    assert r["params"]["in_training_step"] == r["params"]["trainable"] < 5e6  # the shape tower (+ temperature)


# ------------------------------------------------------------------------------------------ checkpointing


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _twins(build, cfg):
    torch.manual_seed(0)
    plain = build(cfg).train()
    for p in plain.parameters():  # zero-initialised output layers would hide differences
        torch.nn.init.normal_(p, std=0.05)
    ckpt = build(dataclasses.replace(cfg, grad_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


@pytest.mark.parametrize("which", ["vae", "unet"])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(which):
    g = torch.Generator().manual_seed(1)
    if which == "vae":
        plain, ckpt = _twins(TriplaneVAE, vae_preset("lite").model)
        pts, col = torch.rand(2, 256, 3, generator=g) * 1.8 - 0.9, torch.rand(2, 256, 3, generator=g)
        q, lab = torch.rand(2, 512, 3, generator=g) * 2 - 1, (torch.rand(2, 512, generator=g) < 0.3).float()

        def loss_fn(m):
            return m(pts, col, q, lab, generator=torch.Generator().manual_seed(2)).loss
    else:
        plain, ckpt = _twins(TriplaneUNet, unet_preset("lite").model)
        x, e = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 64, generator=g)

        drop_i, drop_s = torch.tensor([True, False]), torch.tensor([False, True])  # the null tokens learn too

        def loss_fn(m):
            return m(x, torch.tensor([3, 500]), e, e, drop_i, drop_s).square().mean()
    (la, ga), (lb, gb) = _loss_and_grads(plain, loss_fn), _loss_and_grads(ckpt, loss_fn)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert ga.keys() == gb.keys() and len(ga) == len(list(plain.parameters()))
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)
    with activation_bytes(plain) as full:  # and it does save memory
        loss_fn(plain)
    with activation_bytes(ckpt) as less:
        loss_fn(ckpt)
    assert less["total"] < full["total"]
    ckpt.eval()
    with torch.no_grad():  # inference ignores the flag
        torch.testing.assert_close(loss_fn(ckpt), loss_fn(plain.eval()))


def test_configs_without_the_field_still_load_and_resume():
    cfg = load_vae(SHIPPED / "vae_course")[1]  # written before grad_checkpoint existed
    assert "grad_checkpoint" not in cfg["model"]
    assert AEConfig.from_dict(cfg["model"]).grad_checkpoint is False
    unet = read_config(SHIPPED / "unet_course_v1")["model"]  # written before grad_checkpoint and cond_map
    assert "grad_checkpoint" not in unet and UNetConfig.from_dict(unet).grad_checkpoint is False
    now = {"unet": {**unet, "grad_checkpoint": True}, "diffusion": {}}  # the same model, checkpointing on
    assert model_identity({"unet": unet, "diffusion": {}}) == model_identity(now)  # resume_point's comparison
    assert model_identity({"unet": {**unet, "channels": [8]}, "diffusion": {}}) != model_identity(now)


# ------------------------------------------------------------------------------------------ frozen towers


@pytest.fixture(scope="module")
def view_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    write_toyshapes(12, folder, SampleSpec(n_points=1024, n_uniform=256, n_near=256, views=3, resolution=32),
                    seed=0, workers=1, progress=False)
    return folder


def _small_pretrained(monkeypatch):
    """ImageTower.pretrained -> a small random tower of the same name and output size (offline)."""
    from compress3d_lite.models.image_tower import ImageTower

    def fake(cls, cfg):
        torch.manual_seed(123)
        small = dataclasses.replace(cfg, image_size=32, patch_size=8, width=32, layers=1, heads=2)
        return cls(small)

    monkeypatch.setattr(ImageTower, "pretrained", classmethod(fake))


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_frozen_tower_embeds_views_once_and_stays_out_of_the_checkpoint(tmp_path, view_data, monkeypatch):
    _small_pretrained(monkeypatch)
    over = {"log_every": 2, "ckpt_every": 1000, "steps": 6, "batch_size": 4}
    kw = {"data": str(view_data), "image_tower": "vit_b32", "train_overrides": over, "progress": False}
    train_embed("lite", tmp_path / "straight", **kw)
    train_embed("lite", tmp_path / "resumed", stop_after=3, **kw)
    run = tmp_path / "resumed"
    cached = load_file(str(run / "image_embeddings.safetensors"))["e_i"]
    assert cached.shape == (12, 3, 512)
    torch.testing.assert_close(cached.norm(dim=-1), torch.ones(12, 3))
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert weights and not any(k.startswith("image_tower") for k in weights)
    assert "loss_fn.logit_scale" in weights and all(k.startswith(("shape_tower.", "loss_fn.")) for k in weights)
    train_embed("lite", run, resume=True, **kw)
    assert [r["loss"] for r in _log(run)] == [r["loss"] for r in _log(tmp_path / "straight")]
    assert not (run / "image_tower").exists()
    tower, shape, cfg = load_towers(run)  # by name, as a pretrained tower
    assert cfg["image_tower"]["name"] == "vit_b32" and cfg["image_tower"] == tower.identity()


# ------------------------------------------------------------------------------------------ two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, tmp_path, timeout=240):
    """``accelerate launch`` two CPU processes (gloo). accelerate's ``--cpu`` flag starts a single
    process unless given an MPI host file, so the two processes come from ``--multi_gpu`` with no
    GPU visible: the Accelerator then runs them on the CPU (``MULTI_CPU``)."""
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "compress3d_lite.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "C3D_FAST": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_two_process_training_on_cpu_writes_checkpoints_and_resumes(tmp_path):
    toy = tmp_path / "toy"
    write_toyshapes(8, toy, SampleSpec(n_points=1024, n_uniform=1024, n_near=1024, views=0), seed=0, workers=1,
                    progress=False)
    common = ["train", "ae", "--preset", "lite", "--data", str(toy)]
    p = _launch(common + ["--out", str(tmp_path / "run"), "--steps", "4"], tmp_path)
    run = tmp_path / "run"
    assert p.stdout.count("train ae: preset lite") == 1  # printed by the main process only
    vae, cfg = load_vae(run / "model")
    assert cfg["step"] == 4 and len(cfg["latent_stats"]["std"]) == 4
    assert read_config(run / "checkpoint")["step"] == 4
    trainer = run / "checkpoint" / "trainer"
    assert (trainer / "random_states_0.pkl").exists() and (trainer / "random_states_1.pkl").exists()  # 2 ranks
    assert not (run / ".rng_staging").exists()
    log = _log(run)
    assert log[-1]["step"] == 4 and math.isfinite(log[-1]["loss"])
    # interrupted at step 2 and resumed: the same numbers as the straight run, on both ranks
    _launch(common + ["--out", str(tmp_path / "resumed"), "--steps", "2"], tmp_path)
    _launch(common + ["--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"], tmp_path)
    assert _log(tmp_path / "resumed")[-1] == {**log[-1], "seconds": _log(tmp_path / "resumed")[-1]["seconds"]}
