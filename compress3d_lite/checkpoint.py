"""Checkpoints: safetensors weights + a JSON config, written atomically (docs/design.md §6).

A checkpoint is a folder:

    model.safetensors   weights (fp32 while training; the shipped ones are fp16)
    config.json         {"format", "kind", "preset", "model": {...}, "train": {...}, "data": {...},
                         "step", "latent_stats": {"mean": [c'], "std": [c']}, ...}
    trainer/            optimiser, scheduler, RNG and data-order state for an exact resume
                        (training checkpoints only; accelerate's save_state)

Folders are written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint where a loader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = "compress3d_lite/ckpt-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or of the wrong kind; message names the path."""


def write_checkpoint(path, state_dict: dict, config: dict, extra_dirs: dict | None = None,
                     half: bool = False) -> Path:
    """Write ``path/`` atomically. ``extra_dirs`` maps sub-folder names to callables that fill
    a given folder (e.g. accelerate's ``save_state``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in state_dict.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **config}, indent=1) + "\n")
        for name, fill in (extra_dirs or {}).items():
            (tmp / name).mkdir()
            fill(tmp / name)
        os.chmod(tmp, 0o755)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir() or not cfg_file.exists():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: corrupt config ({e})") from None
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    return cfg


def read_weights(path) -> dict:
    file = Path(path) / "model.safetensors"
    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    head = file.read_bytes()[:64]
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{file}: a Git LFS pointer, not the weights; fetch the real file")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises SafetensorError, OSError, ...
        raise CheckpointError(f"{file}: corrupt weights ({type(e).__name__}: {e})") from None


def load_vae(path, device="cpu", preset: str | None = None):
    """(TriplaneVAE in eval mode, config dict) from a checkpoint folder.

    ``preset`` (optional) must match the checkpoint's preset; any mismatch is a CheckpointError.
    """
    from .config import AEConfig
    from .models import TriplaneVAE

    cfg = read_config(path)
    if cfg.get("kind") != "triplane_vae":
        raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a triplane VAE")
    if preset is not None and cfg.get("preset") != preset:
        raise CheckpointError(f"{path}: made with preset {cfg.get('preset')!r}, not {preset!r}")
    try:
        model = TriplaneVAE(AEConfig.from_dict(cfg["model"]))
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: bad model config ({e})") from None
    weights = read_weights(path)
    try:
        model.load_state_dict({k: v.float() for k, v in weights.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model in config.json ({first})") from None
    return model.to(device).eval(), cfg


def latent_stats(cfg: dict, device="cpu"):
    """Per-channel latent mean and std, shaped (1, 1, c', 1, 1), for normalising latents."""
    stats = cfg.get("latent_stats")
    if not stats:
        return None, None
    mean = torch.tensor(stats["mean"], device=device).view(1, 1, -1, 1, 1)
    std = torch.tensor(stats["std"], device=device).view(1, 1, -1, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------- stage 2 and 3


def _load_module(path, cfg, build, what: str):
    try:
        model = build(cfg)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: bad {what} config ({e})") from None
    weights = read_weights(path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model in config.json ({first})") from None
    return model


def load_image_tower(spec, device="cpu"):
    """An ImageTower from a checkpoint folder (a tower trained here) or the name of a pretrained
    one in config.IMAGE_TOWERS (``vit_b32``, ``vit_bigg14``: open_clip weights from the hub)."""
    from .config import IMAGE_TOWERS, ImageTowerConfig
    from .models.image_tower import ImageTower

    if isinstance(spec, str) and spec in IMAGE_TOWERS and not Path(spec).exists():
        cfg = IMAGE_TOWERS[spec]
        if not cfg.pretrained:
            raise CheckpointError(f"image tower {spec!r} is trained from scratch and has no published weights; "
                                  "give the folder of a trained one (e.g. data_samples/checkpoints/embed_course/"
                                  "image_tower) or a pretrained name (vit_b32, vit_bigg14)")
        return ImageTower.pretrained(cfg).to(device).eval()
    cfg = read_config(spec)
    if cfg.get("kind") != "image_tower":
        raise CheckpointError(f"{spec}: a {cfg.get('kind')!r} checkpoint, not an image tower")
    tower = _load_module(spec, cfg.get("model", {}), lambda d: ImageTower(ImageTowerConfig.from_dict(d)), "image tower")
    if tower.identity() != cfg.get("identity"):
        raise CheckpointError(f"{spec}: weights do not match the identity recorded in config.json (modified file?)")
    return tower.to(device).eval()


def check_tower(path, recorded: dict, tower) -> None:
    """A shape tower / prior must be used with the image tower it was trained against."""
    have = tower.identity()
    if recorded != have:
        def name(d):
            return f"{d.get('name')} ({d.get('weights') or d.get('pretrained')})" if d else "unknown"
        raise CheckpointError(f"{path}: was trained against image tower {name(recorded)}, "
                              f"not {name(have)}; use the image tower it was trained with, or retrain it")


def load_shape_tower(path, image_tower=None, device="cpu"):
    """(ShapeTower, config) from a checkpoint folder; with ``image_tower`` given, refuses one
    trained against another tower."""
    from .config import ShapeTowerConfig
    from .models.image_tower import fingerprint
    from .models.shape_tower import ShapeTower

    cfg = read_config(path)
    if cfg.get("kind") != "shape_tower":
        raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a shape tower")
    if image_tower is not None:
        check_tower(path, cfg.get("image_tower"), image_tower)
    model = _load_module(path, cfg.get("model", {}), lambda d: ShapeTower(ShapeTowerConfig.from_dict(d)), "shape tower")
    cfg["fingerprint"] = fingerprint(model.state_dict())
    return model.to(device).eval(), cfg


def load_towers(embed_dir, image_tower=None, device="cpu"):
    """(image tower, shape tower, shape tower config) of a ``train embed`` output folder:
    ``embed_dir/shape_tower`` and ``embed_dir/image_tower`` (or, for a pretrained tower, the
    name recorded in the shape tower's config, or ``image_tower`` given explicitly)."""
    embed_dir = Path(embed_dir)
    shape_path = embed_dir / "shape_tower"
    if not embed_dir.exists():
        raise CheckpointError(f"{embed_dir}: no such folder")
    if not shape_path.exists():
        raise CheckpointError(f"{embed_dir}: no shape_tower/ inside (expected the output folder of train embed)")
    if image_tower is None:
        if (embed_dir / "image_tower").exists():
            image_tower = embed_dir / "image_tower"
        else:
            image_tower = (read_config(shape_path).get("image_tower") or {}).get("name")
            if not image_tower:
                raise CheckpointError(f"{shape_path}: records no image tower")
    tower = image_tower if hasattr(image_tower, "identity") else load_image_tower(image_tower, device)
    shape, cfg = load_shape_tower(shape_path, tower, device)
    return tower, shape, cfg


def load_prior(path, image_tower=None, device="cpu"):
    """(DiffusionPrior, config) from a checkpoint folder; with ``image_tower`` given, refuses a
    prior trained in another tower's space."""
    from .config import DiffusionConfig, PriorConfig
    from .models.prior import DiffusionPrior

    cfg = read_config(path)
    if cfg.get("kind") != "diffusion_prior":
        raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a diffusion prior")
    if image_tower is not None:
        check_tower(path, cfg.get("image_tower"), image_tower)
    model = _load_module(path, cfg, lambda d: DiffusionPrior(PriorConfig.from_dict(d["model"]),
                                                             DiffusionConfig.from_dict(d["diffusion"])), "prior")
    return model.to(device).eval(), cfg
