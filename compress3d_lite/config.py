"""Run-time switches and the config conventions shared by the library, the CLI and the notebooks.

Fast mode is the one switch that shrinks notebooks and tests to CPU size. It is read from a
single environment variable, ``C3D_FAST``:

    C3D_FAST=1   force fast mode (small sizes, few steps) -- what CI and nbval use
    C3D_FAST=0   force full mode, even on a CPU
    unset        automatic: fast on a machine without CUDA, full with CUDA

Fast mode shrinks steps and sizes; it never skips a concept.

Configs are dataclasses deriving from ``Config``: one ``to_dict`` / ``from_dict`` for all of them
(what checkpoints store) and ``override`` for validated changes (an unknown field or a value of
the wrong type is a ``ConfigError``, a ValueError that names it). Each model's config lives
beside the model (``models/autoencoder.py``: ``AEConfig``, ...); each stage's presets are named
dataclasses in its stage module (``stages/vae.py``: ``PRESETS``). This module imports nothing of ours and no torch,
so the command line can read it to print its help.
"""

from __future__ import annotations

import copy
import os
import types
import typing
from dataclasses import asdict, dataclass, fields

FAST_ENV = "C3D_FAST"
HALF_EXTENT = 0.9  # the data frame: every object's bounding box fits in [-0.9, 0.9]^3 (docs/design.md §2)
AMBIENT = 0.35  # the renders' shading: AMBIENT + (1 - AMBIENT) |cos(normal, view ray)| (data/render.py, field_renderer.py)
# the paper's best guidance (docs/paper.md §5, §8.6), over the whole noise range, not rescaled: what the
# pipeline samples with where a UNet checkpoint has no measured defaults of its own
PAPER_GUIDANCE = {"image": 5.0, "shape": 1.0, "interval": [0.0, 1.0], "rescale": 0.0}
PRESET_NAMES = ("lite", "course", "colab_t4", "a100_full")  # every stage has these four (docs/design.md §4)
GPU_PRESETS = PRESET_NAMES[2:]  # the presets planned for GPUs (presets.GPUS: how many)
STAGE_NAMES = ("ae", "embed", "prior", "diffusion")  # the four stages, as the command line names them
PRECISIONS = ("bf16", "fp16")  # the 16-bit autocast dtypes a GPU preset may train in
# the choices of diffusion.DiffusionConfig, here so that the CLI offers them without importing torch
SAMPLERS = ("ddim", "dpm", "ddpm", "euler")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
OBJECTIVES = ("ddpm", "rectified_flow")
TIMESTEPS = ("uniform", "logit_normal")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# where the pipeline's UNet starts: pure noise (the paper), or its StartEstimate noised partway
STARTS = ("noise", "regression")


def fast_mode() -> bool:
    """True when notebooks/tests should run at CPU size (see module docstring)."""
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    try:
        import torch  # here, not at the top: this module imports no torch (the CLI's --help reads it)

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return True


def pick_device() -> str:
    """cuda > mps > cpu."""
    import torch  # here, not at the top: this module imports no torch (the CLI's --help reads it)

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------------------
# configs: one to/from-dict helper, validated overrides


class ConfigError(ValueError):
    """An unknown preset or field, or a value of the wrong type; the message names it."""


def _plain(x):
    """asdict output -> JSON-ready values (tuples become lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _coerce(value, hint, where: str):
    """``value`` as the type ``hint`` asks for (lists -> tuples, ints -> floats, dicts -> configs),
    or a ConfigError that names ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
    elif isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return hint.from_dict(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:  # an annotation we do not check
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


@dataclass
class Config:
    """Base of every config dataclass: ``to_dict``, ``from_dict``, ``override``."""

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @classmethod
    def _hints(cls) -> dict:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True):
        """An instance from a dict (e.g. a checkpoint's config.json). ``strict``: an unknown key is
        a ConfigError; otherwise unknown keys are ignored (for files written by other versions)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown and strict:
            raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        hints = cls._hints()
        return cls(**{k: _coerce(v, hints[k], f"{cls.__name__}.{k}") for k, v in d.items() if k in names})

    def override(self, changes: dict | None = None, **more):
        """A copy with ``changes`` applied (a nested config takes a dict of its own changes).
        An unknown field, or a value of the wrong type, is a ConfigError naming the field."""
        changes = {**(changes or {}), **more}
        names = {f.name: f for f in fields(self)}
        hints = self._hints()
        new = copy.deepcopy(self)
        for k, v in changes.items():
            if k not in names:
                raise ConfigError(f"unknown {type(self).__name__} field {k!r}; fields: {', '.join(names)}")
            current = getattr(new, k)
            if isinstance(current, Config) and isinstance(v, dict):
                v = current.override(v)
            setattr(new, k, _coerce(v, hints[k], f"{type(self).__name__}.{k}"))
        return new


def choose_preset(presets: dict, name: str, what: str):
    """A copy of ``presets[name]`` (safe to edit), or a ConfigError listing the names."""
    if name not in presets:
        raise ConfigError(f"unknown {what} preset {name!r}; choose from {', '.join(presets)}")
    return copy.deepcopy(presets[name])


SIZE_SLACK = 4  # a checkpoint's sizes may reach 4x the largest preset of its family


def _numbers(value) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):  # sizes; float weights and rates are not sizes
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


def preset_bounds(model_configs) -> dict:
    """{field: (low, high, longest)} over a preset family's model configs (dicts or Configs): every
    integer of a field, and of a list field every element, may lie from 0 (or 1 when no preset uses
    0) up to ``SIZE_SLACK`` times the family's largest; a list may be one longer than the longest."""
    bounds = {}
    for cfg in model_configs:
        d = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
        for k, v in d.items():
            nums = _numbers(v)
            if not nums:
                continue
            lo, hi, longest = bounds.get(k, (1, 0, 0))
            bounds[k] = (min(lo, 0 if min(nums) <= 0 else 1), max(hi, max(nums)),
                         max(longest, len(v) if isinstance(v, (list, tuple)) else 0))
    return {k: (lo, SIZE_SLACK * hi if hi > 0 else 1, longest) for k, (lo, hi, longest) in bounds.items()}


def check_sizes(model_cfg: dict, bounds: dict, where) -> None:
    """Refuse (ConfigError naming ``where``, the field, its value and the bounds) a model config
    with a size outside its preset family's ``bounds`` (``preset_bounds``): checked before anything
    is built, so an untrusted config.json cannot make us allocate an absurd model."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{where}: no model config")
    for k, v in model_cfg.items():
        if k not in bounds:
            continue
        lo, hi, longest = bounds[k]
        nums = _numbers(v)
        if isinstance(v, (list, tuple)) and len(v) > longest + 1:
            raise ConfigError(f"{where}: model.{k} has {len(v)} entries; this model family has at most {longest}")
        bad = [x for x in nums if not lo <= x <= hi]
        if bad:
            raise ConfigError(f"{where}: model.{k} = {v} is outside the bounds of this model family "
                              f"({lo}..{hi:g}); the config does not describe a model we would build")


# ----------------------------------------------------------------------------------------
# data configs (the per-object sampling spec is saved next to every dataset in index.json)


@dataclass
class TrainConfig(Config):
    """One training run (any stage): steps, batch, optimiser, logging, checkpoints."""

    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    n_points: int = 2048  # surface points per object per step (input and colour targets)
    n_occ: int = 4096  # occupancy queries per object per step
    n_train: int = 512  # toy objects made for training when a run is given no data folder
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: "no", "fp16", "bf16"
    num_workers: int = 0
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (0: none)



@dataclass
class SampleSpec(Config):
    """How one object is turned into a training example (docs/design.md §2)."""

    n_points: int = 4096  # coloured surface samples per object
    n_uniform: int = 8192  # occupancy queries uniform in [-1, 1]^3
    n_near: int = 8192  # occupancy queries near the surface
    near_sigmas: tuple = (0.01, 0.05)  # std of the gaussian offsets, half the near queries each
    views: int = 4  # rendered views per object (0: none)
    resolution: int = 128  # view size in pixels (square)
    fov_deg: float = 40.0  # vertical field of view of the pinhole camera
    radius: float = 4.6  # camera distance: the whole [-0.9, 0.9]^3 box (radius 1.56) is in view
    elevation_deg: tuple = (-10.0, 40.0)  # camera elevation above the xz plane (y is up), degrees

    @classmethod
    def from_dict(cls, d: dict, strict: bool = False) -> "SampleSpec":
        """Lenient by default: index.json files may carry keys of other versions."""
        return super().from_dict(d, strict=strict)


def check_count(name: str, value, low: int, high: int | None = None) -> None:
    """``value`` must be an int in low..high (high None: no upper bound); TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.40}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in {low}..{'' if high is None else high}, got {value}")
