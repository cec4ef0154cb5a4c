"""Shared fixtures. ``SHARED`` is ../shared beside the checkout (absent on a bare clone)."""

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two xdist workers on two cores: one torch thread each, or OpenMP's spinning threads
    # oversubscribe the cores and small-op training steps get 10x slower
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EVAL_ASSETS = SHARED / "eval_assets"


@pytest.fixture(scope="session")
def eval_assets():
    if not (EVAL_ASSETS / "meshes").is_dir():
        pytest.skip("../shared/eval_assets is absent (only present next to the developers' checkout)")
    return EVAL_ASSETS


@pytest.fixture(scope="session")
def small_spec():
    from compress3d_lite.config import SampleSpec

    return SampleSpec(n_points=1024, n_uniform=2048, n_near=2048, views=2, resolution=48)


@pytest.fixture(scope="module")
def pipe():
    """The shipped course pipeline on the CPU, progress bars off (once per test module)."""
    from compress3d_lite.pipeline import Compress3DPipeline

    p = Compress3DPipeline.from_pretrained("course", device="cpu")
    p.set_progress_bar_config(disable=True)
    return p
