"""The pipeline speaks the diffusers conventions: generators, batches, .to(), an output dataclass,
save_pretrained / from_pretrained of the whole pipeline, and Hub repo ids read offline."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from compress3d_lite.checkpoint import CheckpointError
from compress3d_lite.pipeline import Compress3DPipeline, Compress3DPipelineOutput
from compress3d_lite.samples import sample_path

IMAGES = [str(sample_path("toyshapes", "images", f"{i:06d}_0.png")) for i in (3, 0, 5)]  # lamp, mug, rocket
FAST = {"num_inference_steps": 3, "mesh_resolution": 24}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_a_generator_decides_the_result(pipe):
    a = pipe(IMAGES[0], generator=_gen(7), **FAST)
    b = pipe(IMAGES[0], generator=_gen(7), **FAST)
    c = pipe(IMAGES[0], generator=_gen(8), **FAST)
    assert isinstance(a, Compress3DPipelineOutput)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.shape_embeds, b.shape_embeds)
    assert not torch.allclose(a.latents, c.latents)
    assert torch.equal(pipe(IMAGES[0], seed=7, **FAST).latents, a.latents)  # seed=s is short for a generator
    with pytest.raises(ValueError, match="generator or seed"):
        pipe(IMAGES[0], generator=_gen(1), seed=1, **FAST)


def test_a_batch_equals_the_images_one_by_one(pipe):
    batch = pipe(IMAGES, generator=[_gen(10 + i) for i in range(3)], **FAST)
    assert batch.latents.shape[0] == 3 and len(batch.meshes) == 3 and batch.errors == [None] * 3
    for i, image in enumerate(IMAGES):
        one = pipe(image, generator=_gen(10 + i), **FAST)
        assert torch.allclose(batch.latents[i:i + 1], one.latents, atol=1e-4, rtol=1e-4), i
        assert torch.allclose(batch.shape_embeds[i:i + 1], one.shape_embeds, atol=1e-5)
        assert abs(len(batch.meshes[i].faces) - len(one.mesh.faces)) <= 0.01 * len(one.mesh.faces)
    with pytest.raises(ValueError, match="2 generators for 3 images"):
        pipe(IMAGES, generator=[_gen(0), _gen(1)], **FAST)


def test_to_moves_every_part_and_returns_the_pipeline(pipe):
    assert pipe.to("cpu") is pipe and pipe.device == "cpu"
    devices = {p.device.type for m in (pipe.vae, pipe.tower, pipe.shape_tower, pipe.prior, pipe.unet)
               for p in m.parameters()}
    assert devices == {"cpu"}


def test_save_pretrained_and_from_pretrained_round_trip(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert {p.name for p in folder.iterdir()} >= {"vae", "embed", "prior", "unet", "pipeline.json"}
    again = Compress3DPipeline.from_pretrained(folder, device="cpu")  # the fingerprint checks pass
    again.set_progress_bar_config(disable=True)
    assert again.default_guidance == pipe.default_guidance
    a, b = pipe(IMAGES[1], seed=2, **FAST), again(IMAGES[1], seed=2, **FAST)
    assert torch.allclose(a.latents, b.latents, atol=1e-5)
    shutil.rmtree(folder / "prior")
    with pytest.raises(CheckpointError, match="not a pipeline folder"):
        Compress3DPipeline.from_pretrained(folder)


def _hub_cache(root, repo_id, files_from) -> None:
    """A Hugging Face cache folder holding one snapshot of ``repo_id`` with the files of a folder,
    laid out as huggingface_hub writes it (models--org--name/{refs/main, snapshots/<commit>/...})."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(files_from, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_repo_id_loads_from_the_local_cache_offline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.vae.save_pretrained(tmp_path / "vae")
    cache = tmp_path / "hf_cache"
    _hub_cache(cache, "my-course/compress3d-course", tmp_path / "pipe")
    _hub_cache(cache, "my-course/compress3d-vae", tmp_path / "vae")
    code = ("import torch; from compress3d_lite.pipeline import Compress3DPipeline; "
            "from compress3d_lite.models.autoencoder import TriplaneVAE; "
            "vae = TriplaneVAE.from_pretrained('my-course/compress3d-vae'); "
            "p = Compress3DPipeline.from_pretrained('my-course/compress3d-course', device='cpu'); "
            "p.set_progress_bar_config(disable=True); "
            "out = p(sys.argv[1], seed=2, num_inference_steps=3, mesh_resolution=24); "
            "print(vae.checkpoint_info['preset'], len(out.mesh.faces) > 0, float(out.latents.abs().sum()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-c", "import sys; " + code, IMAGES[1]], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    preset, has_faces, total = r.stdout.split()
    here = float(pipe(IMAGES[1], seed=2, **FAST).latents.abs().sum())
    assert preset == "course" and has_faces == "True" and abs(float(total) - here) < 1e-3 * here
    r = subprocess.run([sys.executable, "-c", "from compress3d_lite.pipeline import Compress3DPipeline; "
                        "Compress3DPipeline.from_pretrained('my-course/not-downloaded')"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no snapshot of the Hub repo 'my-course/not-downloaded'" in r.stderr


def test_a_failed_mesh_is_reported_not_raised_for_a_batch(pipe, monkeypatch):
    from compress3d_lite import pipeline as module
    from compress3d_lite.mesh import MeshingError

    real = module.extract_mesh
    calls = []

    def every_second_fails(vae, planes, res):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise MeshingError("the field has no surface")
        return real(vae, planes, res=res)

    monkeypatch.setattr(module, "extract_mesh", every_second_fails)
    out = pipe(IMAGES[:2], seed=0, **FAST)
    assert out.meshes[0] is not None and out.meshes[1] is None and out.errors[1] == "the field has no surface"
    calls.clear()
    calls.append(1)  # the next call is the second: it fails
    with pytest.raises(MeshingError, match="no surface"):
        pipe(IMAGES[0], seed=0, **FAST).mesh
    assert np.isfinite(out.latents.numpy()).all()


def test_push_to_hub_uploads_what_save_pretrained_writes(pipe, monkeypatch):
    import compress3d_lite.pipeline

    seen = {}

    class FakeApi:  # records the calls; the real one needs a network and a token
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            seen["created"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            seen["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*.json"))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(compress3d_lite.pipeline, "HfApi", FakeApi)
    url = pipe.push_to_hub("my-course/c3d", private=True, token="t")
    assert url == "https://huggingface.co/my-course/c3d/commit/abc"
    assert seen["created"] == ("my-course/c3d", True, True) and seen["token"] == "t"
    assert {"pipeline.json", "vae/config.json", "unet/config.json", "prior/config.json",
            "embed/shape_tower/config.json", "embed/image_tower/config.json"} <= set(seen["files"])


def test_a_pipeline_from_four_run_folders(pipe, tmp_path):
    from compress3d_lite.samples import shipped_checkpoint

    parts = {k: shipped_checkpoint(f"{k}_course") for k in ("vae", "embed", "prior", "unet")}
    again = Compress3DPipeline.from_pretrained(parts, device="cpu")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(again(IMAGES[2], seed=1, **FAST).latents, pipe(IMAGES[2], seed=1, **FAST).latents)
    with pytest.raises(CheckpointError, match="needs exactly vae, embed, prior, unet"):
        Compress3DPipeline.from_pretrained({"vae": parts["vae"]})
    wrong = {**parts, "vae": shipped_checkpoint("vae_course_noattn")}  # the UNet was trained on the other VAE
    with pytest.raises(CheckpointError, match="another VAE"):
        Compress3DPipeline.from_pretrained(wrong)


def test_warm_up_changes_nothing(pipe):
    before = pipe(IMAGES[0], seed=4, **FAST).latents
    assert pipe.warm_up() > 0
    assert torch.equal(pipe(IMAGES[0], seed=4, **FAST).latents, before)
