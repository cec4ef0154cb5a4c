"""The GPU presets' training paths on a CPU: every stage trains and samples under bfloat16
autocast at the colab_t4 / a100_full structure (shrunk), and the EMA of the prior and the UNet is
written, used by the loaders and the pipeline, and resumed exactly."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from compress3d_lite.checkpoint import read_config
from compress3d_lite.cli import main
from compress3d_lite.config import STAGE_NAMES
from compress3d_lite.inference.prior import load_prior
from compress3d_lite.inference.unet import load_unet
from compress3d_lite.pipeline import Compress3DPipeline
from compress3d_lite.presets import prior_preset, unet_preset
from compress3d_lite.samples import sample_path, shipped_checkpoint
from compress3d_lite.scaling.precision_check import check, train_steps
from compress3d_lite.stages.unet import train_unet

# ------------------------------------------------------------------------------------------ bf16


@pytest.mark.parametrize("preset", ["colab_t4", "a100_full"])
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_stage_trains_and_samples_under_bf16_autocast(stage, preset):
    r = check(stage, preset, steps=3)
    assert r["precision"] == "bf16" and r["preset_precision"] == {"colab_t4": "fp16", "a100_full": "bf16"}[preset]
    assert len(r["losses"]) == 3 and all(torch.isfinite(torch.tensor(r["losses"])))
    assert all(r["sampling"]["finite"].values()), r["sampling"]
    # autocast really ran: the Linear / Conv kernels returned bf16, in training and in sampling
    assert r["kernel_dtypes"].get("torch.bfloat16", 0) > 0 and r["sampling"]["kernel_dtypes"].get("torch.bfloat16")
    assert r["ema"] is (True if stage in ("prior", "diffusion") else None)  # the GPU presets keep an EMA there
    assert r["grad_checkpoint"] is (stage in ("ae", "diffusion"))  # recomputation under autocast ran too
    assert r["ok"]


def test_the_autocast_check_can_tell_fp32_from_bf16():
    r = train_steps("prior", "a100_full", "no", steps=1)
    assert r["kernel_dtypes"] and "torch.bfloat16" not in r["kernel_dtypes"]


def test_precision_check_script_reports_and_writes_json(tmp_path, capsys):
    assert main(["train", "precision-check", "--stages", "prior", "--presets", "a100_full", "--steps", "2", "--json",
                 str(tmp_path / "p.json")]) == 0
    assert "ok   a100_full prior     bf16 on cpu" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())[0]["ok"] is True


# ------------------------------------------------------------------------------------------ EMA


def test_gpu_presets_keep_an_ema_of_the_prior_and_the_unet():
    for preset in ("colab_t4", "a100_full"):
        assert prior_preset(preset).train.ema_decay == 0.9999 and unet_preset(preset).train.ema_decay == 0.9999
    assert unet_preset("lite").train.ema_decay == 0  # the CPU presets train minutes: no EMA


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """A lite UNet on the shipped VAE's latents and towers, 8 bf16 steps with an EMA: straight, and
    stopped at step 4 then resumed."""
    root = tmp_path_factory.mktemp("ema")
    kw = {"vae": str(shipped_checkpoint("vae_course")), "embed": str(shipped_checkpoint("embed_course")),
          "data": str(sample_path("toyshapes")), "progress": False,
          "train_overrides": {"steps": 8, "batch_size": 4, "ema_decay": 0.8, "mixed_precision": "bf16",
                              "log_every": 2, "ckpt_every": 1000}}
    train_unet("lite", root / "straight", **kw)
    train_unet("lite", root / "resumed", stop_after=4, **kw)
    assert not (root / "resumed" / "unet").exists()  # stopped early: no release yet
    train_unet("lite", root / "resumed", resume=True, **kw)
    return root


def test_ema_is_written_and_resumes_exactly(ema_runs):
    straight, resumed = ema_runs / "straight", ema_runs / "resumed"
    logs = [[json.loads(x)["loss"] for x in (r / "log.jsonl").read_text().splitlines()] for r in (straight, resumed)]
    assert logs[0] == logs[1] and len(logs[0]) == 4
    a, b = load_file(straight / "unet" / "ema.safetensors"), load_file(resumed / "unet" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw = load_file(straight / "unet" / "model.safetensors")
    assert a.keys() == raw.keys() and any(not torch.equal(a[k], raw[k]) for k in a)  # an average, not a copy
    n = load_file(straight / "checkpoint" / "trainer" / "ema.safetensors")["n_averaged"]
    assert int(n) == 8  # one update per optimiser step, resumed with the trainer


def test_loaders_and_the_pipeline_use_the_ema_when_present(ema_runs, tmp_path):
    folder = ema_runs / "straight" / "unet"
    ema, raw = load_file(folder / "ema.safetensors"), load_file(folder / "model.safetensors")
    unet, _ = load_unet(folder)
    assert unet.weights_used == "ema" and set(ema) == set(unet.state_dict())
    assert all(torch.equal(v, ema[k]) for k, v in unet.state_dict().items())
    unet, _ = load_unet(folder, use_ema=False)
    assert unet.weights_used == "model" and all(torch.equal(v, raw[k]) for k, v in unet.state_dict().items())
    # a whole pipeline with this UNet: from_pretrained takes the EMA of the UNet (use_ema=False: the raw weights)
    pipe = Compress3DPipeline.from_pretrained("course", device="cpu").save_pretrained(tmp_path / "pipe")
    shutil.rmtree(pipe / "unet")
    shutil.copytree(folder, pipe / "unet")
    assert Compress3DPipeline.from_pretrained(pipe, device="cpu").unet.weights_used == "ema"
    assert Compress3DPipeline.from_pretrained(pipe, device="cpu", use_ema=False).unet.weights_used == "model"


def test_the_prior_keeps_its_ema_too_from_the_command_line(tmp_path):
    from compress3d_lite.cli import main

    assert main(["train", "prior", "--preset", "lite", "--embed", str(shipped_checkpoint("embed_course")),
                 "--data", str(sample_path("toyshapes")), "--out", str(tmp_path / "prior"), "--steps", "4",
                 "--batch-size", "8", "--ema-decay", "0.5"]) == 0
    folder = tmp_path / "prior" / "prior"
    assert read_config(folder)["train"]["ema_decay"] == 0.5
    ema = load_file(folder / "ema.safetensors")
    prior, _ = load_prior(folder)
    assert prior.weights_used == "ema" and set(ema) == set(prior.state_dict())
    assert all(torch.equal(v, ema[k]) for k, v in prior.state_dict().items())
    assert load_prior(folder, use_ema=False)[0].weights_used == "model"
