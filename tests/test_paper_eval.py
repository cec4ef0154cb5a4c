"""The paper-protocol metrics (FID, CLIP similarity) and the `evaluate paper` command."""

import json

import numpy as np
import pytest
import torch

from compress3d_lite.cli import main
from compress3d_lite.data.render import intrinsics, orbit_cameras, render_views
from compress3d_lite.data.toyshapes import make_toy_object
from compress3d_lite.evaluation.image_metrics import (
    clip_similarity,
    fid,
    fid_features,
    inception_available,
    to_rgb_tensor,
)
from compress3d_lite.evaluation.paper import format_markdown, parse_grid
from compress3d_lite.evaluation.protocol import Protocol, eval_cameras
from compress3d_lite.inference.embed import load_towers
from compress3d_lite.samples import shipped_checkpoint


@pytest.fixture(scope="module")
def tower():
    return load_towers(shipped_checkpoint("embed_course"))[0]


@pytest.fixture(scope="module")
def renders():
    """(48, 3, 64, 64) views of 24 held-out toy objects, on white."""
    views = []
    for i in range(24):
        obj = make_toy_object(1000, i)
        cams = orbit_cameras(2, np.random.default_rng(i))
        views.append(render_views(obj.colored_mesh(), cams, intrinsics(64, 40.0), 64)[0])
    return to_rgb_tensor(np.concatenate(views))


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(tower, renders):
    feature, info = fid_features("tower", tower)
    assert info["name"] == "open_clip tower toy" and not info["standard"]
    assert fid(renders, renders, feature) < 1e-3
    g = torch.Generator().manual_seed(0)
    noisy = [fid(renders, (renders + s * torch.randn(renders.shape, generator=g)).clamp(0, 1), feature)
             for s in (0.03, 0.1, 0.3)]
    assert 0.01 < noisy[0] < noisy[1] < noisy[2], noisy


def test_fid_sees_a_shift_of_the_distribution_not_just_noise(tower, renders):
    feature, _ = fid_features("tower", tower)
    darker = renders * 0.6
    assert fid(renders, darker, feature) > 10 * fid(renders, renders.flip(0), feature) + 1.0


def test_clip_similarity_of_an_image_to_itself_is_the_maximum(tower, renders):
    a = renders[:8]
    own = clip_similarity(tower, a, a)
    assert torch.allclose(own, torch.ones(8), atol=1e-5)
    for shift in range(1, 8):  # every other pairing scores lower
        other = clip_similarity(tower, a, a.roll(shift, 0))
        assert (other < own - 1e-3).all()
    one = clip_similarity(tower, a, a[:1])  # one reference against all
    assert one[0] == pytest.approx(1.0, abs=1e-5) and (one[1:] < 0.999).all()


def test_rgba_is_composited_on_white_and_bad_shapes_are_refused():
    rgba = np.zeros((1, 4, 4, 4), np.uint8)  # fully transparent black
    assert torch.allclose(to_rgb_tensor(rgba), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="N, H, W"):
        to_rgb_tensor(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 2"):
        fid(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 8, 8), 2048)


def test_inception_request_without_weights_says_how_to_get_them(tower):
    if inception_available():
        pytest.skip("Inception weights are here")
    with pytest.raises(RuntimeError, match="torch-fidelity"):
        fid_features("inception", tower)
    assert fid_features("auto", tower)[1]["name"].startswith("open_clip")


def test_eval_cameras_and_grid():
    cams = eval_cameras(Protocol(views=4))
    eyes = cams[:, :3, 3]
    assert np.allclose(np.linalg.norm(eyes, axis=1), 4.6)
    assert np.allclose(eyes[:, 1], 4.6 * np.sin(np.deg2rad(20)))  # all at 20 degrees elevation
    assert len({tuple(np.round(e, 3)) for e in eyes}) == 4
    assert parse_grid("1,5x1") == [(1.0, 1.0), (5.0, 1.0)]
    with pytest.raises(ValueError, match="`guidance_grid`"):
        parse_grid("1,2,5")


def test_evaluate_paper_command_writes_json_and_the_paper_table(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "paper", "--n", "3", "--views", "2", "--view-res", "48", "--mesh-res", "32",
               "--steps", "4", "--ablations", "prior", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "paper_eval.json").read_text())
    md = (out / "paper_eval.md").read_text()
    assert "53.21" in md and "66.46" in md and "open_clip tower toy" in md  # the paper beside ours, extractor named
    for variant in (report["main"], report["ablations"]["prior"]):
        assert variant["fid"] >= 0 and -1 <= variant["clip_sim"] <= 1 and 0 <= variant["iou_median"] <= 1
        assert len(variant["objects"]) == 3
    assert report["latent_shape"] == [3, 8, 16, 16] and report["train_objects"] == 2048
    assert format_markdown(report) == md


def test_evaluate_paper_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "paper", "--n", "2", "--ablations", "prior,colour", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "colour" in err[0]
    assert main(["evaluate", "paper", "--n", "2", "--guidance-grid", "5", "--ablations", "guidance",
                 "--out", str(out)]) == 2
    assert "guidance-grid" in capsys.readouterr().err
    assert not out.exists()
