"""Image(s) -> coloured mesh(es): the four stages wired together, driven like a diffusers pipeline
(docs/paper.md §1, §7).

    pipe = Compress3DPipeline.from_pretrained("course")        # shipped checkpoints; or a folder, or "org/name"
    out = pipe("lamp.png", num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    out.mesh.export("lamp.glb"); print(out.timings)
    out = pipe(["a.png", "b.png"], seed=0)                      # one batch through the prior and the UNet
    pipe.to("cuda"); pipe.save_pretrained("my_pipeline")       # vae/ embed/ prior/ unet/ + pipeline.json
    pipe.push_to_hub("my-course/compress3d-toy")               # then from_pretrained("my-course/compress3d-toy")

One call, for B images at once:
    1. images -> e_i (B, D)              image tower (open_clip)
    2. e_i -> e_s (B, D)                 diffusion prior (DDIM), skipped with ``use_prior=False``
    3. noise -> latent triplanes         triplane UNet, dual classifier-free guidance (3B passes per
                                         step in one call); sampler, steps and the two scales default
                                         to the UNet checkpoint's, chosen on the val split
    4. latents -> meshes                 un-normalise, VAE decoder, marching cubes, vertex colours

Randomness: ``generator`` is a torch.Generator (drawn from for every image in turn) or a list of
them, one per image -- then a batch gives the same results as the images one by one. Each
image's generator gives first its prior noise, then its UNet noise. ``seed=s`` is short for one
generator per image seeded s, s + 1, ...

A pipeline folder holds ``vae/``, ``embed/`` (``image_tower/``, ``shape_tower/``), ``prior/``,
``unet/`` and ``pipeline.json``; the preset name ``course`` means the shipped checkpoints (found
after any install by ``compress3d_lite.samples``). Loading checks that the pieces belong together
(the UNet records the VAE and towers it was trained with; the prior records its image tower).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi

from . import __version__
from .checkpoint import CheckpointError, resolve_folder
from .config import PAPER_GUIDANCE, check_count, pick_device
from .data.images import load_image
from .data.io import atomic_write_bytes
from .diffusion import make_scheduler, sampler_fits
from .inference.embed import check_tower, embed_images, load_towers
from .inference.prior import load_prior
from .inference.unet import START_FOLDER, check_guidance, check_start, load_start, load_unet
from .inference.vae import latent_stats, load_vae
from .mesh import MeshingError, check_mesh_resolution, extract_mesh
from .models.image_tower import fingerprint
from .samples import shipped_checkpoint

_COURSE = {"vae": "vae_course", "embed": "embed_course", "prior": "prior_course"}
PRESETS = {"course": {**_COURSE, "unet": "unet_course"},  # rectified flow (docs/stages.md, "Stage 4")
           "course_ddpm": {**_COURSE, "unet": "unet_course_ddpm"},  # the DDPM course UNet before it
           "course_v1": {**_COURSE, "unet": "unet_course_v1"}}  # the first course UNet
PIPELINE_FORMAT = "compress3d_lite/pipeline-v1"
PARTS = ("vae", "embed", "prior", "unet")


def pipeline_parts(source="course") -> dict:
    """{"vae", "embed", "prior", "unet"} -> checkpoint folder, for a preset name, a pipeline folder
    or a Hub repo id of one (read from the local Hugging Face cache when offline), or a dict of
    the four parts' folders (the release folders of four training runs)."""
    if isinstance(source, dict):
        if sorted(source) != sorted(PARTS):
            raise CheckpointError(f"a pipeline from parts needs exactly {', '.join(PARTS)}; got {', '.join(source)}")
        return {k: resolve_folder(source[k]) for k in PARTS}
    if isinstance(source, str) and source in PRESETS:
        return {k: shipped_checkpoint(v) for k, v in PRESETS[source].items()}
    root = resolve_folder(source)
    if not root.is_dir():
        raise CheckpointError(f"{root}: neither a preset ({', '.join(PRESETS)}) nor a pipeline folder")
    missing = [k for k in PARTS if not (root / k).is_dir()]
    if missing:
        raise CheckpointError(f"{source}: not a pipeline folder (no {', '.join(k + '/' for k in missing)} inside)")
    return {k: root / k for k in PARTS}


@dataclass
class Compress3DPipelineOutput:
    """What one call returns, for B images (in the order given)."""

    meshes: list  # B trimesh.Trimesh with vertex colours in the [-1, 1] data frame; None where meshing failed
    latents: torch.Tensor  # (B, 3, c', r', r') in the VAE's latent units (un-normalised)
    image_embeds: torch.Tensor  # (B, D)
    shape_embeds: torch.Tensor | None  # (B, D); None with use_prior=False
    timings: dict = field(default_factory=dict)  # seconds per stage, for the whole batch
    errors: list = field(default_factory=list)  # B messages, None where the mesh was made

    @property
    def mesh(self):
        """The mesh of the first (or only) image; a MeshingError if its field had no surface."""
        if self.meshes[0] is None:
            raise MeshingError(self.errors[0])
        return self.meshes[0]


def _generators(generator, seed, n: int) -> list:
    """One torch.Generator per image (or the same one n times): see the module docstring."""
    if generator is not None and seed is not None:
        raise ValueError("give generator or seed, not both")
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} images")
        return list(generator)
    if generator is not None:
        return [generator] * n
    seed = 0 if seed is None else int(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


class Compress3DPipeline:
    def __init__(self, vae, tower, shape_tower, prior, unet, start=None):
        self.vae, self.tower, self.shape_tower, self.prior, self.unet = vae, tower, shape_tower, prior, unet
        self.start = start  # the UNet's StartEstimate (models/start_estimate.py), or None
        self.vae_cfg, self.unet_cfg = vae.checkpoint_info or {}, unet.checkpoint_info or {}
        self.shape_points = int((shape_tower.checkpoint_info or {}).get("train", {}).get("n_points", 512))
        # the guidance scales used when none are given: the UNet checkpoint's measured best, else the paper's
        self.default_guidance = {**PAPER_GUIDANCE, **self.unet_cfg.get("guidance", {})}
        self.latent_mean, self.latent_std = latent_stats(self.unet_cfg)  # (1, 1, c', 1, 1) each
        self.device = "cpu"
        self._progress = {"disable": False}
        # the samplers are built once, here: the first call pays no scheduler construction
        self.sampler, self.steps = unet.diffusion_cfg.sampler, unet.diffusion_cfg.sample_steps  # the checkpoint's
        self._samplers = {"prior": make_scheduler(prior.diffusion_cfg, prior.diffusion_cfg.sampler),
                          f"unet {self.sampler}": make_scheduler(unet.diffusion_cfg, self.sampler)}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, source="course", device: str | None = None, use_ema: bool = True) -> "Compress3DPipeline":
        """``source``: a preset name (``course``), a pipeline folder (vae/, embed/, prior/, unet/), the
        Hub repo id of one, or {"vae", "embed", "prior", "unet"} -> folder (four training runs'
        release folders). ``use_ema``: the EMA weights of the prior and UNet when they have them."""
        parts = pipeline_parts(source)
        unet, ucfg = load_unet(parts["unet"], use_ema=use_ema)
        vae, _ = load_vae(parts["vae"])
        if ucfg.get("vae", {}).get("weights") != fingerprint(vae.state_dict()):
            raise CheckpointError(f"{parts['unet']}: was trained on another VAE's latents than {parts['vae']}")
        tower, shape_tower, scfg = load_towers(parts["embed"])
        check_tower(parts["unet"], ucfg.get("image_tower"), tower)
        if ucfg.get("shape_tower") != scfg.get("fingerprint"):
            raise CheckpointError(f"{parts['unet']}: was trained with another shape tower than {parts['embed']}")
        prior, _ = load_prior(parts["prior"], image_tower=tower, use_ema=use_ema)
        return cls(vae, tower, shape_tower, prior, unet, load_start(parts["unet"])).to(device or pick_device())

    def save_pretrained(self, save_directory) -> Path:
        """One subfolder per part (each the part's own ``save_pretrained``) and ``pipeline.json``;
        ``from_pretrained(save_directory)`` gives the same pipeline back. A pretrained image tower
        is recorded by name, not copied."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(root / "vae")
        if not self.tower.cfg.pretrained:
            self.tower.save_pretrained(root / "embed" / "image_tower")
        self.shape_tower.save_pretrained(root / "embed" / "shape_tower")
        self.prior.save_pretrained(root / "prior")
        self.unet.save_pretrained(root / "unet")
        if self.start is not None:
            self.start.save_pretrained(root / "unet" / START_FOLDER)
        info = {"format": PIPELINE_FORMAT, "library": "compress3d_lite", "version": __version__,
                "parts": {k: k for k in PARTS}, "default_guidance": self.default_guidance,
                "image_tower": self.tower.identity()}
        atomic_write_bytes(root / "pipeline.json", (json.dumps(info, indent=1) + "\n").encode())
        return root

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload Compress3D pipeline") -> str:
        """``save_pretrained`` into a temporary folder and upload it to the Hub repo ``repo_id``
        (created when missing); returns the commit URL. ``from_pretrained(repo_id)`` loads it."""
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))

    def to(self, device) -> "Compress3DPipeline":
        """Move every part (and the latent statistics) to ``device``; returns the pipeline."""
        device = str(torch.device(device))
        for part in filter(None, (self.vae, self.tower, self.shape_tower, self.prior, self.unet, self.start)):
            part.to(device)
        self.latent_mean, self.latent_std = self.latent_mean.to(device), self.latent_std.to(device)
        self.device = device
        return self

    def guidance(self, image_guidance_scale: float | None = None,
                 shape_guidance_scale: float | None = None) -> tuple:
        """(image, shape) guidance scales: the ones given, the checkpoint's defaults for None."""
        return (self.default_guidance["image"] if image_guidance_scale is None else image_guidance_scale,
                self.default_guidance["shape"] if shape_guidance_scale is None else shape_guidance_scale)

    @torch.no_grad()
    def warm_up(self) -> float:
        """One call on a blank image with one denoising step and a 16^3 mesh grid (its result is
        thrown away), so that the first real call runs as fast as the later ones: PyTorch's
        one-time kernel selection, allocator growth and lazy imports happen here. Returns the
        seconds it took."""
        t = time.perf_counter()
        blank = np.full((self.tower.cfg.image_size,) * 2 + (3,), 255, np.uint8)
        self(blank, num_inference_steps=1, prior_steps=1, mesh_resolution=16, seed=0)
        return time.perf_counter() - t

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options of the denoising progress bar, e.g. ``disable=True`` (as in diffusers)."""
        self._progress.update(kwargs)

    # ------------------------------------------------------------------ the stages
    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """(B, D) unit image embeddings of image files / arrays / PIL images."""
        return embed_images(self.tower, list(images))

    def _noise(self, generators, shape) -> torch.Tensor:
        """(B, *shape) initial noise, row i from generators[i] (on the CPU: reproducible on any device)."""
        return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])

    @torch.no_grad()
    def sample_shape_embeds(self, e_i, generators, steps: int | None = None) -> torch.Tensor:
        """(B, D) shape embeddings sampled by the prior from (B, D) image embeddings."""
        x_T = self._noise(generators, (self.prior.cfg.embed_dim,))
        return self.prior.sample(e_i, steps=steps, x_T=x_T, scheduler=self._samplers["prior"])

    @torch.no_grad()
    def sample_latents(self, e_i, e_s, num_inference_steps: int | None = None, image_guidance_scale: float | None = None,
                       shape_guidance_scale: float | None = None, generators=None, use_prior: bool = True,
                       callback=None, progress: bool = True, sampler: str | None = None,
                       x_start: torch.Tensor | None = None, strength: float = 1.0,
                       guidance_interval: tuple | None = None, guidance_rescale: float | None = None,
                       start: str = "noise") -> torch.Tensor:
        """Normalised latents (B, 3, c', r', r') for the embeddings, with dual guidance
        (``TriplaneUNet.sample``); scales, their noise interval and rescale, sampler and steps default
        to the checkpoint's. ``x_start`` (normalised latents) with ``strength`` < 1: start from them
        noised partway (``diffusion.sample``); ``start="regression"``: from the StartEstimate's."""
        if start == "regression":  # at the estimate's own strength unless one below 1 is given
            x_start, strength = self.start(e_i, e_s), (self.start.cfg.strength if strength >= 1.0 else strength)
        sampler = sampler or self.sampler
        if f"unet {sampler}" not in self._samplers:
            self._samplers[f"unet {sampler}"] = make_scheduler(self.unet.diffusion_cfg, sampler)
        cfg, d = self.unet.cfg, self.default_guidance
        generators = generators or _generators(None, 0, e_i.shape[0])
        x_T = self._noise(generators, (3, cfg.latent_channels, cfg.latent_res, cfg.latent_res))
        return self.unet.sample(
            e_i, e_s, self.guidance(image_guidance_scale, shape_guidance_scale), use_shape=use_prior,
            interval=tuple(d["interval"] if guidance_interval is None else guidance_interval),
            rescale=d["rescale"] if guidance_rescale is None else guidance_rescale,
            steps=self.steps if num_inference_steps is None else num_inference_steps, sampler=sampler,
            generator=generators[0], x_T=x_T, scheduler=self._samplers[f"unet {sampler}"], callback=callback,
            progress={**self._progress, "disable": self._progress.get("disable") or not progress},
            x_start=x_start, strength=strength)

    @torch.no_grad()
    def decode(self, z, mesh_resolution: int = 128) -> tuple:
        """Normalised latents (B, ...) -> (meshes, errors, un-normalised latents): one coloured mesh
        per latent, or None and the MeshingError's message where the field has no surface."""
        latents = z * self.latent_std + self.latent_mean
        planes = self.vae.decode(latents)  # (B, 3, C, r, r)
        meshes, errors = [], []
        for i in range(len(latents)):
            try:
                meshes.append(extract_mesh(self.vae, planes[i:i + 1], res=mesh_resolution))
                errors.append(None)
            except MeshingError as e:
                meshes.append(None)
                errors.append(str(e))
        return meshes, errors, latents

    @torch.no_grad()
    def __call__(self, images, num_inference_steps: int | None = None, image_guidance_scale: float | None = None,
                 shape_guidance_scale: float | None = None, generator=None, seed: int | None = None,
                 use_prior: bool = True, prior_steps: int | None = None, mesh_resolution: int = 128,
                 callback=None, sampler: str | None = None, start: str = "noise") -> Compress3DPipelineOutput:
        """Image(s) -> coloured mesh(es): one image or a list of them, processed as one batch.
        ``generator``: a torch.Generator or one per image; ``seed``: short for one generator per
        image seeded seed, seed + 1, ... (default 0). ``callback(i, t, x_t, x0_pred)`` sees every
        denoising step. Steps, sampler and guidance: the checkpoint's unless given. ``start``: "noise"
        (the paper) or "regression" (from the UNet's StartEstimate noised partway; docs/stages.md)."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("no images given")
        self.check_settings(num_inference_steps, mesh_resolution, image_guidance_scale, shape_guidance_scale,
                            prior_steps=prior_steps, sampler=sampler, start=start, use_prior=use_prior)
        gens = _generators(generator, seed, len(images))
        images = [load_image(img) for img in images]  # every image checked before any computation
        timings, t0 = {}, time.perf_counter()
        e_i = self.embed_images(images)  # (B, D)
        timings["image_embedding"] = time.perf_counter() - t0
        e_s = None
        if use_prior:
            t = time.perf_counter()
            e_s = self.sample_shape_embeds(e_i, gens, prior_steps)  # (B, D)
            timings["prior"] = time.perf_counter() - t
        t = time.perf_counter()
        z = self.sample_latents(e_i, e_s, num_inference_steps, image_guidance_scale, shape_guidance_scale, gens,
                                use_prior, callback, sampler=sampler, start=start)
        timings["diffusion"] = time.perf_counter() - t
        t = time.perf_counter()
        meshes, errors, latents = self.decode(z, mesh_resolution)
        timings["decode_mesh"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Compress3DPipelineOutput(meshes, latents, e_i, e_s, timings, errors)

    # ------------------------------------------------------------------ files in, files out
    def check_settings(self, num_inference_steps: int | None = None, mesh_resolution: int = 128,
                       image_guidance_scale=None, shape_guidance_scale=None, prior_steps: int | None = None,
                       sampler: str | None = None, start: str = "noise", use_prior: bool = True) -> None:
        """Refuse settings that cannot work (steps outside the schedule, a grid too large for memory, an
        unbounded guidance, an unknown sampler or start) before any computation, naming the argument."""
        check_start(start, self.start, use_prior)
        t_max = self.unet.diffusion_cfg.train_timesteps
        if num_inference_steps is not None:
            check_count("num_inference_steps", num_inference_steps, 1, t_max)
        if prior_steps is not None:
            check_count("prior_steps", prior_steps, 1, self.prior.diffusion_cfg.train_timesteps)
        check_mesh_resolution(mesh_resolution)
        check_guidance(image_guidance_scale, shape_guidance_scale)
        objective = self.unet.diffusion_cfg.objective
        if sampler is not None and not sampler_fits(objective, sampler):
            raise ValueError(f"sampler {sampler!r} does not sample this UNet's {objective} objective")
