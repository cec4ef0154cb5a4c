"""The UNet's start estimate (models/start_estimate.py, stages/unet.py: fit_start, train_start,
load_start) and the pipeline's ``start="regression"``: the UNet starts from the estimate noised to
its strength, exactly as from an explicit ``x_start``; the estimate travels with a saved pipeline;
what cannot work is refused in the caller's words."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from compress3d_lite.inference.unet import load_start
from compress3d_lite.models.start_estimate import StartConfig, StartEstimate
from compress3d_lite.pipeline import Compress3DPipeline
from compress3d_lite.samples import sample_path, shipped_checkpoint
from compress3d_lite.stages.start import train_start
from compress3d_lite.training.run_folder import TrainingError


@pytest.fixture(scope="module")
def start():
    torch.manual_seed(0)
    return StartEstimate(StartConfig(embed_dim=256, latent_channels=8, latent_res=16, strength=0.4)).eval()


def _embeds(pipe, n=2):
    e_i = pipe.embed_images([str(sample_path("toyshapes", "images", f"00000{k}_0.png")) for k in range(n)])
    return e_i, pipe.sample_shape_embeds(e_i, [torch.Generator().manual_seed(k) for k in range(n)])


def test_a_regression_start_is_the_estimate_noised_to_its_strength(pipe, start):
    e_i, e_s = _embeds(pipe)
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(2)]  # noqa: E731
    kept, pipe.start = pipe.start, start
    try:
        z = pipe.sample_latents(e_i, e_s, generators=gens(), progress=False, start="regression")
        by_hand = pipe.sample_latents(e_i, e_s, generators=gens(), progress=False,
                                      x_start=start(e_i, e_s), strength=0.4)
        from_noise = pipe.sample_latents(e_i, e_s, generators=gens(), progress=False)
    finally:
        pipe.start = kept
    assert torch.allclose(z, by_hand)
    assert not torch.allclose(z, from_noise, atol=1e-3)


def test_what_a_regression_start_cannot_do_is_refused_by_argument_name(pipe, start):
    kept, pipe.start = pipe.start, None
    try:
        with pytest.raises(ValueError, match="start='regression' needs the UNet's StartEstimate"):
            pipe.check_settings(start="regression")
    finally:
        pipe.start = kept
    with pytest.raises(ValueError, match="start must be one of noise, regression"):
        pipe.check_settings(start="regresion")
    kept, pipe.start = pipe.start, start
    try:
        with pytest.raises(ValueError, match="use_prior=False"):
            pipe(str(sample_path("toyshapes", "images", "000003_0.png")), start="regression", use_prior=False)
    finally:
        pipe.start = kept


def test_the_start_estimate_travels_with_a_saved_pipeline(pipe, start, tmp_path):
    kept, pipe.start = pipe.start, start
    try:
        pipe.save_pretrained(tmp_path / "p")
    finally:
        pipe.start = kept
    again = Compress3DPipeline.from_pretrained(str(tmp_path / "p"), device="cpu")
    assert again.start is not None and again.start.cfg.strength == 0.4
    assert all(torch.equal(a, b) for a, b in zip(again.start.state_dict().values(), start.state_dict().values()))
    shutil.rmtree(tmp_path / "p" / "unet" / "start")
    assert Compress3DPipeline.from_pretrained(str(tmp_path / "p"), device="cpu").start is None


def _run_folder(root, n=12):
    """A `train diffusion` run folder: the shipped UNet and a cache of n random latents and embeddings."""
    run = root / "run"
    run.mkdir()
    unet = run / "unet"
    unet.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(shipped_checkpoint("unet_course") / f, unet / f)
    g = torch.Generator().manual_seed(0)
    save_file({"mu": torch.randn(n, 3, 8, 16, 16, generator=g), "e_i": torch.randn(n, 2, 256, generator=g),
               "e_s": torch.randn(n, 256, generator=g)}, str(run / "latents.safetensors"))
    return run


def test_train_start_writes_an_estimate_the_unet_loads_and_refuses_a_second(tmp_path):
    run = _run_folder(tmp_path)
    done = train_start(run, steps=5, strength=0.3)
    start = load_start(run / "unet")
    assert start.cfg.strength == 0.3 and start.cfg.latent_res == 16
    assert start.checkpoint_info["train"]["steps"] == 5 and done["final_loss"] > 0
    with pytest.raises(TrainingError, match="exists"):
        train_start(run, steps=5)
    train_start(run, steps=5, strength=0.6, overwrite=True)
    assert load_start(run / "unet").cfg.strength == 0.6


def test_the_train_start_command_names_a_folder_that_is_not_a_run(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "compress3d_lite.cli", "train", "start", "--run", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and str(tmp_path) in bad.stderr and "latents.safetensors" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "compress3d_lite.cli", "train", "start", "--run", str(tmp_path),
                          "--strength", "1.5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--strength" in bad.stderr


def test_a_start_estimate_of_other_sizes_is_refused_at_load(tmp_path):
    run = _run_folder(tmp_path)
    start = StartEstimate(StartConfig(embed_dim=64, latent_channels=8, latent_res=16))
    start.save_pretrained(run / "unet" / "start")
    with pytest.raises(Exception, match="embeddings / latents of size"):
        load_start(run / "unet")


def test_generate_with_a_regression_start_records_it_and_names_its_flags(tmp_path):
    image = str(sample_path("toyshapes", "images", "000003_0.png"))
    cmd = [sys.executable, "-m", "compress3d_lite.cli", "generate", image, "--steps", "2", "--res", "32",
           "--start", "regression"]
    done = subprocess.run(cmd + ["-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "generate.json").read_text())
    assert report["settings"]["start"] == "regression" and report["n_failed"] == 0
    bad = subprocess.run(cmd + ["-o", str(tmp_path / "bad"), "--no-prior"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--no-prior" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
