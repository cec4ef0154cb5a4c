"""Bad input and bad luck on the output side: each case ends in one ``error:`` line naming the
thing and the problem, exit code 2, before any long computation, with nothing half-written;
nothing that exists is replaced or mixed without being asked (docs/design.md §6.2).
``.ci/bad_inputs.py`` runs the same cases (and more) through the installed command line."""

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from compress3d_lite import checkpoint
from compress3d_lite.cli import main, one_line_warnings
from compress3d_lite.config import ConfigError, SampleSpec, check_sizes, preset_bounds
from compress3d_lite.data.images import ImageError, ImageWarning, load_image
from compress3d_lite.data.io import OutputError, load_object, output_lock, prepare_output_folder, read_index
from compress3d_lite.data.mesh_import import MeshImportWarning, import_mesh
from compress3d_lite.pipeline import Compress3DPipeline
from compress3d_lite.samples import sample_path, shipped_checkpoint

IMAGE = sample_path("toyshapes", "images", "000003_0.png")
GLB = sample_path("meshes", "toy_lamp.glb")
SPEC = SampleSpec(n_points=256, n_uniform=256, n_near=256, views=0)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, *needles) -> str:
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture
def no_pipeline(monkeypatch):
    """Checks must come before the pipeline is even loaded."""
    def refuse(*a, **k):
        raise AssertionError("the pipeline was loaded before the bad input was seen")
    monkeypatch.setattr(Compress3DPipeline, "from_pretrained", classmethod(refuse))


@pytest.fixture
def cached_pipeline(monkeypatch, pipe):
    """The shared pipeline, and a call that fails the test if any image is processed."""
    monkeypatch.setattr(Compress3DPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    return pipe


# ----------------------------------------------------------------------------------------------
# output paths


def test_generate_output_under_a_regular_file_fails_before_loading(tmp_path, capsys, no_pipeline):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "generate", IMAGE, "-o", tmp_path / "afile" / "sub")
    assert code == 2
    one_error(err, "afile is a file, not a folder")


def test_generate_output_where_nothing_can_be_written_fails_before_loading(capsys, no_pipeline):
    code, _, err = run(capsys, "generate", IMAGE, "-o", "/proc/c3d_out")  # not writable even for root
    assert code == 2
    one_error(err, "/proc/c3d_out", "cannot write")


def test_reconstruct_output_checks_come_first_and_overwrite_is_asked_for(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "reconstruct", GLB, "-o", tmp_path / "afile" / "m.glb")
    assert code == 2 and not (tmp_path / "afile" / "m.glb").exists()
    one_error(err, "afile")
    existing = tmp_path / "m.glb"
    existing.write_bytes(b"earlier")
    code, _, err = run(capsys, "reconstruct", GLB, "-o", existing, "--res", "16")
    assert code == 2 and existing.read_bytes() == b"earlier"
    one_error(err, str(existing), "--overwrite")
    code, _, err = run(capsys, "reconstruct", GLB, "-o", existing, "--res", "16", "--overwrite")
    assert code == 0 and trimesh.load(existing, force="mesh").faces.shape[0] > 0


def test_prepare_output_folder_leaves_no_trace_unless_asked_to_create(tmp_path):
    target = tmp_path / "a" / "b"
    prepare_output_folder(target)
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    prepare_output_folder(target, create=True)
    assert target.is_dir() and list(target.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# argument limits


@pytest.mark.parametrize("args, needle", [
    (["--seed", str(2 ** 64)], "--seed must be in 0..2**64-1"),
    (["--seed", "-1"], "--seed must be in 0..2**64-1"),
    (["--guidance-image", "nan"], "--guidance-image must be a finite number"),
    (["--guidance-shape", "inf"], "--guidance-shape must be a finite number"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_generate_arguments_checked_before_loading(tmp_path, capsys, no_pipeline, args, needle):
    if "--device" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, _, err = run(capsys, "generate", IMAGE, "-o", tmp_path / "out", *args)
    assert code == 2 and not (tmp_path / "out").exists()
    one_error(err, needle)


@pytest.mark.parametrize("args, needle", [
    (["--steps", "1001"], "--steps must be in 1..1000"),
    (["--res", "5000"], "--res must be in 8.."),
])
def test_generate_limits_of_the_loaded_pipeline_checked_before_any_image(tmp_path, capsys, cached_pipeline,
                                                                          monkeypatch, args, needle):
    monkeypatch.setattr(type(cached_pipeline), "__call__", lambda *a, **k: pytest.fail("an image was processed"))
    code, _, err = run(capsys, "generate", IMAGE, "-o", tmp_path / "out", *args)
    assert code == 2 and not (tmp_path / "out").exists()
    one_error(err, needle)


def test_devices_and_endless_files_are_not_images(tmp_path):
    with pytest.raises(ImageError, match="/dev/zero: not a regular file"):
        load_image("/dev/zero")
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(300 * 2 ** 20)  # sparse: 300 MiB on paper
    with pytest.raises(ImageError, match="larger than any image we read"):
        load_image(big)


def test_an_image_over_pillows_limit_is_read_with_one_warning_line(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # a small limit stands for 89 M pixels
    Image.new("RGB", (120, 120), "red").save(tmp_path / "big.png")
    with pytest.warns(ImageWarning, match="more than Pillow's safety limit"):
        assert load_image(tmp_path / "big.png").size == (120, 120)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    one_line_warnings()  # what the command line installs
    line = warnings.formatwarning(ImageWarning("x.png: 150 x 150 pixels"), ImageWarning, "images.py", 99, "src")
    assert line == "warning: x.png: 150 x 150 pixels\n"


@pytest.mark.parametrize("argv, needle", [
    (["train", "ae", "--preset", "lite", "--out", "R", "--steps", "0"], "--steps must be >= 1"),
    (["train", "ae", "--preset", "lite", "--out", "R", "--seed", "-3"], "--seed must be in"),
    (["data", "toyshapes", "--n", "1", "--out", "D", "--res", "100000"], "--res <= 2048"),
    (["demo", "--out", "D", "--n", "0"], "--n must be >= 1"),
])
def test_other_commands_check_their_limits(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, *[a if a not in ("R", "D") else tmp_path / a for a in argv])
    assert code == 2 and not (tmp_path / "R").exists() and not (tmp_path / "D").exists()
    one_error(err, needle)


# ----------------------------------------------------------------------------------------------
# folders written twice


def test_generate_twice_into_one_folder_refuses_and_overwrite_keeps_folder_and_report_in_step(tmp_path, capsys,
                                                                                              cached_pipeline):
    out = tmp_path / "out"
    other = tmp_path / "other.png"
    shutil.copy(IMAGE, other)
    assert run(capsys, "generate", IMAGE, other, "-o", out, "--res", "16", "--steps", "1")[0] == 0
    first = (out / "generate.json").read_text()
    code, _, err = run(capsys, "generate", IMAGE, "-o", out, "--res", "16", "--steps", "1", "--seed", "7")
    assert code == 2 and (out / "generate.json").read_text() == first
    one_error(err, "generate.json", "--overwrite")
    code, _, _ = run(capsys, "generate", IMAGE, "-o", out, "--res", "16", "--steps", "1", "--seed", "7", "--overwrite")
    report = json.loads((out / "generate.json").read_text())
    assert code == 0 and report["settings"]["seed"] == 7
    assert sorted(p.name for p in out.glob("*.glb")) == [Path(i["mesh"]).name for i in report["images"]] \
        == ["000003_0.glb"]  # the earlier run's other.glb went with its report


def test_one_generate_per_folder_and_a_dead_writers_lock_is_taken_over(tmp_path):
    (tmp_path / ".generate.lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(OutputError, match=f"another generate \\(pid {os.getppid()}\\)"):
        with output_lock(tmp_path, "generate"):
            pass
    (tmp_path / ".generate.lock").write_text("999999")  # no such process any more
    with output_lock(tmp_path, "generate"):
        assert (tmp_path / ".generate.lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".generate.lock").exists()


def test_toyshapes_rerun_with_other_settings_is_refused_and_leaves_the_folder_alone(tmp_path, capsys):
    argv = ["data", "toyshapes", "--n", "2", "--out", tmp_path / "ds", "--views", "0", "--points", "128", "--occ",
            "128", "--workers", "1"]
    assert run(capsys, *argv)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    code, _, err = run(capsys, *argv, "--seed", "1")
    assert code == 2 and {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    one_error(err, "other settings", "seed 0, now 1")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "x.npz").write_bytes(b"PK")
    code, _, err = run(capsys, *argv[:5], tmp_path / "loose", *argv[6:])
    assert code == 2
    one_error(err, "no index.json")


def test_import_into_a_file_names_the_output_not_the_mesh(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "data", "import", GLB, "--out", tmp_path / "afile", "--views", "0")
    assert code == 2
    line = one_error(err, str(tmp_path / "afile"), "not a folder")
    assert "toy_lamp" not in line


def test_train_refuses_a_folder_with_a_run_unless_resume_or_overwrite(tmp_path, capsys):
    argv = ["train", "ae", "--preset", "lite", "--out", tmp_path / "run", "--steps", "2", "--n-train", "2",
            "--batch-size", "2"]
    assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_error(err, "holds a training run already", "--resume", "--overwrite")
    code, _, _ = run(capsys, *argv, "--overwrite")
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert code == 0 and steps == sorted(set(steps)) and steps[-1] == 2


def test_an_unfinished_data_set_is_refused_by_training(tmp_path):
    from compress3d_lite.data.toyshapes import write_toyshapes

    write_toyshapes(1, tmp_path, SPEC, workers=1, progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(Exception, match="unfinished data set"):
        read_index(tmp_path)


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_recover_puts_the_old_checkpoint_back_and_removes_temporary_folders(tmp_path):
    run = tmp_path / "run"
    checkpoint.write_checkpoint(run / "checkpoint", {"w": torch.ones(2)}, {"kind": "k", "step": 3})
    os.replace(run / "checkpoint", run / ".checkpoint.old")  # the moment between the two renames
    (run / ".checkpoint.ab12cd").mkdir()  # a write that never finished
    assert checkpoint.read_config(run / "checkpoint")["step"] == 3  # readers repair first
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_checkpoint_files_are_readable_by_others_and_flushed(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    path = checkpoint.write_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, {"kind": "k"},
                                       extra_weights={"ema.safetensors": {"w": torch.zeros(2)}})
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "ema.safetensors", "config.json"):
        assert (path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert len(synced) >= 4  # three files and their folder


def test_a_config_with_huge_sizes_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    from compress3d_lite.inference import vae as vae_loading

    folder = tmp_path / "vae"
    shutil.copytree(shipped_checkpoint("vae_course"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["head_hidden"] = 10 ** 6
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(vae_loading.TriplaneVAE, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(ConfigError, match=r"model\.head_hidden = 1000000 is outside the bounds .*1\.\.512"):
        vae_loading.load_vae(folder)


def test_a_config_that_does_not_fit_its_weights_names_the_differences_before_allocating(tmp_path, monkeypatch):
    from compress3d_lite.inference.vae import load_vae

    folder = tmp_path / "vae"
    shutil.copytree(shipped_checkpoint("vae_course"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["head_hidden"] //= 2  # within bounds, but not these weights
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(checkpoint, "read_weights", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(checkpoint.CheckpointError, match=r"heads\.trunk\.0\.weight: config says \[32, 96\], "
                                                         r"weights have \[64, 96\]"):
        load_vae(folder)


def test_size_bounds_come_from_the_preset_family():
    bounds = preset_bounds([{"width": 8, "levels": [1, 2]}, {"width": 32, "levels": [1, 2, 3]}])
    assert bounds["width"] == (1, 128, 0) and bounds["levels"] == (1, 12, 3)
    check_sizes({"width": 128, "levels": [4, 4, 4, 4]}, bounds, "c.json")
    with pytest.raises(ConfigError, match="width = 129"):
        check_sizes({"width": 129}, bounds, "c.json")
    with pytest.raises(ConfigError, match="5 entries"):
        check_sizes({"levels": [1, 1, 1, 1, 1]}, bounds, "c.json")


# ----------------------------------------------------------------------------------------------
# import normalisation


def _lamp_with(tmp_path, extra_vertex, in_a_face: bool) -> Path:
    m = trimesh.load(GLB, force="mesh")
    v = np.vstack([m.vertices, [extra_vertex]])
    f = np.vstack([m.faces, [[0, 1, len(v) - 1]]]) if in_a_face else m.faces
    path = tmp_path / f"lamp_{'face' if in_a_face else 'stray'}.ply"
    trimesh.Trimesh(v, f, process=False).export(path)
    return path


@pytest.mark.parametrize("in_a_face", [True, False])
def test_a_far_outlier_vertex_is_warned_about_and_the_object_still_usable(tmp_path, in_a_face):
    path = _lamp_with(tmp_path, [1e4, 1e4, 1e4], in_a_face)
    with pytest.warns(MeshImportWarning, match="far from the rest" if in_a_face else "no face uses"):
        example = import_mesh(path, SPEC)
    clean = import_mesh(GLB, SPEC)
    assert example["occ_labels"].mean() > 0.5 * clean["occ_labels"].mean() > 0  # not an empty dot
    span = example["points"].max(0) - example["points"].min(0)
    assert span.max() > 1.5  # the lamp fills the data frame again


def test_a_mesh_without_outliers_imports_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshImportWarning)
        import_mesh(GLB, SPEC)


def test_data_view_of_a_non_zip_file_says_so(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"junk")
    with pytest.raises(Exception, match="no zip header"):
        load_object(tmp_path / "x.npz")
