"""Stage 4 at inference (docs/paper.md §5): the triplane UNet loaded with the sampling record a
pipeline reads from its config (latent statistics, default guidance), its start estimate when it
has one, and the checks of a call's guidance scales and start. The UNet samples itself
(``TriplaneUNet.sample``).
"""

from __future__ import annotations

import math

from ..checkpoint import CheckpointError, read_config, resolve_folder
from ..config import STARTS, check_sizes
from ..models.start_estimate import StartEstimate
from ..models.triplane_unet import TriplaneUNet
from ..presets import UNET_SIZE_BOUNDS


def load_unet(path, device="cpu", use_ema: bool = True):
    """(TriplaneUNet in eval mode, config dict) from a checkpoint folder or Hub repo id (its EMA
    weights when it has them); the model carries its ``diffusion_cfg`` (schedule, parametrisation,
    sampler)."""
    folder = resolve_folder(path)
    check_sizes(read_config(folder).get("model"), UNET_SIZE_BOUNDS, folder / "config.json")  # before building
    model = TriplaneUNet.load(folder, device, use_ema=use_ema)
    check_sampling_record(model.checkpoint_info, model.cfg.latent_channels, folder / "config.json")
    return model, model.checkpoint_info


GUIDANCE_BOUND = 100.0  # |scale| above this only amplifies noise; the paper's best is 5


def check_sampling_record(cfg: dict, channels: int, where) -> None:
    """What a pipeline reads from a UNet config besides the model: ``latent_stats`` (a finite mean
    and a positive std per latent channel) and the optional default ``guidance`` scales (finite
    numbers, at most GUIDANCE_BOUND in size). A CheckpointError naming the field, at load time."""
    stats = cfg.get("latent_stats")
    if not isinstance(stats, dict):
        raise CheckpointError(f"{where}: no \"latent_stats\" (the latent mean and std per channel the UNet was "
                              "trained in); a UNet release folder written by `train diffusion` has them")
    for key in ("mean", "std"):
        values = stats.get(key)
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise CheckpointError(f"{where}: latent_stats.{key} must be {channels} finite numbers (one per latent "
                                  f"channel), got {str(values)[:60]}")
    if min(stats["std"]) <= 0:
        raise CheckpointError(f"{where}: latent_stats.std must be positive, got {stats['std']}")
    guidance = cfg.get("guidance") or {}
    for key, g in guidance.items():
        if key in ("image", "shape") and guidance_problem(g):
            raise CheckpointError(f"{where}: guidance.{key} must be a number in -{GUIDANCE_BOUND:g}..{GUIDANCE_BOUND:g}, "
                                  f"got {g!r}")
    problem = guidance_extras_problem(guidance.get("interval", (0.0, 1.0)), guidance.get("rescale", 0.0))
    if problem:
        raise CheckpointError(f"{where}: guidance.{problem}")


def guidance_extras_problem(interval, rescale) -> str | None:
    """What is wrong with a guidance interval (lo, hi), 0 <= lo < hi <= 1 in noise level t / T, or a
    rescale phi in [0, 1], in words starting with the field's name; None when both are right."""
    numbers = isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
    if not numbers or not 0 <= interval[0] < interval[1] <= 1:
        return f"interval must be two noise levels 0 <= lo < hi <= 1, got {interval!r:.60}"
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 <= rescale <= 1:
        return f"rescale must be a number in [0, 1], got {rescale!r:.40}"
    return None


def guidance_problem(g) -> str | None:
    """What is wrong with a guidance scale: "type" (not a number), "range" (not finite, or
    beyond GUIDANCE_BOUND), or None."""
    if isinstance(g, bool) or not isinstance(g, (int, float)):
        return "type"
    return "range" if not math.isfinite(g) or abs(g) > GUIDANCE_BOUND else None


def check_guidance(image_guidance_scale=None, shape_guidance_scale=None) -> None:
    """Guidance scales given as arguments (None: the checkpoint's default) must pass
    ``guidance_problem``; a TypeError or ValueError naming the argument otherwise."""
    for name, g in (("image_guidance_scale", image_guidance_scale), ("shape_guidance_scale", shape_guidance_scale)):
        problem = None if g is None else guidance_problem(g)
        if problem == "type":
            raise TypeError(f"{name} must be a number, got {type(g).__name__} {g!r:.40}")
        if problem == "range":
            raise ValueError(f"{name} must be a finite number in -{GUIDANCE_BOUND:g}..{GUIDANCE_BOUND:g}, got {g}")


START_FOLDER = "start"  # the UNet folder's subfolder holding its StartEstimate, when it has one


def load_start(unet_folder, device="cpu") -> StartEstimate | None:
    """The StartEstimate saved beside a UNet (``<unet folder>/start``), or None when it has none.
    A CheckpointError when its sizes do not fit the UNet's latent and embeddings."""
    folder = resolve_folder(unet_folder) / START_FOLDER
    if not (folder / "config.json").exists():
        return None
    start = StartEstimate.load(folder, device)
    unet = read_config(resolve_folder(unet_folder))["model"]
    want = (unet["embed_dim"], unet["latent_channels"], unet["latent_res"])
    have = (start.cfg.embed_dim, start.cfg.latent_channels, start.cfg.latent_res)
    if have != want:
        raise CheckpointError(f"{folder}: a start estimate for embeddings / latents of size {have}, but the UNet "
                              f"beside it has {want}")
    return start


def check_start(start: str, estimate: StartEstimate | None, use_prior: bool = True) -> None:
    """A pipeline call's ``start`` must be one of STARTS, and "regression" needs an estimate and
    the prior's shape embedding: a ValueError naming the argument otherwise."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    if start == "regression" and estimate is None:
        raise ValueError("start='regression' needs the UNet's StartEstimate, and this pipeline's UNet has none "
                         "(`compress3d-lite train start` fits one)")
    if start == "regression" and not use_prior:
        raise ValueError("start='regression' reads the prior's shape embedding; it cannot run with use_prior=False")
