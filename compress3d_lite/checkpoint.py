"""Checkpoints: safetensors weights + a JSON config, written atomically (docs/design.md §6).

The generic part: writing a folder, reading its config and weights, building a module from them.
Each stage's loader (``load_vae``, ``load_towers``, ``load_prior``, ``load_unet``) lives in its
stage module (``compress3d_lite/stages/``) and checks what belongs together.

A checkpoint is a folder:

    model.safetensors   weights (fp32 while training; the shipped ones are fp16)
    ema.safetensors     the exponential moving average of the weights, when the run kept one
    config.json         {"format", "kind", "preset", "model": {...}, "train": {...}, "data": {...},
                         "step", "latent_stats": {"mean": [c'], "std": [c']}, ...}
    trainer/            optimiser, scheduler, RNG and data-order state for an exact resume
                        (training checkpoints only; accelerate's save_state)

Folders are written under a temporary name, flushed to disk (fsync) and renamed into place, so a
crash never leaves a half-written checkpoint where a loader would find it. Replacing a checkpoint
takes two renames (the old one aside, the new one in); a crash between them is repaired by
``recover`` (the old one comes back), which every writer and reader of a checkpoint calls first.

A config.json is not trusted: before any weight is allocated the model is built on PyTorch's
``meta`` device (no memory) and its parameter shapes are compared with the shapes recorded in the
safetensors header, so a config that does not match its weights, or asks for a model far larger
than the file holds, is refused with the first differences named.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT = "compress3d_lite/ckpt-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or of the wrong kind; message names the path."""


def _fsync(path) -> None:
    """Flush a file, or a folder's entries, to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _usual_mode(path, folder: bool = False) -> None:
    """0644 files / 0755 folders under the usual umask (temporary files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def _tensors(state_dict: dict, half: bool) -> dict:
    return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in state_dict.items()}


def write_files(folder, state_dict: dict, config: dict, extra_weights: dict | None = None,
                half: bool = False) -> None:
    """``model.safetensors`` + ``config.json`` (and ``extra_weights``: file name -> state dict,
    e.g. ``ema.safetensors``) into an existing ``folder``, each file written to a temporary name
    and renamed into place."""
    folder = Path(folder)
    files = {"model.safetensors": state_dict, **(extra_weights or {})}
    for name, state in files.items():
        tmp = folder / f".{name}.tmp"
        save_file(_tensors(state, half), str(tmp))
        _usual_mode(tmp)
        _fsync(tmp)
        os.replace(tmp, folder / name)
    _write_config(folder, config)
    _fsync(folder)


def _write_config(folder: Path, config: dict) -> Path:
    """``folder/config.json`` (the format first), written to a temporary name, flushed to disk and
    renamed into place."""
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, **config}, indent=1) + "\n")
    _usual_mode(tmp)
    _fsync(tmp)
    os.replace(tmp, folder / "config.json")
    return folder / "config.json"


def update_config(folder, changes: dict) -> Path:
    """Replace top-level entries of the checkpoint ``folder``'s config.json (``changes``: key -> new
    value, e.g. ``{"guidance": {...}}``; the other entries and their order stay) and write it back
    atomically; the weights are not touched. Returns the config file."""
    folder = Path(folder)
    path = _write_config(folder, {**read_config(folder), **changes})
    _fsync(folder)
    return path


def recover(path) -> Path:
    """Repair what an interrupted ``write_checkpoint`` of ``path`` can leave behind: between its two
    renames the previous checkpoint sits at ``.<name>.old`` and ``path`` is missing -- it is put
    back; temporary ``.<name>.*`` folders of writes that never finished are removed. Returns path."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*"):
            if stale.is_dir() and stale != old:
                shutil.rmtree(stale, ignore_errors=True)
        if old.exists() and path.exists():
            shutil.rmtree(old, ignore_errors=True)
    return path


def write_checkpoint(path, state_dict: dict, config: dict, extra_dirs: dict | None = None,
                     half: bool = False, extra_weights: dict | None = None) -> Path:
    """Write the folder ``path/`` atomically: filled under a temporary name, then renamed into
    place. ``extra_dirs`` maps sub-folder names to callables that fill a given folder (e.g.
    accelerate's ``save_state``); ``extra_weights`` as in ``write_files``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_files(tmp, state_dict, config, extra_weights, half)
        for name, fill in (extra_dirs or {}).items():
            (tmp / name).mkdir()
            fill(tmp / name)
            for f in (tmp / name).rglob("*"):
                if f.is_file():
                    _fsync(f)
        _usual_mode(tmp, folder=True)
        _fsync(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)  # a crash between the two renames: recover() puts `old` back
        _fsync(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def resolve_folder(spec, revision: str | None = None, cache_dir=None, local_files_only: bool = False,
                   token=None, force_download: bool = False) -> Path:
    """A checkpoint folder on this machine for ``spec``: a folder path as it is, or a Hugging Face
    Hub repo id (``org/name``) as its snapshot -- downloaded once, then read from the local
    Hugging Face cache (offline too, with ``HF_HUB_OFFLINE=1``). A CheckpointError says which."""
    path = Path(spec)
    if path.exists() or isinstance(spec, Path):
        return path
    text = str(spec)
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "~")):
        raise CheckpointError(f"{spec}: no such checkpoint (neither a folder nor a Hub repo id 'org/name')")
    try:
        return Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only, force_download=force_download))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{spec}: not a folder here, and no snapshot of the Hub repo {text!r} in the local "
                              "Hugging Face cache (offline); download it once with "
                              f"`hf download {text}` on a machine with internet") from None
    except Exception as e:  # repository not found, no access, network errors
        raise CheckpointError(f"{spec}: not a folder here, and the Hub repo {text!r} could not be fetched "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_config(path) -> dict:
    path = Path(path)
    if not path.exists():
        recover(path)  # a crash between the two renames of write_checkpoint
    cfg_file = path / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir() or not cfg_file.exists():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: corrupt config ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{cfg_file}: corrupt config (nested too deeply)") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: a JSON {type(cfg).__name__}, expected an object")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    for key in SECTIONS:
        if key in cfg and not isinstance(cfg[key], dict):
            raise CheckpointError(f"{cfg_file}: \"{key}\" is a {type(cfg[key]).__name__}, expected an object")
    return cfg


SECTIONS = ("model", "train", "diffusion", "latent_stats", "guidance")  # each a JSON object where present


def read_weights(path, name: str = "model.safetensors") -> dict:
    file = Path(path) / name
    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    head = file.read_bytes()[:64]
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{file}: a Git LFS pointer, not the weights; fetch the real file")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises SafetensorError, OSError, ...
        raise CheckpointError(f"{file}: corrupt weights ({type(e).__name__}: {e})") from None


def weight_shapes(path, name: str = "model.safetensors", dtypes: bool = False) -> dict:
    """{tensor name: shape} from the safetensors header alone (nothing is loaded); with
    ``dtypes``, {tensor name: (shape, safetensors dtype name such as "F16", "I64", "BOOL")}."""
    file = Path(path) / name
    if not file.exists():
        raise CheckpointError(f"{file}: missing")
    if file.read_bytes()[:64].startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{file}: a Git LFS pointer, not the weights; fetch the real file")
    try:
        with safe_open(str(file), framework="pt") as f:
            if dtypes:
                return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{file}: corrupt weights ({type(e).__name__}: {e})") from None


def shape_differences(expected: dict, found: dict, limit: int = 3) -> list:
    """Readable differences between two {name: shape} maps (at most ``limit``, then a count)."""
    out = [f"{k}: config says {list(expected[k])}, weights have {list(found[k])}"
           for k in expected if k in found and tuple(expected[k]) != tuple(found[k])]
    out += [f"{k} missing from the weights" for k in expected if k not in found]
    out += [f"{k} in the weights but not in the model" for k in found if k not in expected]
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def load_module(path, cfg, build, what: str, weights: str = "model.safetensors"):
    """``build(cfg)`` with the weights of the checkpoint at ``path`` (the file ``weights``) loaded
    into it (fp16 files are widened to fp32). The model is first built on the ``meta`` device (no
    memory) and checked against the shapes in the weights' header, so a config that does not fit
    its weights -- however large it says the model is -- is a CheckpointError naming the folder and
    the first differences, raised before anything is allocated."""
    try:
        with torch.device("meta"):
            skeleton = build(cfg)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: bad {what} config ({e})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    header = weight_shapes(path, weights, dtypes=True)
    diffs = shape_differences(expected, {k: shape for k, (shape, _) in header.items()})
    if diffs:
        raise CheckpointError(f"{path}: the weights do not fit the model its config.json describes: " + "; ".join(diffs))
    wrong = [f"{k} is {dtype}" for k, v in skeleton.state_dict().items()
             if v.is_floating_point() and (dtype := header[k][1]) not in FLOAT_DTYPES]
    if wrong:
        raise CheckpointError(f"{Path(path) / weights}: weights must be floating point, but "
                              + "; ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    model = build(cfg)
    file, weights = Path(path) / weights, read_weights(path, weights)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{file}: {len(bad)} of {len(weights)} tensors hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run that wrote them "
                              "diverged or the file is damaged")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as e:
        detail = "; ".join(x.strip() for x in str(e).strip().splitlines()[1:4]) or str(e).strip()
        raise CheckpointError(f"{path}: weights do not fit the model in config.json ({detail})") from None
    return model
