"""``compress3d-lite reconstruct`` and ``evaluate ae`` with the shipped course checkpoint.

Reconstructions run at a small grid (--res 48) to keep the file fast; the frame and scale of the
output are what is checked, not the quality of the course model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from compress3d_lite.cli import main
from compress3d_lite.samples import sample_path, shipped_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EVAL_MESHES = ROOT.parent / "shared" / "eval_assets" / "meshes"
LAMP = sample_path("meshes", "toy_lamp.glb")
DEFAULT_CKPT = shipped_checkpoint("vae_course")

needs_ckpt = pytest.mark.skipif(not (DEFAULT_CKPT / "model.safetensors").exists(),
                                reason="the shipped checkpoint is absent")


def original_bounds(path):
    """Bounds of a mesh file in its own frame and scale: (2, 3)."""
    from compress3d_lite.data.mesh_import import load_colored_mesh

    cmesh, transform = load_colored_mesh(path)
    v = trimesh.transformations.transform_points(cmesh.mesh.vertices, np.linalg.inv(transform))
    return np.array([v.min(0), v.max(0)])


def check_output(out, expected_bounds, tol=0.15):
    mesh = trimesh.load(out, force="mesh", process=False)
    assert len(mesh.faces) > 100
    assert mesh.visual.kind == "vertex"
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert rgb.std(axis=0).max() > 1  # really coloured, not one flat default colour
    extent = (expected_bounds[1] - expected_bounds[0]).max()
    err = np.abs(mesh.bounds - expected_bounds).max() / extent
    assert err < tol, f"bounds {mesh.bounds.tolist()} vs input {expected_bounds.tolist()}"
    return mesh


@needs_ckpt
@pytest.mark.parametrize("asset", ["duck/Duck.glb", "fox/Fox.glb"])
def test_reconstruct_a_real_glb_in_its_own_frame(tmp_path, capsys, asset):
    src = EVAL_MESHES / asset
    if not src.exists():
        pytest.skip("../shared/eval_assets is absent (only present next to the developers' checkout)")
    out = tmp_path / "recon.glb"
    assert main(["reconstruct", str(src), "-o", str(out), "--res", "48"]) == 0
    printed = capsys.readouterr().out
    assert "encode" in printed and "marching_cubes" in printed and f"wrote {out}" in printed
    check_output(out, original_bounds(src))
    if asset.startswith("fox"):  # the fox is ~155 units long: the scale really is the file's
        assert 140 < trimesh.load(out, force="mesh").extents.max() < 170


@needs_ckpt
def test_reconstruct_sample_lamp_and_a_toy_npz(tmp_path):
    out = tmp_path / "lamp.ply"
    assert main(["reconstruct", str(LAMP), "-o", str(out), "--res", "48", "--preset", "course"]) == 0
    check_output(out, original_bounds(LAMP))

    from compress3d_lite.data.io import load_object

    npz = sample_path("toyshapes", "000001.npz")
    obj = load_object(npz)
    out = tmp_path / "toy.obj"
    assert main(["reconstruct", str(npz), "-o", str(out), "--res", "48"]) == 0
    # the toy object's own (recipe) frame: the data-frame points mapped back by the inverse transform
    pts = trimesh.transformations.transform_points(obj["points"], np.linalg.inv(obj["transform"]))
    check_output(out, np.array([pts.min(0), pts.max(0)]))


def corrupt_copy(tmp_path, what):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_CKPT, ckpt)
    if what == "weights":
        (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    else:
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["kind"] = "diffusion_prior"
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


@needs_ckpt
@pytest.mark.parametrize("case", ["missing_ckpt", "corrupt_weights", "other_kind", "other_preset",
                                  "empty_obj", "bad_suffix", "missing_input"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    ckpt, src, out, extra = DEFAULT_CKPT, LAMP, tmp_path / "out" / "recon.glb", []
    if case == "missing_ckpt":
        ckpt = named = tmp_path / "no_such_ckpt"
    elif case == "corrupt_weights":
        ckpt = corrupt_copy(tmp_path, "weights")
        named = ckpt / "model.safetensors"
    elif case == "other_kind":
        ckpt = named = corrupt_copy(tmp_path, "kind")
    elif case == "other_preset":
        extra, named = ["--preset", "lite"], DEFAULT_CKPT
    elif case == "empty_obj":
        src = named = tmp_path / "empty.obj"
        src.write_bytes(b"")
    elif case == "bad_suffix":
        out = named = tmp_path / "out" / "recon.stl"
    else:
        src = named = tmp_path / "nothing_here.glb"
    before = sorted(tmp_path.rglob("*"))
    code = main(["reconstruct", str(src), "--ckpt", str(ckpt), "-o", str(out), "--res", "32", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert str(named) in err
    assert not out.exists() and not out.parent.exists()
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere, no temporary files


@needs_ckpt
def test_evaluate_writes_a_report(tmp_path, capsys):
    from compress3d_lite.evaluation.test_set import SPLITS

    assert SPLITS == {"train": 0, "val": 500, "test": 1000}
    out = tmp_path / "eval.json"
    assert main(["evaluate", "ae", "--split", "val", "--n", "2", "--res", "32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mug" in printed and "table" in printed and "target iou" in printed
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["seed"] == 500 and report["n_objects"] == 2
    assert [r["category"] for r in report["objects"]] == ["mug", "table"]
    assert report["config"]["preset"] == "course"
    for row in report["objects"]:
        assert 0.5 < row["iou"] <= 1 and 0 < row["chamfer_l1"] < 0.1 and 0 <= row["f_score"] <= 1
        assert 10 < row["psnr"] < 50
    assert set(report["targets"]) == {"iou", "chamfer_l1", "psnr"}
    assert report["mean"]["iou"] == pytest.approx(np.mean([r["iou"] for r in report["objects"]]), abs=1e-4)
