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

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PRESETS = {"course": {"vae": "vae_course", "embed": "embed_course", "prior": "prior_course", "unet": "unet_course"}}
PAPER_GUIDANCE = {"image": 5.0, "shape": 1.0}  # docs/paper.md §5, §8.6: the best pair at full scale


def pipeline_parts(source="course") -> dict:
    """{"vae", "embed", "prior", "unet"} -> checkpoint folder, for a preset name or a pipeline folder."""
    from .checkpoint import CheckpointError
    from .samples import shipped_checkpoint

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


def load_unet(path, device="cpu"):
    """(TriplaneUNet, config) from a checkpoint folder."""
    from .checkpoint import CheckpointError, _load_module, read_config
    from .config import DiffusionConfig, UNetConfig
    from .models.triplane_unet import TriplaneUNet

    cfg = read_config(path)
    if cfg.get("kind") != "triplane_unet":
        raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a triplane UNet")
    model = _load_module(path, cfg, lambda d: TriplaneUNet(UNetConfig.from_dict(d["model"])), "UNet")
    model.diffusion_cfg = DiffusionConfig.from_dict(cfg["diffusion"])
    return model.to(device).eval(), cfg


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
        from .checkpoint import CheckpointError, check_tower, load_prior, load_towers, load_vae
        from .config import pick_device
        from .models.image_tower import fingerprint

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
        from .embed import embed_images

        return embed_images(self.tower, [image])  # (1, D)

    @torch.no_grad()
    def sample_latent(self, e_i, e_s, steps: int = 25, guidance_image: float | None = None,
                      guidance_shape: float | None = None, seed: int = 0, use_prior: bool = True,
                      callback=None) -> torch.Tensor:
        """Normalised latent (B, 3, c', r', r') for the embeddings, by DDIM with dual guidance
        (scales default to ``self.default_guidance``)."""
        from .diffusion import sample

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
        from .mesh import extract_mesh

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
