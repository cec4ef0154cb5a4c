"""The toyshapes writer and the torch Dataset that reads what it writes."""

import hashlib

import numpy as np
import torch

from compress3d_lite.config import SampleSpec
from compress3d_lite.data.dataset import CATEGORY_NAMES, ObjectDataset
from compress3d_lite.data.io import read_index
from compress3d_lite.data.toyshapes import write_toyshapes

SPEC = SampleSpec(n_points=512, n_uniform=512, n_near=512, views=2, resolution=32)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npz"))}


def test_writer_is_reproducible_and_independent_of_workers(tmp_path):
    write_toyshapes(6, tmp_path / "a", SPEC, seed=3, workers=1, progress=False)
    write_toyshapes(6, tmp_path / "b", SPEC, seed=3, workers=2, progress=False)
    write_toyshapes(6, tmp_path / "c", SPEC, seed=4, workers=1, progress=False)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 6 and a == b
    assert not set(a.values()) & set(c.values())
    index = read_index(tmp_path / "a")
    assert [e["category"] for e in index["objects"]] == CATEGORY_NAMES[:6]
    assert index["spec"]["views"] == 2 and not list((tmp_path / "a").glob("*.tmp"))


def test_dataset_reads_what_the_writer_writes(tmp_path):
    write_toyshapes(3, tmp_path, SPEC, seed=0, workers=1, progress=False)
    ds = ObjectDataset(tmp_path, n_points=256, n_occ=300, views=True)
    item = ds[1]
    assert item["points"].shape == (256, 3) and item["colors"].shape == (256, 3)
    assert item["occ_points"].shape == (300, 3) and item["occ_labels"].dtype == torch.float32
    assert item["images"].shape == (2, 4, 32, 32) and 0 <= item["images"].min() and item["images"].max() <= 1
    assert item["category"].item() == CATEGORY_NAMES.index("table")
    # the same epoch gives the same subset, another epoch another one
    assert torch.equal(ds[1]["points"], item["points"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["points"], item["points"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["points"].shape == (3, 256, 3)


def test_full_arrays_without_subsampling(tmp_path):
    write_toyshapes(1, tmp_path, SPEC, seed=0, workers=1, progress=False)
    item = ObjectDataset(tmp_path)[0]
    assert item["points"].shape == (512, 3) and item["occ_points"].shape == (1024, 3)
    assert "images" not in item and np.isclose(item["transform"][3, 3].item(), 1.0)
