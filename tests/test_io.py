"""The object .npz format: validation, atomic writes, reproducible bytes."""

import os

import numpy as np
import pytest

from compress3d_lite.data.io import (
    DataFormatError,
    atomic_write_bytes,
    load_object,
    npz_bytes,
    read_index,
    save_object,
    write_index,
)


def _obj(n=10, m=20):
    rng = np.random.default_rng(0)
    return {"points": rng.random((n, 3), dtype=np.float32), "colors": rng.random((n, 3), dtype=np.float32),
            "occ_points": rng.random((m, 3), dtype=np.float32), "occ_labels": rng.random(m) > 0.5,
            "transform": np.eye(4), "category": np.array("mug")}


def test_round_trip(tmp_path):
    save_object(tmp_path / "a.npz", _obj())
    back = load_object(tmp_path / "a.npz")
    assert back["category"] == "mug"
    for k, v in _obj().items():
        if k != "category":
            np.testing.assert_array_equal(back[k], v)


def test_bytes_do_not_depend_on_time(tmp_path, monkeypatch):
    a = npz_bytes(_obj())
    import time
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    monkeypatch.setattr(time, "localtime", lambda *a: (2033, 5, 18, 3, 33, 20, 2, 138, 0))
    assert npz_bytes(_obj()) == a


@pytest.mark.parametrize("breakage, message", [
    (lambda o: o.pop("occ_labels"), "missing array 'occ_labels'"),
    (lambda o: o.update(points=o["points"].astype(np.float64)), "'points' should be float32"),
    (lambda o: o.update(colors=o["colors"][:5]), "points/colors"),
    (lambda o: o["points"].__setitem__((0, 0), np.nan), "non-finite"),
    (lambda o: o.update(images=np.zeros((1, 4, 4, 4), np.uint8)), "views need all of"),
])
def test_invalid_objects_are_refused_and_nothing_is_written(tmp_path, breakage, message):
    obj = _obj()
    breakage(obj)
    with pytest.raises(DataFormatError, match=message):
        save_object(tmp_path / "bad.npz", obj)
    assert os.listdir(tmp_path) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x.bin", object())  # not bytes: write fails midway
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, message", [(b"", "not a readable .npz"), (b"hello", "not a readable .npz")])
def test_corrupt_files_name_the_file(tmp_path, content, message):
    p = tmp_path / "obj.npz"
    p.write_bytes(content)
    with pytest.raises(DataFormatError, match=f"{p}.*{message}"):
        load_object(p)
    with pytest.raises(DataFormatError, match="no such file"):
        load_object(tmp_path / "missing.npz")


def test_index_round_trip_and_wrong_format(tmp_path):
    write_index(tmp_path, [{"file": "a.npz"}], generator="test")
    with pytest.raises(DataFormatError, match="'a.npz', which does not exist"):
        read_index(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"")
    assert read_index(tmp_path)["objects"] == [{"file": "a.npz"}]
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(DataFormatError, match="expected"):
        read_index(tmp_path)
    with pytest.raises(DataFormatError, match="missing"):
        read_index(tmp_path / "nowhere")
