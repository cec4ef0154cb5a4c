"""Shared fixtures. ``SHARED`` is ../shared beside the checkout (absent on a bare clone)."""

from pathlib import Path

import pytest

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
