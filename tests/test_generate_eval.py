"""Evaluating generation: near-surface IoU, per-category medians, the diagnosis rows, the
validation sweep and how its choice reaches the pipeline, starting partway (SDEdit)."""

import json
import subprocess
import sys

import pytest
import torch

from compress3d_lite.cli import main
from compress3d_lite.diffusion import DiffusionConfig, make_scheduler, sample
from compress3d_lite.evaluation.diagnose import (
    apply_settings,
    best_row,
    diagnose_generate,
    parse_samplers,
)
from compress3d_lite.evaluation.generate import Variant
from compress3d_lite.evaluation.test_set import held_out
from compress3d_lite.samples import shipped_checkpoint


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sample_from_partway_runs_only_the_last_steps(sampler):
    cfg = DiffusionConfig(prediction_type="sample")
    x_start = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    calls = []

    def oracle(x, t):  # predicts the clean sample exactly
        calls.append(int(t[0]))
        return x_start

    out = sample(oracle, x_start.shape, cfg, steps=10, sampler=sampler, generator=torch.Generator().manual_seed(1),
                 x_start=x_start, strength=0.3, scheduler=make_scheduler(cfg, sampler))
    assert len(calls) == 3 and max(calls) < 500  # the last 3 of 10 steps, all in the low-noise half
    assert torch.allclose(out, x_start, atol=1e-4)
    calls.clear()
    sample(oracle, x_start.shape, cfg, steps=10, sampler=sampler, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 10 and max(calls) >= 900  # strength 1 (default): from pure noise


def test_diagnosis_rows_order_as_they_should():
    """The ceiling (the true latent decoded) and a lightly noised true latent reconstruct well;
    one sampler step from pure noise does not. Per-category medians and near-surface IoU are there."""
    variants = [Variant("vae", decode_true=True), Variant("sdedit 0.2", shape="true", strength=0.2, steps=10),
                Variant("1 step", steps=1)]
    report = diagnose_generate("course", "val", n=3, variants=variants, progress=False, res=32)
    rows = {r["name"]: r["summary"] for r in report["rows"]}
    assert rows["vae"]["iou_median"] >= 0.8 and rows["vae"]["iou_near_median"] >= 0.7
    assert rows["sdedit 0.2"]["iou_median"] >= 0.75
    assert rows["1 step"]["iou_median"] < rows["vae"]["iou_median"] - 0.2
    assert set(rows["vae"]["category_iou_median"]) == {o.category for o in held_out("val", 3, "generate")}
    assert report["split"] == "val" and report["seed"] == 500


def _row(name, iou, acc, steps):  # near-surface and worst-category IoU move with the uniform one here
    return {"name": name, "summary": {"iou_median": iou, "iou_near_median": iou, "worst_category_iou": iou,
                                      "category_acc": acc}, "settings": {"steps": steps}}


def test_best_row_rule():
    rows = [_row("a", 0.70, 0.90, 25), _row("b", 0.703, 0.95, 25), _row("c", 0.72, 0.90, 25)]
    assert best_row(rows)["name"] == "c"  # b is more than 0.005 below the top
    rows.append(_row("d", 0.717, 0.93, 25))
    assert best_row(rows)["name"] == "d"  # within 0.005: the higher category accuracy
    rows.append(_row("e", 0.716, 0.93, 10))
    assert best_row(rows)["name"] == "e"  # then the fewer steps


def test_parse_samplers():
    assert parse_samplers("ddim:25, dpm:10") == [("ddim", 25), ("dpm", 10)]
    for bad in ("ddim", "heun:10", "dpm:0", ""):
        with pytest.raises(ValueError, match="`samplers`"):
            parse_samplers(bad)


def test_sweep_choice_reaches_the_pipeline(tmp_path):
    from compress3d_lite.pipeline import Compress3DPipeline

    shipped = Compress3DPipeline.from_pretrained("course", device="cpu")
    shipped.save_pretrained(tmp_path / "pipe")
    report = {"split": "val", "n_objects": 56, "best_settings": {
        "sampler": shipped.sampler, "steps": 12, "guidance_image": 3.0, "guidance_shape": 1.0,
        "guidance_interval": [0.0, 0.6], "guidance_rescale": 0.5}}
    apply_settings(str(tmp_path / "pipe"), report)
    pipe = Compress3DPipeline.from_pretrained(str(tmp_path / "pipe"), device="cpu")
    assert (pipe.sampler, pipe.steps, pipe.guidance()) == (shipped.sampler, 12, (3.0, 1.0))
    assert (pipe.default_guidance["interval"], pipe.default_guidance["rescale"]) == ([0.0, 0.6], 0.5)
    with pytest.raises(ValueError, match="shipped preset"):
        apply_settings("course", report)


def test_evaluate_generate_cli_reports_near_surface_and_categories(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["evaluate", "generate", "--split", "val", "--n", "2", "--steps", "2", "--res", "16",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median IoU per category" in printed and "target iou_near_median" in printed
    r = json.loads(out.read_text())
    s = r["with_prior"]
    assert set(s["category_iou_median"]) == {o.category for o in held_out("val", 2, "generate")}
    assert 0.0 <= s["iou_near_median"] <= 1.0 and s["worst_category_iou"] == min(s["category_iou_median"].values())
    shipped = json.loads((shipped_checkpoint("unet_course") / "config.json").read_text())
    assert r["settings"]["sampler"] == shipped["diffusion"]["sampler"] and r["settings"]["steps"] == 2  # --steps 2
    assert (r["settings"]["guidance_image"], r["settings"]["guidance_shape"]) == (shipped["guidance"]["image"],
                                                                                  shipped["guidance"]["shape"])
    assert set(r["targets"]) == {"iou_median", "iou_near_median", "worst_category_iou", "category_acc", "prior_helps"}


def test_sweep_cli_refuses_to_choose_on_test(capsys):
    assert main(["evaluate", "sweep", "--split", "test", "--apply", "--n", "2"]) == 2
    assert "never on test" in capsys.readouterr().err
    assert main(["evaluate", "sweep", "--samplers", "heun:5", "--n", "2"]) == 2
    assert "--samplers" in capsys.readouterr().err


def test_loading_a_vae_does_not_import_dynamo():
    """Checkpoint loading builds a skeleton on the meta device first; nothing there may pull in
    torch._dynamo (about a second of every generate's start-up)."""
    code = ("import sys; from compress3d_lite.inference.vae import load_vae; from compress3d_lite.samples import "
            "shipped_checkpoint; load_vae(shipped_checkpoint('vae_course')); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
