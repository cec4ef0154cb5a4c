"""Guidance over part of the noise range and rescaled (TriplaneUNet.guided), the objective chosen
from the command line, and the colour measures of ``evaluate generate`` (metrics.colour_error,
metrics.masked_colour_error)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from compress3d_lite.checkpoint import CheckpointError
from compress3d_lite.evaluation import metrics
from compress3d_lite.evaluation.diagnose import best_row, parse_intervals, selection_score
from compress3d_lite.inference.unet import check_sampling_record, load_unet
from compress3d_lite.models.triplane_unet import TriplaneUNet, UNetConfig
from compress3d_lite.samples import sample_path, shipped_checkpoint
from compress3d_lite.stages.unet import train_unet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = TriplaneUNet(UNetConfig(latent_channels=2, latent_res=4, channels=(8, 16), embed_dim=8, time_dim=8, heads=2))
    for p in net.parameters():  # the nulls and the zero-initialised layers would make every pass agree
        p.data.normal_(0, 0.2)
    return net.eval()


def _inputs(t: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 2, 4, 4, generator=g), torch.full((2,), t), torch.randn(2, 8, generator=g),
            torch.randn(2, 8, generator=g))


def test_outside_its_interval_guidance_is_the_plain_conditional_and_inside_it_is_not(unet):
    x, t, e_i, e_s = _inputs(900)
    no = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        cond = unet(x, t, e_i, e_s, no, no)
        outside = unet.guided(x, t, e_i, e_s, 3.0, 2.0, interval=(0.0, 0.5))
        inside = unet.guided(x, t, e_i, e_s, 3.0, 2.0, interval=(0.5, 1.0))
        image_only = unet.guided(x, t, e_i, e_s, 3.0, 2.0, use_shape=False, interval=(0.0, 0.5))
    assert torch.allclose(outside, cond)
    assert not torch.allclose(inside, cond, atol=1e-3)
    assert torch.allclose(image_only, unet(x, t, e_i, e_s, no, ~no))  # f(i, 0) without the prior


def test_rescale_brings_the_guided_std_back_to_the_conditionals(unet):
    x, t, e_i, e_s = _inputs(300)
    no = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        cond = unet(x, t, e_i, e_s, no, no)
        plain = unet.guided(x, t, e_i, e_s, 5.0, 3.0)
        full = unet.guided(x, t, e_i, e_s, 5.0, 3.0, rescale=1.0)
        half = unet.guided(x, t, e_i, e_s, 5.0, 3.0, rescale=0.5)
    dims = (1, 2, 3, 4)
    assert torch.allclose(full.std(dim=dims), cond.std(dim=dims), rtol=1e-4)
    assert not torch.allclose(plain.std(dim=dims), cond.std(dim=dims), rtol=1e-2)
    assert torch.allclose(half, (plain + full) / 2, atol=1e-5)


def test_a_checkpoint_with_a_bad_guidance_interval_or_rescale_is_refused_naming_the_field():
    stats = {"mean": [0.0], "std": [1.0]}
    check_sampling_record({"latent_stats": stats, "guidance": {"image": 3, "interval": [0.0, 0.6], "rescale": 0.7}},
                          1, "unet/config.json")
    for bad, field in (({"interval": [0.6, 0.2]}, "interval"), ({"interval": [0, 2]}, "interval"),
                       ({"interval": "all"}, "interval"), ({"rescale": 1.5}, "rescale"), ({"rescale": "x"}, "rescale")):
        with pytest.raises(CheckpointError, match=rf"unet/config.json: guidance\.{field}"):
            check_sampling_record({"latent_stats": stats, "guidance": bad}, 1, "unet/config.json")


def test_intervals_parse_and_bad_ones_are_refused():
    assert parse_intervals("0-1, 0.2-0.8") == [(0.0, 1.0), (0.2, 0.8)]
    for bad in ("0.8-0.2", "0-1.5", "a-b", "0.5"):
        with pytest.raises(ValueError, match="`intervals`"):
            parse_intervals(bad)


def test_the_sweep_prefers_near_surface_and_worst_category_over_uniform_iou_alone():
    def row(name, iou, near, worst):
        return {"name": name, "settings": {"steps": 20},
                "summary": {"iou_median": iou, "iou_near_median": near, "worst_category_iou": worst,
                            "category_acc": 0.9}}
    bulk = row("bulk", 0.72, 0.50, 0.20)  # the best uniform IoU, thin parts broken
    thin = row("thin", 0.70, 0.58, 0.40)
    assert selection_score(thin["summary"]) > selection_score(bulk["summary"])
    assert best_row([bulk, thin])["name"] == "thin"


def test_colour_error_counts_each_part_once_however_small():
    gt = np.zeros((100, 3))
    parts = np.array([0] * 95 + [1] * 5)  # a big body, a small tip
    pred = gt.copy()
    pred[95:] = 1.0  # only the tip is wrong, completely
    e = metrics.colour_error(pred, gt, parts)
    assert e["colour_err"] == pytest.approx(0.05)  # area-weighted: the tip hardly counts
    assert e["colour_err_parts"] == pytest.approx(0.5)  # per part: it counts as much as the body
    assert e["colour_err_worst_part"] == pytest.approx(1.0) and e["worst_part"] == 1


def test_masked_colour_error_looks_only_where_both_renders_cover():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros((4, 4, 4), np.uint8)
    a[:2, :, 3] = 255
    a[:2, :, :3] = 255  # white top half
    b[:, :2, 3] = 255  # black left half; shared: the top-left quarter, all wrong by 1
    b[2:, 2:, :3] = 200  # uncovered pixels do not count, whatever their rgb
    assert metrics.masked_colour_error(a, b) == pytest.approx(1.0)
    b[..., 3] = 0
    assert metrics.masked_colour_error(a, b) is None


def test_train_diffusion_records_the_objective_chosen_on_the_command_line(tmp_path):
    out = tmp_path / "flow"
    cmd = [sys.executable, "-m", "compress3d_lite.cli", "train", "diffusion", "--preset", "lite",
           "--vae", str(shipped_checkpoint("vae_course")), "--embed", str(shipped_checkpoint("embed_course")),
           "--data", str(sample_path("toyshapes")), "--out", str(out), "--steps", "2", "--batch-size", "2",
           "--objective", "rectified_flow", "--timesteps", "logit_normal", "--logit-mean", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    d = json.loads((out / "unet" / "config.json").read_text())["diffusion"]
    assert (d["objective"], d["sampler"], d["timesteps"], d["logit_mean"]) == ("rectified_flow", "euler",
                                                                                 "logit_normal", 1.0)
    model, _ = load_unet(out / "unet")
    assert model.diffusion_cfg.objective == "rectified_flow"
    bad = subprocess.run(cmd[:-6] + ["--logit-mean", "1"], capture_output=True, text=True)  # lite: uniform
    assert bad.returncode == 2 and "logit_normal" in bad.stderr and "Traceback" not in bad.stderr


def test_a_run_resumed_with_another_objective_is_refused(tmp_path):
    kw = {"vae": str(shipped_checkpoint("vae_course")), "embed": str(shipped_checkpoint("embed_course")),
          "data": str(sample_path("toyshapes")), "progress": False,
          "train_overrides": {"steps": 4, "batch_size": 2, "ckpt_every": 1000}}
    train_unet("lite", tmp_path / "run", stop_after=2, **kw)
    with pytest.raises(Exception, match="diffusion.objective: .ddpm. -> .rectified_flow."):
        train_unet("lite", tmp_path / "run", resume=True, diffusion={"objective": "rectified_flow",
                                                                     "sampler": "euler"}, **kw)
