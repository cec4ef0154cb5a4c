"""The paper's generation metrics on rendered views: FID and CLIP similarity (docs/paper.md §8.1-8.2).

    feature, name = fid_features("auto", tower)           # Inception-v3 if its weights are here
    fid(real_views, generated_views, feature)              # torchmetrics' FrechetInceptionDistance
    clip_similarity(tower, generated_views, reference)     # cosine of image embeddings, per pair

FID (Heusel et al. 2017) fits a Gaussian to the features of each image set and measures

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

so a set against itself is 0 and any shift of the distribution raises it. The paper does not say
which features it used (docs/paper.md §8.1). The standard is Inception-v3 pool3 (2048-d, the
torch-fidelity weights); when those are not available (offline, no ``torch-fidelity``), we use a
named open_clip image tower's embedding instead ("CLIP-FID", Kynkaanniemi et al. 2023). The two
scales are NOT comparable, and FID of small sets is biased upwards (its floor at n images is
well above 0 even for two sets of real images) -- every report names the extractor and n.

CLIP similarity: the cosine between the image embeddings of two images (here: a render of the
generated asset and a reference image), 1.0 for an image and itself, the maximum.

Images everywhere here are float tensors (N, 3, H, W) in [0, 1], or uint8 RGBA/RGB arrays
(N, H, W, 4|3), which are composited on white.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


def to_rgb_tensor(images, background: float = 1.0) -> torch.Tensor:
    """uint8 (N, H, W, 4|3) arrays or float (N, 3, H, W) tensors -> float (N, 3, H, W) in [0, 1]."""
    if torch.is_tensor(images) and images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected float images (N, 3, H, W), got {tuple(images.shape)}")
        return images.float().clamp(0, 1)
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected images (N, H, W, 3|4), got shape {a.shape}")
    x = torch.from_numpy(a.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # (N, 3|4, H, W)
    if x.shape[1] == 4:
        x = x[:, :3] * x[:, 3:] + background * (1 - x[:, 3:])
    return x


class TowerFeatures(nn.Module):
    """An open_clip image tower as an FID feature extractor: (N, 3, H, W) in [0, 1] -> (N, D),
    the embedding before its unit normalisation (what torchmetrics calls ``feature``)."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower.eval()
        self.num_features = tower.cfg.embed_dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        rgba = torch.cat([x, torch.ones_like(x[:, :1])], dim=1).to(self.tower.mean.device)  # opaque
        return self.tower.visual(self.tower.preprocess_rgba(rgba)).float()  # (N, D)


def inception_available() -> bool:
    """torch-fidelity installed and its Inception-v3 FID weights in the torch hub cache."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS).exists()


def fid_features(kind: str = "auto", tower=None) -> tuple:
    """(``feature`` for torchmetrics' FID, a description dict naming it).

    ``kind``: "inception" (needs torch-fidelity and its weights), "tower" (the given open_clip
    image tower) or "auto" (Inception when available, else the tower)."""
    if kind not in ("auto", "inception", "tower"):
        raise ValueError(f"unknown FID features {kind!r}; choose auto, inception or tower")
    if kind == "inception" or (kind == "auto" and inception_available()):
        if not inception_available():
            raise RuntimeError("Inception FID features need torch-fidelity and its weights: pip install "
                               "torch-fidelity, then once online: python -c \"from torchmetrics.image.fid import "
                               "FrechetInceptionDistance as F; F()\"; or use the tower's features (`features=tower`)")
        return 2048, {"name": "inception-v3 pool3", "dim": 2048, "standard": True}
    if tower is None:
        raise ValueError("FID without Inception weights needs an open_clip image tower")
    return TowerFeatures(tower), {"name": f"open_clip tower {tower.identity()['name']}", "dim": tower.cfg.embed_dim,
                                  "standard": False, "tower": tower.identity()}


@torch.no_grad()
def fid(real, fake, feature, batch_size: int = 64) -> float:
    """Frechet distance between the feature Gaussians of two image sets (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # heavy (~3 s to import): only FID needs it

    real, fake = to_rgb_tensor(real), to_rgb_tensor(fake)
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    metric = FrechetInceptionDistance(feature=feature, normalize=True)
    for images, is_real in ((real, True), (fake, False)):
        for k in range(0, len(images), batch_size):
            metric.update(images[k:k + batch_size], real=is_real)
    return max(0.0, float(metric.compute()))  # tiny negative values are round-off


@torch.no_grad()
def clip_similarity(tower, images_a, images_b, batch_size: int = 64) -> torch.Tensor:
    """(N,) cosine similarity of the tower's embeddings of image pairs (a[k], b[k]); b may hold one
    image, compared with every a[k]."""
    a, b = to_rgb_tensor(images_a), to_rgb_tensor(images_b)
    if len(b) not in (1, len(a)):
        raise ValueError(f"clip_similarity: {len(a)} images against {len(b)}; give as many, or one")
    embed = TowerFeatures(tower)
    ea = torch.cat([embed(a[k:k + batch_size]) for k in range(0, len(a), batch_size)])
    eb = torch.cat([embed(b[k:k + batch_size]) for k in range(0, len(b), batch_size)])
    return F.cosine_similarity(ea, eb.expand_as(ea), dim=-1)
