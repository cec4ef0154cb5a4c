"""Image -> coloured mesh: the four stages wired together (docs/paper.md §1, §7).

    pipe = Compress3DPipeline.from_pretrained("course")          # the shipped checkpoints
    result = pipe("data_samples/toyshapes/images/000003_0.png", seed=0)
    result.mesh.export("lamp.glb"); print(result.timings)

One call:
    1. image -> e_i                      image tower (open_clip)
    2. e_i -> e_s                        diffusion prior (DDIM), skipped with ``use_prior=False``
    3. noise -> latent triplane          triplane UNet, DDIM, dual classifier-free guidance
                                         (``guidance_image``, ``guidance_shape``; paper best 5.0, 1.0;
                                         the default is the UNet checkpoint's measured best, e.g.
                                         2.0, 2.0 for the shipped course model; docs/stages.md "Stage 4")
    4. latent -> mesh                    un-normalise, VAE decoder, marching cubes, vertex colours

A pipeline folder holds ``vae/``, ``embed/`` (``image_tower/``, ``shape_tower/``), ``prior/`` and
``unet/``; the preset name ``course`` means the shipped checkpoints in ``data_samples/checkpoints``
(found after any install by ``compress3d_lite.samples``).
Loading checks that the pieces belong together (the UNet records the VAE and towers it was
trained with; the prior records its image tower).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import pick_device
from .data.images import ImageError, load_image
from .data.io import atomic_write_bytes
from .diffusion import sample
from .mesh import MeshingError, extract_mesh, save_mesh
from .models.image_tower import fingerprint
from .samples import shipped_checkpoint
from .stages.embed import check_tower, embed_images, load_towers
from .stages.prior import load_prior
from .stages.unet import load_unet
from .stages.vae import load_vae

PRESETS = {"course": {"vae": "vae_course", "embed": "embed_course", "prior": "prior_course", "unet": "unet_course"}}
PAPER_GUIDANCE = {"image": 5.0, "shape": 1.0}  # docs/paper.md §5, §8.6: the best pair at full scale


def pipeline_parts(source="course") -> dict:
    """{"vae", "embed", "prior", "unet"} -> checkpoint folder, for a preset name or a pipeline folder."""
    if isinstance(source, str) and source in PRESETS:
        return {k: shipped_checkpoint(v) for k, v in PRESETS[source].items()}
    root = Path(source)
    if not root.is_dir():
        raise CheckpointError(f"{root}: neither a preset ({', '.join(PRESETS)}) nor a pipeline folder")
    return {k: root / k for k in ("vae", "embed", "prior", "unet")}


@dataclass
class GenerationResult:
    mesh: object  # trimesh.Trimesh with vertex colours, in the [-1, 1] data frame
    latent: torch.Tensor  # (1, 3, c', r', r') in the VAE's latent units (un-normalised)
    image_embedding: torch.Tensor  # (1, D)
    shape_embedding: torch.Tensor | None  # (1, D); None with use_prior=False
    timings: dict = field(default_factory=dict)  # seconds per stage


class Compress3DPipeline:
    def __init__(self, vae, vae_cfg, tower, shape_tower, prior, unet, unet_cfg, device="cpu"):
        self.vae, self.vae_cfg, self.tower, self.shape_tower = vae, vae_cfg, tower, shape_tower
        self.prior, self.unet, self.unet_cfg, self.device = prior, unet, unet_cfg, device
        self.shape_points = 512
        # the guidance scales used when none are given: the UNet checkpoint's measured best, else the paper's
        self.default_guidance = {**PAPER_GUIDANCE, **unet_cfg.get("guidance", {})}
        stats = unet_cfg["latent_stats"]
        self.latent_mean = torch.tensor(stats["mean"], device=device).view(1, 1, -1, 1, 1)
        self.latent_std = torch.tensor(stats["std"], device=device).view(1, 1, -1, 1, 1)

    @classmethod
    def from_pretrained(cls, source="course", device: str | None = None) -> "Compress3DPipeline":
        """``source``: a preset name (``course``) or a folder with vae/, embed/, prior/, unet/."""
        device = device or pick_device()
        parts = pipeline_parts(source)
        unet, ucfg = load_unet(parts["unet"], device)
        vae, vcfg = load_vae(parts["vae"], device)
        if ucfg.get("vae", {}).get("weights") != fingerprint(vae.state_dict()):
            raise CheckpointError(f"{parts['unet']}: was trained on another VAE's latents than {parts['vae']}")
        tower, shape_tower, scfg = load_towers(parts["embed"], device=device)
        check_tower(parts["unet"], ucfg.get("image_tower"), tower)
        if ucfg.get("shape_tower") != scfg.get("fingerprint"):
            raise CheckpointError(f"{parts['unet']}: was trained with another shape tower than {parts['embed']}")
        prior, _ = load_prior(parts["prior"], image_tower=tower, device=device)
        pipe = cls(vae, vcfg, tower, shape_tower, prior, unet, ucfg, device)
        pipe.shape_points = int(scfg["train"]["n_points"])  # what the shape tower was trained on
        return pipe

    @torch.no_grad()
    def embed_image(self, image) -> torch.Tensor:
        return embed_images(self.tower, [image])  # (1, D)

    @torch.no_grad()
    def sample_latent(self, e_i, e_s, steps: int = 25, guidance_image: float | None = None,
                      guidance_shape: float | None = None, seed: int = 0, use_prior: bool = True,
                      callback=None) -> torch.Tensor:
        """Normalised latent (B, 3, c', r', r') for the embeddings, by DDIM with dual guidance
        (scales default to ``self.default_guidance``)."""
        guidance_image = self.default_guidance["image"] if guidance_image is None else guidance_image
        guidance_shape = self.default_guidance["shape"] if guidance_shape is None else guidance_shape
        cfg = self.unet.cfg
        shape = (e_i.shape[0], 3, cfg.latent_channels, cfg.latent_res, cfg.latent_res)
        e_s = e_s if e_s is not None else torch.zeros_like(e_i)

        def denoise(x, t):
            return self.unet.guided(x, t, e_i, e_s, guidance_image, guidance_shape, use_shape=use_prior)

        return sample(denoise, shape, self.unet.diffusion_cfg, steps, "ddim", torch.Generator().manual_seed(seed),
                      self.device, callback=callback)

    @torch.no_grad()
    def decode(self, z, res: int = 128):
        """Normalised latent (1, ...) -> (mesh, un-normalised latent)."""
        latent = z * self.latent_std + self.latent_mean
        planes = self.vae.decode(latent)
        return extract_mesh(self.vae, planes, res=res), latent

    @torch.no_grad()
    def __call__(self, image, steps: int = 25, guidance_image: float | None = None, guidance_shape: float | None = None,
                 seed: int = 0, use_prior: bool = True, prior_steps: int | None = None, res: int = 128,
                 callback=None) -> GenerationResult:
        timings, t0 = {}, time.perf_counter()
        e_i = self.embed_image(image)
        timings["image_embedding"] = time.perf_counter() - t0
        e_s = None
        if use_prior:
            t = time.perf_counter()
            e_s = self.prior.sample(e_i, steps=prior_steps, generator=torch.Generator().manual_seed(seed))
            timings["prior"] = time.perf_counter() - t
        t = time.perf_counter()
        z = self.sample_latent(e_i, e_s, steps, guidance_image, guidance_shape, seed, use_prior, callback)
        timings["diffusion"] = time.perf_counter() - t
        t = time.perf_counter()
        mesh, latent = self.decode(z, res)
        timings["decode_mesh"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return GenerationResult(mesh, latent, e_i, e_s, timings)

    def generate_files(self, images, out_dir, format: str = "glb", steps: int = 25, seed: int = 0,
                       use_prior: bool = True, res: int = 128, guidance_image: float | None = None,
                       guidance_shape: float | None = None, about: dict | None = None, log=print) -> dict:
        """One coloured mesh per image file into ``out_dir`` (``<image stem>.<format>``, a number
        added when two stems clash) and ``out_dir/generate.json``: the settings -- the guidance
        scales actually used, with where they came from -- and per image its mesh, sizes and timings,
        or its error. A bad image (``ImageError``) or an empty field (``MeshingError``) is reported
        with ``log(..., file=sys.stderr)`` and skipped; the others are still done. Nothing is
        written when every image failed. ``about``: entries put first in the report (e.g. the
        pipeline's name). Returns the report; ``report["n_failed"]`` counts failures."""
        out = Path(out_dir)
        gi = self.default_guidance["image"] if guidance_image is None else guidance_image
        gs = self.default_guidance["shape"] if guidance_shape is None else guidance_shape
        source = {"image": "command line" if guidance_image is not None else "checkpoint default",
                  "shape": "command line" if guidance_shape is not None else "checkpoint default"}
        report = {**(about or {}), "settings": {"steps": steps, "seed": seed, "use_prior": use_prior, "res": res,
                               "guidance_image": gi, "guidance_shape": gs, "guidance_source": source},
                  "images": [], "n_failed": 0}
        used = set()
        for path in images:
            try:
                result = self(load_image(path), steps=steps, guidance_image=gi, guidance_shape=gs, seed=seed,
                              use_prior=use_prior, res=res)
            except (ImageError, MeshingError) as e:
                log(f"error: {e if str(path) in str(e) else f'{path}: {e}'}", file=sys.stderr)
                report["images"].append({"image": str(path), "error": str(e)})
                report["n_failed"] += 1
                continue
            stem = Path(path).stem
            name, k = stem, 1
            while name in used:
                name, k = f"{stem}_{k}", k + 1
            used.add(name)
            out.mkdir(parents=True, exist_ok=True)
            mesh_path = save_mesh(result.mesh, out / f"{name}.{format}")
            report["images"].append({"image": str(path), "mesh": str(mesh_path), "n_vertices": len(result.mesh.vertices),
                                     "n_faces": len(result.mesh.faces), "timings": result.timings})
            log(f"{path} -> {mesh_path} ({len(result.mesh.faces)} faces, {result.timings['total']:.2f} s: "
                + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "total") + ")")
        if report["n_failed"] < len(report["images"]):
            atomic_write_bytes(out / "generate.json", (json.dumps(report, indent=1) + "\n").encode())
            log(f"wrote {out / 'generate.json'}")
        return report
