"""``data objaverse`` (offline, --source) and the quality filter: failures recorded, resumable,
atomic, worker-independent; a bad input is one line and writes nothing.

Runs without the objaverse package and without network: the online path is only checked for
its "not installed" error. The eval-asset test needs ../shared/eval_assets and skips without it.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from compress3d_lite.cli import main
from compress3d_lite.config import SampleSpec
from compress3d_lite.data import objaverse
from compress3d_lite.data.dataset import ObjectDataset
from compress3d_lite.data.io import load_object, read_index
from compress3d_lite.data.mesh_import import import_mesh
from compress3d_lite.data.sample_meshes import write_sample_meshes
from compress3d_lite.data.toyshapes import CATEGORIES, make_toy_object, write_toyshapes

EVAL_MESHES = Path(__file__).resolve().parents[2] / "shared" / "eval_assets" / "meshes"
SMALL = ["--views", "0", "--points", "512", "--occ", "1024"]
GOOD = {"crate", "toy_lamp", "sub__vertex_color_snowman"}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Our three sample meshes (the PLY in a sub-folder) and one broken GLB."""
    src = tmp_path_factory.mktemp("src")
    write_sample_meshes(src)
    (src / "sub").mkdir()
    shutil.move(src / "vertex_color_snowman.ply", src / "sub" / "vertex_color_snowman.ply")
    (src / "broken.glb").write_bytes(b"glTF garbage \x00\x01\x02" * 20)
    return src


def run(*args):
    return main(["data", "objaverse", *map(str, args), *SMALL])


def manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def index_uids(out):
    return {e["uid"] for e in read_index(out)["objects"]}


def check_counts(m):
    c = m["counts"]
    assert c["requested"] == c["done_now"] + c["skipped_done"] + c["failed"]
    assert len(m["failures"]) == c["failed"] == sum(m["failure_kinds"].values())


def test_source_folder_records_failures_and_resumes(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--source", src, "--n", 10, "--out", out, "--workers", 1) == 2
    files = {p.stem: p for p in (out / "objects").glob("*.npz")}
    assert set(files) == GOOD
    for p in files.values():
        load_object(p)
    m = manifest(out)
    check_counts(m)
    assert m["counts"] | {"seconds": 0} == {"requested": 4, "done_now": 3, "skipped_done": 0, "failed": 1,
                                           "not_reached": 0, "filtered": 0, "total_ok": 3, "seconds": 0}
    (fail,) = m["failures"]
    assert fail["uid"] == "broken" and fail["source"].endswith("broken.glb")
    assert "broken.glb" in fail["reason"] and "not a valid GLB" in fail["reason"] and "\n" not in fail["reason"]
    assert m["failure_kinds"] == {"not a valid GLB mesh": 1}
    assert index_uids(out) == GOOD
    ds = ObjectDataset(out, n_points=256, n_occ=256)  # the folder is an ordinary dataset
    assert len(ds) == 3 and ds[0]["points"].shape == (256, 3)
    assert not list(out.rglob("*.tmp"))
    std = capsys.readouterr()
    assert "3 done now" in std.out and "1 failed" in std.out and "broken.glb" in std.err

    # (b) the same command again: nothing redone, files untouched
    mtimes = {u: p.stat().st_mtime_ns for u, p in files.items()}
    assert run("--source", src, "--n", 10, "--out", out, "--workers", 1) == 2
    m = manifest(out)
    check_counts(m)
    assert (m["counts"]["skipped_done"], m["counts"]["done_now"], m["counts"]["failed"]) == (3, 0, 1)
    assert {u: p.stat().st_mtime_ns for u, p in files.items()} == mtimes
    assert index_uids(out) == GOOD

    # a damaged object is redone, byte for byte as before (its seed depends only on seed + uid)
    before = files["crate"].read_bytes()
    files["crate"].write_bytes(b"not a zip")
    assert run("--source", src, "--n", 10, "--out", out, "--workers", 1) == 2
    assert (manifest(out)["counts"]["done_now"], manifest(out)["counts"]["skipped_done"]) == (1, 2)
    assert files["crate"].read_bytes() == before


def test_uids_file_with_missing_uid(src, tmp_path):
    uids = tmp_path / "uids.txt"
    uids.write_text("# chosen objects\ncrate\n\nnope   # not in the folder\ntoy_lamp\ncrate\n")
    out = tmp_path / "out"
    assert run("--source", src, "--uids", uids, "--out", out, "--workers", 1) == 2
    m = manifest(out)
    check_counts(m)
    assert (m["counts"]["requested"], m["counts"]["done_now"], m["counts"]["failed"]) == (3, 2, 1)
    assert m["failures"][0]["uid"] == "nope" and "not found in" in m["failures"][0]["reason"]
    assert m["failure_kinds"] == {"not found in SOURCE": 1}
    assert index_uids(out) == {"crate", "toy_lamp"}
    uids.write_text("toy_lamp\n")  # everything succeeds: exit code 0
    assert run("--source", src, "--uids", uids, "--out", tmp_path / "out2", "--workers", 1) == 0


@pytest.mark.parametrize("case", ["missing uids", "empty uids", "missing source", "no package", "other settings"])
def test_bad_input_is_one_line_and_writes_nothing(src, tmp_path, capsys, case):
    out, uids = tmp_path / "out", tmp_path / "uids.txt"
    if case == "missing uids":
        args, named = ["--source", src, "--uids", uids], str(uids)
    elif case == "empty uids":
        uids.write_text("# nothing\n\n")
        args, named = ["--source", src, "--uids", uids], str(uids)
    elif case == "missing source":
        args, named = ["--source", tmp_path / "nowhere", "--n", 2], str(tmp_path / "nowhere")
    elif case == "no package":
        if _has_objaverse():
            pytest.skip("the objaverse package is installed")
        args, named = ["--n", 2], "pip install -e '.[full]'"
    else:  # resuming into a folder made with another seed
        uids.write_text("toy_lamp\n")
        assert run("--source", src, "--uids", uids, "--out", out, "--workers", 1) == 0
        capsys.readouterr()
        before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
        args, named = ["--source", src, "--uids", uids, "--seed", 5], "seed 0 -> 5"
    code = run(*args, "--out", out, "--workers", 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and named in err[0]
    if case == "other settings":
        assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    else:
        assert not out.exists()


def _has_objaverse():
    import importlib.util

    return importlib.util.find_spec("objaverse") is not None


def test_online_path_with_a_stand_in_package(src, tmp_path, monkeypatch):
    """The objaverse calls, with a stand-in module: uids sorted, downloads only what is not done."""
    import sys
    import types

    asked = []
    files = {"b1": src / "crate.obj", "a0": src / "toy_lamp.glb"}  # "c2" never downloads

    def load_objects(uids, download_processes):
        asked.append((list(uids), download_processes))
        return {u: str(files[u]) for u in uids if u in files}

    fake = types.SimpleNamespace(load_uids=lambda: ["c2", "b1", "a0", "d3"], load_objects=load_objects)
    monkeypatch.setitem(sys.modules, "objaverse", fake)
    out = tmp_path / "out"
    assert run("--n", 3, "--out", out, "--workers", 1) == 2
    assert asked == [(["a0", "b1", "c2"], 1)]
    m = manifest(out)
    check_counts(m)
    assert m["failure_kinds"] == {"download failed": 1} and m["failures"][0]["uid"] == "c2"
    assert index_uids(out) == {"a0", "b1"}
    assert run("--n", 3, "--out", out, "--workers", 1) == 2  # resumed: only the failed one is asked for
    assert asked[1] == (["c2"], 1) and manifest(out)["counts"]["skipped_done"] == 2


def test_interrupted_run_leaves_no_partial_files_and_resumes(src, tmp_path, monkeypatch):
    out, calls, real = tmp_path / "out", [], objaverse.import_mesh

    def interrupt_third(path, spec, seed):  # sorted order: broken, crate, sub__..., toy_lamp
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, spec, seed)

    monkeypatch.setattr(objaverse, "import_mesh", interrupt_third)
    assert run("--source", src, "--n", 10, "--out", out, "--workers", 1) == 130
    assert [p.stem for p in (out / "objects").glob("*.npz")] == ["crate"]
    assert not list(out.rglob("*.tmp"))
    assert manifest(out)["interrupted"] and manifest(out)["counts"]["not_reached"] == 2
    monkeypatch.setattr(objaverse, "import_mesh", real)
    assert run("--source", src, "--n", 10, "--out", out, "--workers", 1) == 2
    c = manifest(out)["counts"]
    assert (c["skipped_done"], c["done_now"], c["failed"], c["total_ok"]) == (1, 2, 1, 3)


def test_timeout_is_a_recorded_failure(src, tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(objaverse, "import_mesh", lambda *a: time.sleep(10))
    uids = tmp_path / "uids.txt"
    uids.write_text("crate\n")
    t0 = time.time()
    assert run("--source", src, "--uids", uids, "--out", tmp_path / "out", "--workers", 1, "--timeout", 0.3) == 2
    assert time.time() - t0 < 5
    m = manifest(tmp_path / "out")
    assert m["failure_kinds"] == {"timeout": 1} and "timed out" in m["failures"][0]["reason"]
    assert not (tmp_path / "out" / "index.json").exists()  # nothing succeeded, nothing before


def test_eval_assets_with_two_workers(tmp_path):
    if not EVAL_MESHES.is_dir():
        pytest.skip("../shared/eval_assets is absent (only present next to the developers' checkout)")
    out = tmp_path / "out"
    code = run("--source", EVAL_MESHES, "--n", 100, "--out", out, "--workers", 2)
    m = manifest(out)
    check_counts(m)
    assert m["counts"]["requested"] == 14 and m["counts"]["total_ok"] >= 12
    assert code == (2 if m["counts"]["failed"] else 0)
    assert "duck__Duck" in index_uids(out) and "spot_cow_obj__cow" in index_uids(out)
    # a worker's object is the same as an inline import with the object's own seed
    spec = SampleSpec(views=0, n_points=512, n_uniform=512, n_near=512)
    inline = import_mesh(EVAL_MESHES / "duck" / "Duck.glb", spec, objaverse.object_seed(0, "duck__Duck"))
    stored = load_object(out / "objects" / "duck__Duck.npz")
    for k in ("points", "colors", "occ_points", "occ_labels"):
        np.testing.assert_array_equal(stored[k], inline[k])


def _write_toy_ply(path, seed, category):
    """A toy object as a PLY with per-vertex colours (a stand-in for a downloaded model)."""
    obj = make_toy_object(seed, list(CATEGORIES).index(category))
    parts = []
    for m, c in zip(obj.meshes, obj.part_colors):
        m = m.copy()
        m.visual.vertex_colors = np.tile((np.r_[c, 1] * 255).astype(np.uint8), (len(m.vertices), 1))
        parts.append(m)
    trimesh.util.concatenate(parts).export(path)


def test_quality_filter_learns_and_filters(tmp_path):
    good, bad = ("lamp", "rocket", "house"), ("chair", "car", "table")
    entries = write_toyshapes(84, tmp_path / "toy", SampleSpec(views=0, n_points=512, n_uniform=512, n_near=512),
                              seed=0, workers=1, progress=False)
    labels = ["uid,label"] + [f"{Path(e['file']).stem},{'good' if e['category'] in good else 'bad'}"
                              for e in entries if e["category"] in good + bad]
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    (tmp_path / "bad.csv").write_text("uid,label\n000000,good\n000001,maybe\n")
    cls = tmp_path / "cls"
    assert main(["data", "quality-filter", "train", "--data", str(tmp_path / "toy"), "--labels",
                 str(tmp_path / "bad.csv"), "--out", str(cls)]) == 2 and not cls.exists()
    assert main(["data", "quality-filter", "train", "--data", str(tmp_path / "toy"), "--labels",
                 str(tmp_path / "labels.csv"), "--out", str(cls)]) == 0
    report = json.loads((cls / "config.json").read_text())["report"]
    assert report["n_train"] + report["n_val"] == 36 and report["val_majority_baseline"] == 0.5
    assert report["val_accuracy"] >= 0.75 and report["train_accuracy"] >= 0.9
    assert (cls / "model.safetensors").exists()

    src = tmp_path / "src"
    src.mkdir()
    for seed in (1, 2):  # toy objects the classifier has not seen, as mesh files
        for c in good + bad:
            _write_toy_ply(src / f"{c}_{seed}.ply", seed, c)
    out = tmp_path / "out"
    assert run("--source", src, "--n", 100, "--out", out, "--workers", 1) == 0
    assert len(index_uids(out)) == 12
    assert run("--source", src, "--n", 100, "--out", out, "--workers", 1, "--filter", cls) == 0  # resume + filter
    m = manifest(out)
    assert m["counts"]["skipped_done"] == 12 and m["counts"]["filtered"] == len(m["filtered"]) > 0
    kept, dropped = index_uids(out), {f["uid"] for f in m["filtered"]}
    assert kept | dropped == {p.stem for p in src.glob("*.ply")} and not kept & dropped
    assert all(f["score"] < 0.5 and f["reason"].startswith("filtered: score ") for f in m["filtered"])
    assert all(e["quality_score"] >= 0.5 for e in read_index(out)["objects"])
    assert {u.rsplit("_", 1)[0] for u in kept} <= set(good)  # the bad-scored ones are the bad categories
    assert len(kept) >= 4
    assert len(list((out / "objects").glob("*.npz"))) == 12  # filtered objects stay on disk (a new threshold can use them)
