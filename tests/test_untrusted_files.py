"""Every file the package reads from a user is checked where it comes in, and the error names the
file and the problem (docs/design.md §6.2): index.json, object .npz, checkpoint config.json and
weights, a pipeline's UNet record, and the Python API's arguments (named as in Python)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compress3d_lite.checkpoint import CheckpointError, read_config
from compress3d_lite.cli.generate import generate_files
from compress3d_lite.config import SampleSpec
from compress3d_lite.data.images import ImageError, load_image
from compress3d_lite.data.io import DataFormatError, load_object, read_index, save_object, validate_object
from compress3d_lite.data.toyshapes import write_toyshapes
from compress3d_lite.inference.unet import load_unet
from compress3d_lite.inference.vae import load_vae
from compress3d_lite.pipeline import Compress3DPipeline
from compress3d_lite.samples import sample_path, shipped_checkpoint

SPEC = SampleSpec(n_points=256, n_uniform=256, n_near=256, views=0)
VAE = shipped_checkpoint("vae_course")
UNET = shipped_checkpoint("unet_course")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "ds"
    write_toyshapes(2, folder, SPEC, seed=0, workers=1, progress=False)
    return folder


@pytest.fixture
def data(tmp_path, toy):
    shutil.copytree(toy, tmp_path / "ds")
    return tmp_path / "ds"


def edit_index(folder, change):
    doc = json.loads((folder / "index.json").read_text())
    new = change(doc)
    (folder / "index.json").write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())


# ----------------------------------------------------------------------------------------------
# index.json


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["objects"], "a JSON list, expected an object"),
    (lambda d: {**d, "objects": 5}, '"objects" is a int'),
    (lambda d: {**d, "objects": [{"n": 1}]}, 'entry 0 has no "file"'),
    (lambda d: {**d, "objects": [{"file": 7}]}, 'entry 0 has no "file"'),
    (lambda d: {**d, "objects": []}, "lists no objects"),
    (lambda d: {**d, "objects": [{"file": "/etc/passwd"}]}, "outside the data folder"),
    (lambda d: {**d, "objects": [{"file": "../other/x.npz"}]}, "outside the data folder"),
    (lambda d: {**d, "objects": [{"file": "gone.npz"}]}, "which does not exist"),
    (lambda d: b'{"format": "\xff"}', "not UTF-8"),
    (lambda d: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_a_hostile_index_is_refused_naming_it(data, change, needle):
    edit_index(data, change)
    with pytest.raises(DataFormatError, match=needle) as e:
        read_index(data)
    assert str(data / "index.json") in str(e.value)


def test_an_index_entry_naming_a_folder_and_a_data_path_that_is_a_file(data, tmp_path):
    (data / "sub.npz").mkdir()
    edit_index(data, lambda d: {**d, "objects": [{"file": "sub.npz"}]})
    with pytest.raises(DataFormatError, match="'sub.npz', not a file"):
        read_index(data)
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataFormatError, match="not a folder"):
        read_index(tmp_path / "f")
    with pytest.raises(DataFormatError, match="not a file"):
        load_object(data / "sub.npz")


# ----------------------------------------------------------------------------------------------
# object .npz


def _arrays(toy):
    with np.load(toy / "000000.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("change, needle", [
    (lambda a: a.update(points=a["points"][:0], colors=a["colors"][:0]), "0 surface points"),
    (lambda a: a["colors"].__setitem__(0, np.nan), "'colors' holds 3 non-finite values"),
    (lambda a: a.update(colors=a["colors"] * 255), "rgb must be in \\[0, 1\\]"),
    (lambda a: a["points"].__setitem__(0, 1e4), "'points' reach 1e\\+04"),
    (lambda a: a.update(transform=np.full((4, 4), np.inf)), "'transform' must be a finite"),
    (lambda a: a.update(images=np.zeros((1, 8, 8, 4), np.float32), depths=np.zeros((1, 8, 8), np.float32),
                        cam2world=np.eye(4)[None], intrinsics=np.eye(3)[None]), "'images' should be uint8"),
    (lambda a: a.update(images=np.zeros((2, 8, 8, 4), np.uint8), depths=np.zeros((2, 8, 8), np.float32),
                        cam2world=np.eye(4)[None], intrinsics=np.eye(3)[None].repeat(2, 0)), "'cam2world' should be"),
])
def test_a_bad_object_is_refused_naming_the_file_and_the_array(toy, tmp_path, change, needle):
    arrays = _arrays(toy)
    validate_object(arrays, "ok")
    change(arrays)
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(DataFormatError, match=needle) as e:
        load_object(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataFormatError, match=needle):
        save_object(tmp_path / "not_written.npz", arrays)
    assert not (tmp_path / "not_written.npz").exists()


# ----------------------------------------------------------------------------------------------
# checkpoints


def _weights(tmp_path, change):
    shutil.copytree(VAE, tmp_path / "vae")
    w = load_file(str(tmp_path / "vae" / "model.safetensors"))
    save_file({k: change(v) for k, v in w.items()}, str(tmp_path / "vae" / "model.safetensors"))
    return tmp_path / "vae"


@pytest.mark.parametrize("change, needle", [
    (lambda v: v * float("nan"), "hold NaN or infinite values"),
    (lambda v: v * 0 + float("inf"), "hold NaN or infinite values"),
    (lambda v: v.long(), "must be floating point, but .* is I64"),
    (lambda v: v > 0, "must be floating point, but .* is BOOL"),
])
def test_weights_that_are_not_finite_floats_are_refused(tmp_path, change, needle):
    with pytest.raises(CheckpointError, match=needle):
        load_vae(_weights(tmp_path, change))


@pytest.mark.parametrize("text, needle", [
    ("", "corrupt config"),
    ("[1, 2]", "a JSON list, expected an object"),
    (None, '"model" is a str'),
])
def test_a_config_that_is_not_an_object_is_refused(tmp_path, text, needle):
    shutil.copytree(VAE, tmp_path / "vae")
    if text is None:
        text = json.dumps({**json.loads((VAE / "config.json").read_text()), "model": "big"})
    (tmp_path / "vae" / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=needle):
        read_config(tmp_path / "vae")


def test_an_empty_weights_file_is_refused(tmp_path):
    shutil.copytree(VAE, tmp_path / "vae")
    (tmp_path / "vae" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt weights"):
        load_vae(tmp_path / "vae")


def _unet(tmp_path, path, value):
    shutil.copytree(UNET, tmp_path / "unet")
    cfg = json.loads((UNET / "config.json").read_text())
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    (tmp_path / "unet" / "config.json").write_text(json.dumps(cfg))
    return tmp_path / "unet"


@pytest.mark.parametrize("path, value, needle", [
    (["latent_stats"], None, 'no "latent_stats"'),
    (["latent_stats", "mean"], [0.0, 0.0], "latent_stats.mean must be 8 finite numbers"),
    (["latent_stats", "std"], [0.0] * 8, "latent_stats.std must be positive"),
    (["guidance", "image"], "strong", "guidance.image must be a number"),
    (["guidance", "shape"], 1e308, "guidance.shape must be a number in -100..100"),
    (["diffusion", "sampler"], "heun", "diffusion.sampler must be one of ddim, dpm, ddpm, euler"),
    (["diffusion", "sample_steps"], 0, "diffusion.sample_steps must be in 1..1000"),
    (["model", "heads"], 3, "bad TriplaneUNet config"),
])
def test_a_bad_unet_record_is_refused_when_loaded_naming_the_field(tmp_path, path, value, needle):
    with pytest.raises(CheckpointError, match=needle) as e:
        load_unet(_unet(tmp_path, path, value))
    assert "--steps" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# the Python API speaks Python


@pytest.mark.parametrize("array, needle", [
    (np.full((8, 8, 3), 200.0), "float image spans 200..200; float images must be in \\[0, 1\\]"),
    (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
    (np.full((8, 8, 3), 300, np.int64), "int64 image spans 300..300"),
    (np.zeros((0, 0, 3), np.uint8), "an empty image array"),
    (np.zeros((8, 8, 3), "U1"), "dtype str"),
])
def test_image_arrays_outside_their_range_are_refused(array, needle):
    with pytest.raises(ImageError, match=needle):
        load_image(array)


def test_image_arrays_in_range_are_read():
    for a in (np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 200, np.int64), np.full((8, 8, 3), 40000, np.uint16)):
        assert load_image(a).size == (8, 8)


@pytest.fixture
def no_diffusion(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "sample_latents", lambda *a, **k: pytest.fail("computed before the check"))
    monkeypatch.setattr(pipe, "embed_images", lambda *a, **k: pytest.fail("computed before the check"))
    return pipe


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps must be in 1..1000, got 0"),
    ({"num_inference_steps": 2.5}, TypeError, "num_inference_steps must be an int"),
    ({"mesh_resolution": 4}, ValueError, "mesh_resolution must be in 8..1024"),
    ({"image_guidance_scale": "3"}, TypeError, "image_guidance_scale must be a number"),
    ({"shape_guidance_scale": 1e9}, ValueError, "shape_guidance_scale must be a finite number in -100..100"),
    ({"sampler": "ddim"}, ValueError, "sampler .ddim. does not sample this UNet.s rectified_flow objective"),
    ({"prior_steps": 0}, ValueError, "prior_steps must be in 1.."),
])
def test_pipeline_call_checks_its_arguments_first(no_diffusion, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        no_diffusion(np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_pipeline_call_checks_every_image_before_computing(no_diffusion):
    with pytest.raises(ImageError, match="float images must be in"):
        no_diffusion([np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 200.0)])


@pytest.mark.parametrize("kwargs, error, needle", [
    ({"format": "stl"}, ValueError, "format must be one of glb, ply, obj, got 'stl'"),
    ({"batch_size": 0}, ValueError, "batch_size must be in 1.., got 0"),
])
def test_generate_files_checks_format_and_batch_before_making_the_folder(no_diffusion, tmp_path, kwargs, error,
                                                                         needle):
    with pytest.raises(error, match=needle):
        generate_files(no_diffusion, [sample_path("toyshapes", "images", "000003_0.png")], tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def test_the_command_line_names_its_options_for_the_same_checks(tmp_path, capsys, pipe, monkeypatch):
    from compress3d_lite.cli import main

    monkeypatch.setattr(Compress3DPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    image = sample_path("toyshapes", "images", "000003_0.png")
    assert main(["generate", str(image), "-o", str(tmp_path / "o"), "--steps", "5000"]) == 2
    err = capsys.readouterr().err
    assert "--steps must be in 1..1000" in err and "num_inference_steps" not in err
    assert torch.is_tensor(pipe.latent_mean)  # the shared pipeline is untouched
