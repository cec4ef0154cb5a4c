"""Configs, presets and run-time switches shared by the library, the CLI and the notebooks.

Fast mode is the one switch that shrinks notebooks and tests to CPU size. It is read from a
single environment variable, ``C3D_FAST``:

    C3D_FAST=1   force fast mode (small sizes, few steps) -- what CI and nbval use
    C3D_FAST=0   force full mode, even on a CPU
    unset        automatic: fast on a machine without CUDA, full with CUDA

Fast mode shrinks steps and sizes; it never skips a concept.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

FAST_ENV = "C3D_FAST"


def fast_mode() -> bool:
    """True when notebooks/tests should run at CPU size (see module docstring)."""
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return True


def pick_device() -> str:
    """cuda > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------------------
# data configs (the per-object sampling spec is saved next to every dataset in index.json)


@dataclass
class SampleSpec:
    """How one object is turned into a training example (DESIGN.md section 2)."""

    n_points: int = 4096  # coloured surface samples per object
    n_uniform: int = 8192  # occupancy queries uniform in [-1, 1]^3
    n_near: int = 8192  # occupancy queries near the surface
    near_sigmas: tuple = (0.01, 0.05)  # std of the gaussian offsets, half the near queries each
    views: int = 4  # rendered views per object (0: none)
    resolution: int = 128  # view size in pixels (square)
    fov_deg: float = 40.0  # vertical field of view of the pinhole camera
    radius: float = 4.6  # camera distance: the whole [-0.9, 0.9]^3 box (radius 1.56) is in view
    elevation_deg: tuple = (-10.0, 40.0)  # camera elevation above the xz plane (y is up), degrees

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SampleSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("near_sigmas", "elevation_deg"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)
