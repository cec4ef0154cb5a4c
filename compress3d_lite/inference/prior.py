"""Stage 3 at inference (docs/paper.md §4): the diffusion prior loaded, checked against the image
tower whose space it was trained in. It samples itself (``DiffusionPrior.sample``).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_config, resolve_folder
from ..config import check_sizes
from ..models.prior import DiffusionPrior
from ..presets import PRIOR_SIZE_BOUNDS
from .embed import check_tower


def load_prior(path, image_tower=None, device="cpu", use_ema: bool = True):
    """(DiffusionPrior, config) from a checkpoint folder or Hub repo id (its EMA weights when it has
    them); with ``image_tower`` given, refuses a prior trained in another tower's space."""
    folder = resolve_folder(path)
    cfg = read_config(folder)
    check_sizes(cfg.get("model"), PRIOR_SIZE_BOUNDS, Path(folder) / "config.json")  # before building
    if cfg.get("kind") == DiffusionPrior.kind and image_tower is not None:  # before building: the cheaper refusal
        check_tower(path, cfg.get("image_tower"), image_tower)
    model = DiffusionPrior.load(folder, device, use_ema=use_ema)
    return model, model.checkpoint_info
