"""Where the shipped files are: course checkpoints, toy objects, sample meshes (docs/design.md §6.1).

The repository's ``data_samples/`` folder is found by one rule, the same for every kind of install:

1. ``$C3D_DATA_SAMPLES``, when set: a folder laid out like ``data_samples/`` (for example a clone's,
   or a course's own retrained checkpoints). When it is set, nothing else is looked at.
2. ``compress3d_lite/data_samples/`` inside the installed package: a wheel, ``pip install .``,
   ``pip install git+URL`` and the Colab setup cell all carry ``data_samples/`` there
   (``pyproject.toml`` maps it into the package).
3. ``data_samples/`` beside the package folder: a source checkout or an editable install
   (``pip install -e .``).

The first folder that exists is used. Asking for a file that is not there raises
``SamplesNotFound`` naming the file and every place that was looked at.

    from compress3d_lite.samples import sample_path, shipped_checkpoint, stored_result
    sample_path("toyshapes", "images", "000003_0.png")   # a toy render
    shipped_checkpoint("vae_course")                      # a checkpoint folder
    stored_result("sweep_course_val.json")                # a kept measurement (benchmarks/results)

The kept measurements of ``benchmarks/results/`` (the validation sweep, the test-split reports, the
dry runs, the paper-format tables) travel the same way, as ``compress3d_lite/results/`` inside the
installed package, or ``benchmarks/results/`` beside the package folder in a source checkout, so a
notebook copied anywhere (Colab) shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "C3D_DATA_SAMPLES"
_PACKAGE = Path(__file__).resolve().parent


class SamplesNotFound(FileNotFoundError):
    """A shipped file or folder that is in none of the places of the rule above."""


def search_order() -> list[tuple[str, Path]]:
    """(where, folder) in the order they are tried; only the environment variable when it is set."""
    value = os.environ.get(ENV, "").strip()
    if value:
        return [(f"${ENV}", Path(value).expanduser())]
    return [("installed package", _PACKAGE / "data_samples"), ("source checkout", _PACKAGE.parent / "data_samples")]


def _looked_in() -> str:
    return "; ".join(f"{where}: {folder}" for where, folder in search_order())


def data_samples() -> Path:
    """The ``data_samples`` folder in use (the first of ``search_order()`` that exists)."""
    for _, folder in search_order():
        if folder.is_dir():
            return folder
    hint = (f"set {ENV} to a folder laid out like the repository's data_samples/" if os.environ.get(ENV)
            else f"reinstall the package (pip install .) or set {ENV} to a clone's data_samples/ folder")
    raise SamplesNotFound(f"no data_samples folder found (looked in {_looked_in()}); {hint}")


def sample_path(*parts: str) -> Path:
    """A file or folder under ``data_samples/``; ``SamplesNotFound`` when it is missing."""
    path = data_samples().joinpath(*parts)
    if not path.exists():
        raise SamplesNotFound(f"{Path(*parts)}: not among the shipped samples (looked in {_looked_in()})")
    return path


def shipped_checkpoint(name: str) -> Path:
    """The folder of a shipped checkpoint, e.g. ``vae_course``, ``embed_course``, ``unet_course``."""
    return sample_path("checkpoints", name)


def stored_result(*parts: str) -> Path:
    """A kept measurement under ``benchmarks/results/`` (installed as ``compress3d_lite/results/``);
    ``SamplesNotFound`` naming both places when it is in neither."""
    places = [("installed package", _PACKAGE / "results"), ("source checkout", _PACKAGE.parent / "benchmarks" / "results")]
    for _, folder in places:
        if folder.joinpath(*parts).exists():
            return folder.joinpath(*parts)
    raise SamplesNotFound(f"{Path(*parts)}: not among the stored results (looked in "
                          + "; ".join(f"{where}: {folder}" for where, folder in places) + ")")
