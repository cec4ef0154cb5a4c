"""The image tower: an open_clip image encoder -> unit-norm image embedding e_i (docs/paper.md §3).

The paper uses OpenShape's space, i.e. OpenCLIP ViT-bigG-14 (1280-d). Three ways to get a tower:

    ImageTower.pretrained(cfg)   open_clip.create_model(cfg.arch, pretrained=cfg.pretrained).visual
                                 (weights from the Hugging Face hub; the ``vit_b32`` and
                                 ``vit_bigg14`` configs)
    ImageTower(cfg)              open_clip's VisionTransformer at a small size, random init, to be
                                 trained from scratch on toy renders (the offline ``toy`` configs)
    ImageTower.architecture(cfg) a pretrained config's architecture with random init (dry runs)

Either way the module maps normalised pixels (B, 3, S, S) to (B, D) unit vectors, and
``preprocess`` / ``preprocess_rgba`` make those pixels from PIL images / RGBA tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from ..config import Config
from .hub import HubMixin

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's normalisation (also for toy towers)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTowerConfig(Config):
    """An open_clip image encoder. ``pretrained`` set: open_clip's ``arch`` with those weights
    (downloaded from the Hugging Face hub); None: a small open_clip VisionTransformer trained
    from scratch on toy renders (the offline ``toy`` towers)."""

    name: str = "toy"
    arch: str = "VisionTransformer"  # open_clip model name when pretrained
    pretrained: str | None = None  # open_clip weights tag, e.g. "laion2b_s34b_b79k"
    embed_dim: int = 256
    image_size: int = 64
    patch_size: int = 8
    width: int = 96
    layers: int = 4
    heads: int = 4
    background: float = 1.0  # RGBA inputs are composited on this grey level (1.0: white)


IMAGE_TOWERS = {
    # offline, trained from scratch on toy renders (what CI, the notebooks and the shipped checkpoints use)
    "toy": ImageTowerConfig(),
    "toy_lite": ImageTowerConfig(name="toy_lite", embed_dim=64, image_size=32, patch_size=8, width=64, layers=2,
                                 heads=2),
    # pretrained open_clip (Colab; needs the weights from the Hugging Face hub once)
    "vit_b32": ImageTowerConfig(name="vit_b32", arch="ViT-B-32", pretrained="laion2b_s34b_b79k", embed_dim=512,
                                image_size=224),
    # the paper's: OpenShape aligns to OpenCLIP ViT-bigG-14, 1280-d (docs/paper.md §3)
    "vit_bigg14": ImageTowerConfig(name="vit_bigg14", arch="ViT-bigG-14", pretrained="laion2b_s39b_b160k",
                                   embed_dim=1280, image_size=224),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights asked for and not obtainable now; the message says how to get them."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_pretrained(arch: str, tag: str) -> None:
    """Fail at once, with instructions, if open_clip's weights for (arch, tag) cannot be had:
    not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1) or unreachable.
    Never a silent fallback, never a long hang on a dead network."""
    import open_clip  # heavy (~3 s to import): only a pretrained tower needs it here

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(f"{a}/{t}" for a, t in open_clip.list_pretrained() if a == arch) or "none"
        raise PretrainedWeightsUnavailable(f"open_clip has no weights {arch}/{tag}; known for {arch}: {known}")
    repo = cfg.get("hf_hub", "").rstrip("/")
    cached = any(isinstance(try_to_load_from_cache(repo, f), str)
                 for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")) if repo else False
    if cached:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    how = (f"get them once on a machine with internet: python -c \"import open_clip; "
           f"open_clip.create_model('{arch}', pretrained='{tag}')\" (they land in the Hugging Face cache, "
           f"~/.cache/huggingface; copy that folder or set HF_HOME), or use the offline image tower "
           f"'toy' (`image_tower=toy`)")
    if offline:
        raise PretrainedWeightsUnavailable(f"open_clip weights {arch}/{tag} (hub repo {repo}) are not in the "
                                           f"local cache and HF_HUB_OFFLINE is set; {how}")
    if not _hub_reachable():
        raise PretrainedWeightsUnavailable(f"open_clip weights {arch}/{tag} (hub repo {repo}) are not in the "
                                           f"local cache and huggingface.co cannot be reached; {how}")


class ImageTower(nn.Module, HubMixin):
    """(B, 3, S, S) normalised pixels -> (B, D) unit-norm image embeddings."""

    kind = "image_tower"  # a tower trained here; pretrained ones load by name (``ImageTower.pretrained``)
    what = "image tower"

    @classmethod
    def from_checkpoint_config(cls, cfg: dict) -> "ImageTower":
        return cls(ImageTowerConfig.from_dict(cfg["model"]))

    def checkpoint_config(self) -> dict:
        return {**super().checkpoint_config(), "identity": self.identity()}

    def __init__(self, cfg, visual: nn.Module | None = None, mean=OPENAI_MEAN, std=OPENAI_STD):
        super().__init__()
        from open_clip.transformer import VisionTransformer  # heavy (~3 s): imported when a tower is built

        self.cfg = cfg
        self.visual = visual if visual is not None else VisionTransformer(
            image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=cfg.layers,
            heads=cfg.heads, mlp_ratio=4.0, output_dim=cfg.embed_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def pretrained(cls, cfg) -> "ImageTower":
        import open_clip  # heavy (~3 s to import): imported when a tower is built

        fetch_pretrained(cfg.arch, cfg.pretrained)
        model = open_clip.create_model(cfg.arch, pretrained=cfg.pretrained)
        pcfg = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained)
        return cls(cfg, model.visual, pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD))

    @classmethod
    def architecture(cls, cfg, meta: bool = False) -> "ImageTower":
        """A pretrained tower's open_clip architecture with random init, frozen: nothing is
        downloaded (what ``--dry-run`` measures). ``meta``: build on the meta device, no memory
        (open_clip's own ``device="meta"`` still builds on the CPU first: 10 GiB for ViT-bigG-14)."""
        import open_clip  # heavy (~3 s to import): imported when a tower is built

        quiet = logging.getLogger()
        level, quiet.level = quiet.level, logging.ERROR  # open_clip warns that no weights were loaded
        try:
            with torch.device("meta") if meta else contextlib.nullcontext():
                clip = open_clip.create_model(cfg.arch, pretrained=None, device="meta" if meta else "cpu")
        finally:
            quiet.level = level
        return cls(cfg, clip.visual).requires_grad_(False).eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels), dim=-1)  # (B, D)

    # ------------------------------------------------------------------ pixels
    def preprocess(self, images) -> torch.Tensor:
        """PIL RGB images (see data.images.load_image) -> (B, 3, S, S): resize the short side to S
        (bicubic), centre crop, normalise -- open_clip's eval transform."""
        S = self.cfg.image_size
        out = []
        for img in images:
            w, h = img.size
            s = S / min(w, h)
            img = img.resize((max(S, round(w * s)), max(S, round(h * s))), Image.Resampling.BICUBIC)
            w, h = img.size
            left, top = (w - S) // 2, (h - S) // 2
            img = img.crop((left, top, left + S, top + S))
            out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
        x = torch.stack(out).to(self.mean.device)  # (B, 3, S, S) in [0, 1]
        return (x - self.mean) / self.std

    def preprocess_rgba(self, rgba: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) RGBA in [0, 1] (the dataset's views) -> (B, 3, S, S): composite on the
        background, resize to S (bicubic, antialiased), normalise. Differentiable, batched: the
        training path; it agrees with ``preprocess(load_image(...))`` for square images."""
        rgb, alpha = rgba[:, :3], rgba[:, 3:4]
        x = rgb * alpha + self.cfg.background * (1 - alpha)  # (B, 3, H, W)
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def identity(self) -> dict:
        """What a shape tower or prior records about the tower it belongs to (docs/design.md §6)."""
        if self.cfg.pretrained:
            return {"name": self.cfg.name, "arch": self.cfg.arch, "pretrained": self.cfg.pretrained,
                    "embed_dim": self.cfg.embed_dim}
        return {"name": self.cfg.name, "arch": "open_clip VisionTransformer (trained from scratch)",
                "pretrained": None, "embed_dim": self.cfg.embed_dim, "weights": fingerprint(self.state_dict())}


def fingerprint(state_dict: dict) -> str:
    """sha256 (first 16 hex digits) of the weights rounded to fp16: the same for an fp32 training
    checkpoint and its fp16 shipped copy, different for any other weights."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
