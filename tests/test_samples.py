"""Shipped files are found after any kind of install, by one rule (docs/design.md §6.1)."""

import json
import re
from pathlib import Path

import pytest
import tomllib

from compress3d_lite import samples
from compress3d_lite.samples import SamplesNotFound, data_samples, sample_path, shipped_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_checkpoints_are_found():
    for name in ("vae_course", "vae_course_noattn", "embed_course", "prior_course", "unet_course", "unet_course_ddpm",
                 "unet_course_v1"):
        folder = shipped_checkpoint(name)
        assert folder.is_dir() and any(folder.rglob("model.safetensors")), name
    assert sample_path("toyshapes", "images", "000003_0.png").is_file()


def _layout(root: Path, marker: str) -> Path:
    folder = root / "data_samples" / "checkpoints" / "vae_course"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(marker)
    return root / "data_samples"


def test_the_installed_package_copy_wins_over_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(samples.ENV, raising=False)
    package = tmp_path / "site-packages" / "compress3d_lite"
    inside = _layout(package, "wheel")
    _layout(package.parent, "checkout")  # data_samples beside the package folder
    monkeypatch.setattr(samples, "_PACKAGE", package)
    assert data_samples() == inside
    assert (shipped_checkpoint("vae_course") / "config.json").read_text() == "wheel"


def test_a_checkout_is_used_when_the_package_carries_none(tmp_path, monkeypatch):
    monkeypatch.delenv(samples.ENV, raising=False)
    package = tmp_path / "repo" / "compress3d_lite"
    package.mkdir(parents=True)
    beside = _layout(package.parent, "checkout")
    monkeypatch.setattr(samples, "_PACKAGE", package)
    assert data_samples() == beside


def test_the_environment_variable_overrides_and_a_bad_one_is_an_error(tmp_path, monkeypatch):
    own = _layout(tmp_path / "course", "own")
    monkeypatch.setenv(samples.ENV, str(own))
    assert (shipped_checkpoint("vae_course") / "config.json").read_text() == "own"
    monkeypatch.setenv(samples.ENV, str(tmp_path / "typo"))
    with pytest.raises(SamplesNotFound, match=rf"\$C3D_DATA_SAMPLES: {re.escape(str(tmp_path / 'typo'))}"):
        data_samples()


def test_a_missing_file_names_itself_and_every_place_looked_at(tmp_path, monkeypatch):
    monkeypatch.delenv(samples.ENV, raising=False)
    package = tmp_path / "site-packages" / "compress3d_lite"
    package.mkdir(parents=True)
    monkeypatch.setattr(samples, "_PACKAGE", package)
    with pytest.raises(SamplesNotFound) as e:
        shipped_checkpoint("unet_course")
    message = str(e.value)
    assert str(package / "data_samples") in message and str(tmp_path / "site-packages" / "data_samples") in message
    _layout(package, "wheel")
    with pytest.raises(SamplesNotFound, match=r"checkpoints/unet_course: not among the shipped samples"):
        shipped_checkpoint("unet_course")


def test_the_cli_reports_missing_shipped_files_as_one_line(tmp_path, monkeypatch, capsys):
    from compress3d_lite.cli import main

    monkeypatch.setenv(samples.ENV, str(tmp_path / "nowhere"))
    assert main(["generate", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no data_samples folder found") and "\n" not in err and "C3D_DATA_SAMPLES" in err


def test_pyproject_packages_every_subpackage_and_the_data_samples():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "compress3d_lite").rglob("__init__.py")}
    assert on_disk <= set(cfg["packages"]), f"not packaged: {on_disk - set(cfg['packages'])}"
    assert cfg["package-dir"]["compress3d_lite.data_samples"] == "data_samples"
    assert cfg["package-data"]["compress3d_lite.data_samples"] == ["**/*"]


def test_kept_results_are_found_through_the_package_and_a_missing_one_is_named():
    from compress3d_lite.samples import SamplesNotFound, stored_result

    assert json.loads(stored_result("sweep_course_val.json").read_text())["best"]  # the validation sweep
    assert sorted(p.name for p in stored_result("dry_run").glob("*.json"))  # the kept dry runs
    with pytest.raises(SamplesNotFound, match=r"nope\.json: not among the stored results \(looked in installed"):
        stored_result("nope.json")
