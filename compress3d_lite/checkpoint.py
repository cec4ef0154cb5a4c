"""Checkpoints: safetensors weights + a JSON config, written atomically (docs/design.md §6).

The generic part: writing a folder, reading its config and weights, building a module from them.
Each stage's loader (``load_vae``, ``load_towers``, ``load_prior``, ``load_unet``) lives in its
stage module (``compress3d_lite/stages/``) and checks what belongs together.

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


def load_module(path, cfg, build, what: str):
    """``build(cfg)`` with the weights of the checkpoint at ``path`` loaded into it (fp16 files are
    widened to fp32). A config that does not build, or weights that do not fit, is a CheckpointError
    naming the folder."""
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
