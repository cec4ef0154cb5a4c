"""Real-mesh import: colours, occupancy, data frame, bad input, determinism.

The eval-asset tests need ../shared/eval_assets (third-party meshes beside the developers'
checkout) and skip without it; everything else runs on the meshes ``sample_meshes.py`` makes.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from compress3d_lite.config import SampleSpec
from compress3d_lite.data import io, occupancy
from compress3d_lite.data.mesh_import import MeshImportError, import_files, import_mesh, load_colored_mesh, output_names
from compress3d_lite.data.occupancy import (
    fibonacci_directions,
    mesh_occupancy,
    occupancy_method,
    visibility_occupancy,
    winding_number_occupancy,
)
from compress3d_lite.data.primitives import similarity
from compress3d_lite.data.sample_meshes import (
    CRATE_KD,
    CRATE_PALETTE,
    LAMP_INDEX,
    LAMP_UNITS,
    SNOWMAN_INDEX,
    TOY_SEED,
    write_sample_meshes,
)
from compress3d_lite.data.toyshapes import make_toy_object

ROOT = Path(__file__).resolve().parents[1]
EVAL_ASSETS = ROOT.parent / "shared" / "eval_assets"
EVAL_MESHES = {  # asset folder -> file to import (all 14 third-party meshes)
    "duck": "Duck.glb", "fox": "Fox.glb", "cesium_milk_truck": "CesiumMilkTruck.glb",
    "box_textured": "BoxTextured.glb", "spot_cow_obj": "cow.obj", "spot_cow_glb": "cow.glb",
    "fuze_obj": "fuze.obj", "avocado_obj": "avocado.obj", "armchair_gltf": "armchair.gltf",
    "pizza_obj": "pizza.obj", "amsterdam_obj": "amsterdam.obj", "kenney_cake": "cakeBirthday.glb",
    "kenney_alien": "alien.glb", "colored_airplane_ply": "colored_airplane.ply",
}
SPEC = SampleSpec(n_points=1024, n_uniform=2048, n_near=2048, views=1, resolution=64)
EPS = 1e-5


def eval_path(name: str) -> Path:
    return EVAL_ASSETS / "meshes" / name / EVAL_MESHES[name]


@pytest.fixture(scope="module")
def eval_imports():
    """Every eval mesh imported once with the small spec: {asset name: arrays}."""
    if not (EVAL_ASSETS / "meshes").is_dir():
        pytest.skip("../shared/eval_assets is absent (only present next to the developers' checkout)")
    return {name: import_mesh(eval_path(name), SPEC) for name in EVAL_MESHES}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The sample meshes, written once: {file name: path}."""
    paths = write_sample_meshes(tmp_path_factory.mktemp("samples"))
    return {p.name: p for p in paths}


# ------------------------------------------------------------------------------------------
# the 14 eval meshes


@pytest.mark.parametrize("name", list(EVAL_MESHES))
def test_eval_mesh_imports_with_plausible_colours(eval_imports, name):
    ex = eval_imports[name]
    io.validate_object(ex, name)
    assert np.abs(ex["points"]).max() <= 0.9 + EPS
    extent = ex["points"].max(0) - ex["points"].min(0)
    assert extent.max() > 1.6  # the surface samples span (almost) the whole 1.8 box
    c = ex["colors"]
    assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1
    assert c.std(axis=0).max() > 0.05, "colours are (nearly) constant"
    chroma = c.max(axis=1) - c.min(axis=1)
    assert np.mean(chroma > 0.1) > 0.05, "colours are all grey/black/white"
    assert ex["images"].shape == (1, 64, 64, 4) and ex["images"][..., 3].any()
    assert str(ex["source"]) == EVAL_MESHES[name]


def test_eval_known_colours(eval_imports):
    duck = eval_imports["duck"]["colors"].mean(axis=0)
    assert duck[0] > duck[2] + 0.4 and duck[1] > duck[2] + 0.4  # yellow
    fox = eval_imports["fox"]["colors"]
    orange = (fox[:, 0] > 0.6) & (fox[:, 1] > 0.2) & (fox[:, 1] < 0.65) & (fox[:, 2] < 0.35)
    assert orange.mean() > 0.3
    cake = eval_imports["kenney_cake"]["colors"]
    assert len(np.unique(np.round(cake * 50), axis=0)) >= 4  # flat baseColorFactor colours
    plane = eval_imports["colored_airplane_ply"]["colors"]
    assert np.mean(plane[:, 2] > plane[:, 0] + 0.3) > 0.05  # the ramp's blue end ...
    assert np.mean(plane[:, 0] > plane[:, 2] + 0.3) > 0.05  # ... and its red end
    assert eval_imports["box_textured"]["colors"].std(axis=0).max() > 0.1
    # several parts keep their own colour sources (no shared atlas)
    assert len(eval_imports["kenney_cake"]["part_names"]) == 42
    assert len(eval_imports["cesium_milk_truck"]["part_names"]) == 5


def test_obj_and_glb_of_the_same_mesh_agree(eval_imports):
    """Spot as textured OBJ (SimpleMaterial) and as GLB (PBRMaterial): same points and colours."""
    obj, glb = eval_imports["spot_cow_obj"], eval_imports["spot_cow_glb"]
    np.testing.assert_allclose(obj["points"], glb["points"], atol=1e-5)
    assert np.abs(obj["colors"] - glb["colors"]).mean() < 0.02


def test_eval_occupancy(eval_imports):
    for name in ("duck", "spot_cow_obj", "colored_airplane_ply"):
        assert eval_imports[name]["occ_labels"].mean() > 0.05, name
    # the only watertight mesh: the visibility test must agree with ray parity
    ex = eval_imports["colored_airplane_ply"]
    mesh = trimesh.load(eval_path("colored_airplane_ply"), force="mesh")
    assert mesh.is_watertight
    mesh.apply_transform(ex["transform"])
    agree = mesh.contains(ex["occ_points"].astype(np.float64)) == ex["occ_labels"]
    assert agree.mean() >= 0.97


def _needs_embree():
    if occupancy_method() != "visibility":
        pytest.skip("the visibility reference needs Embree (the [fast] extra)")


def _agreement(mesh, n=20_000, seed=0) -> float:
    """Fraction of uniform + near-surface queries on which the two inside tests agree."""
    rng = np.random.default_rng(seed)
    surface, _ = trimesh.sample.sample_surface(mesh, n // 2, seed=seed)
    q = np.concatenate([rng.uniform(-1, 1, (n // 2, 3)), surface + rng.normal(0, 0.02, surface.shape)])
    return float((visibility_occupancy(mesh, q) == winding_number_occupancy(mesh, q)).mean())


def test_eval_winding_number_agrees_with_the_visibility_test(eval_imports):
    """The fallback without Embree gives the same labels on the real meshes (occupancy.py)."""
    _needs_embree()
    agree = {name: _agreement(load_colored_mesh(eval_path(name))[0].mesh) for name in EVAL_MESHES}
    assert min(agree.values()) >= 0.99, agree  # the Amsterdam block: 99.4%
    assert sum(a >= 0.9999 for a in agree.values()) >= 12, agree  # all but it and the milk truck (99.95%)


def test_eval_cake_is_deterministic_across_processes(eval_imports):
    """trimesh gives the cake's glTF nodes random name suffixes; the arrays must not change."""
    code = ("import sys, hashlib; from compress3d_lite.config import SampleSpec; "
            "from compress3d_lite.data import io; from compress3d_lite.data.mesh_import import import_mesh; "
            "spec = SampleSpec(n_points=1024, n_uniform=2048, n_near=2048, views=1, resolution=64); "
            "print(hashlib.sha256(io.npz_bytes(import_mesh(sys.argv[1], spec))).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code, str(eval_path("kenney_cake"))], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()[-1]
    assert out == hashlib.sha256(io.npz_bytes(eval_imports["kenney_cake"])).hexdigest()


# ------------------------------------------------------------------------------------------
# the visibility test on shapes with a known answer


def test_fibonacci_directions():
    d = fibonacci_directions(64)
    assert d.shape == (64, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.abs(d.mean(axis=0)).max() < 0.05  # evenly spread
    assert np.abs(d).max() < 1.0  # never axis-aligned


def test_both_inside_tests_on_known_shapes():
    for method in occupancy.METHODS:
        _known_shapes(lambda mesh, p: mesh_occupancy(mesh, p, method))
    with pytest.raises(ValueError, match="unknown occupancy method 'parity'"):
        mesh_occupancy(trimesh.creation.box(), np.zeros((1, 3)), "parity")


def test_winding_number_ignores_flipped_normals():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    sphere.invert()
    assert winding_number_occupancy(sphere, [[0, 0, 0], [0.5, 0.1, 0], [0.9, 0, 0]]).tolist() == [True, True, False]
    assert winding_number_occupancy(sphere, np.zeros((0, 3))).shape == (0,)


def test_winding_number_agrees_with_the_visibility_test_on_the_sample_meshes(samples):
    _needs_embree()
    meshes = {name: path for name, path in samples.items() if path.suffix in (".obj", ".glb", ".ply")}
    assert len(meshes) == 3
    for name, path in meshes.items():
        assert _agreement(load_colored_mesh(path)[0].mesh, n=10_000) >= 0.999, name


def test_without_embree_the_import_uses_the_winding_number(samples, tmp_path, monkeypatch):
    monkeypatch.setattr(occupancy, "ray_backend", lambda: "rtree")
    assert occupancy_method() == "winding_number"
    called = []
    monkeypatch.setattr(occupancy, "visibility_occupancy", lambda *a, **k: called.append(1))  # must not run
    entries, failures = import_files([samples["crate.obj"]], tmp_path / "imp", SPEC, progress=False)
    assert not failures and not called
    assert io.read_index(tmp_path / "imp")["occupancy"] == "winding_number"
    ex = io.load_object(tmp_path / "imp" / "crate.npz")
    assert 0.05 < ex["occ_labels"].mean() < 0.95


def _known_shapes(inside_fn):
    rng = np.random.default_rng(0)
    p = rng.uniform(-1, 1, size=(4000, 3))
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    r = np.linalg.norm(p, axis=1)
    inside = inside_fn(sphere, p)
    far = np.abs(r - 0.8) > 0.02  # away from the tessellated surface
    assert (inside[far] == (r[far] < 0.8)).all()
    # two overlapping boxes, concatenated: ray parity calls the overlap outside, visibility not
    a, b = trimesh.creation.box((1, 1, 1)), trimesh.creation.box((1, 1, 1))
    b.apply_translation((0.5, 0, 0))
    both = trimesh.util.concatenate([a, b])
    overlap = np.array([[0.25, 0.0, 0.0], [0.3, 0.1, -0.2]])
    assert inside_fn(both, overlap).all()
    # an open tube: its hollow sees the sky through the ends (outside), its wall is inside
    tube = trimesh.creation.annulus(0.3, 0.5, height=1.0)
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 0.1, 0.2], [0.4, 0.0, 0.0], [0.0, -0.4, 0.3]])
    assert inside_fn(tube, pts).tolist() == [False, False, True, True]
    # a zero-thickness sheet has no inside
    sheet = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    assert not inside_fn(sheet, p * [0.9, 0.9, 0.01]).any()


# ------------------------------------------------------------------------------------------
# sample meshes: round trip, colours


def test_sample_meshes_small_and_deterministic(samples, tmp_path):
    again = write_sample_meshes(tmp_path)
    for p in again:
        assert p.stat().st_size < 300_000
        assert p.read_bytes() == samples[p.name].read_bytes()


@pytest.mark.parametrize("name", ["crate.obj", "toy_lamp.glb", "vertex_color_snowman.ply"])
def test_round_trip_and_transform(samples, tmp_path, name):
    entries, failures = import_files([samples[name]], tmp_path, SPEC, progress=False)
    assert failures == [] and len(entries) == 1
    ex = io.load_object(tmp_path / entries[0]["file"])
    assert ex["source"] == name and ex["transform"].dtype == np.float64
    original = trimesh.load(samples[name], force="mesh", process=False)  # file's world frame
    v = trimesh.transformations.transform_points(original.vertices, ex["transform"])
    assert np.abs(v).max() <= 0.9 + EPS
    np.testing.assert_allclose((v.max(0) - v.min(0)).max(), 1.8, rtol=1e-6)
    np.testing.assert_allclose(v.max(0) + v.min(0), 0.0, atol=1e-6)  # bounding box centred
    assert io.read_index(tmp_path)["generator"] == "import"


def test_crate_texture_not_tinted_by_kd(samples):
    ex = import_mesh(samples["crate.obj"], SPEC)
    palette = CRATE_PALETTE / 255.0
    dist = np.abs(ex["colors"][:, None, :] - palette[None]).max(axis=2)  # (N, 5)
    # every sample is exactly a texel colour: not multiplied by the MTL's grey Kd
    assert dist.min(axis=1).max() < 1e-6
    tinted = np.abs(ex["colors"][:, None, :] - (palette * CRATE_KD)[None]).max(axis=2)
    assert tinted.min(axis=1).min() > 0.05
    label = dist[:, 3:].min(axis=1) < 1e-6  # the label covers 0.5 x 0.3 of every face's UVs
    assert 0.10 < label.mean() < 0.20
    assert len(np.unique(dist.argmin(axis=1))) == 5


def test_toy_lamp_glb_has_the_toy_part_colours(samples):
    toy = make_toy_object(TOY_SEED, LAMP_INDEX, category="lamp")
    cmesh, transform = load_colored_mesh(samples["toy_lamp.glb"])
    assert cmesh.part_names == toy.part_names
    # the importer undoes the node transform exactly: back in the toy's data frame
    node = similarity((10.0, 40.0, -5.0), scale=LAMP_UNITS)  # as in sample_meshes.lamp_glb_bytes
    np.testing.assert_allclose(transform @ node, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(cmesh.mesh.vertices, np.vstack([m.vertices for m in toy.meshes]), atol=1e-4)
    ex = import_mesh(samples["toy_lamp.glb"], SPEC)
    dist = np.abs(ex["colors"][:, None, :] - toy.part_colors[None]).max(axis=2)  # (N, P)
    assert dist.min(axis=1).max() < 0.02  # sRGB -> linear factor -> sRGB round trip
    for k in range(len(toy.part_names)):
        sel = ex["point_parts"] == k
        assert sel.any() and dist[sel, k].max() < 0.02


def test_vertex_colour_snowman(samples):
    toy = make_toy_object(TOY_SEED, SNOWMAN_INDEX, category="snowman")
    ex = import_mesh(samples["vertex_color_snowman.ply"], SPEC)
    dist = np.abs(ex["colors"][:, None, :] - toy.part_colors[None]).max(axis=2)
    assert dist.min(axis=1).max() < 0.01  # uint8 vertex colours, interpolated within a part
    assert ex["occ_labels"].mean() > 0.05  # a solid object


def test_import_is_deterministic(samples):
    for name in ("crate.obj", "toy_lamp.glb", "vertex_color_snowman.ply"):
        a, b = import_mesh(samples[name], SPEC, seed=3), import_mesh(samples[name], SPEC, seed=3)
        assert io.npz_bytes(a) == io.npz_bytes(b), name
    assert io.npz_bytes(import_mesh(samples[name], SPEC, seed=4)) != io.npz_bytes(a)  # seed matters


# ------------------------------------------------------------------------------------------
# bad input


def _write_bad(tmp_path, kind) -> tuple:
    """A bad input file of ``kind`` -> (path, words the message must contain)."""
    from PIL import Image

    p = tmp_path / {"missing": "nope.glb", "empty": "empty.glb", "text_obj": "notes.obj",
                    "png_ply": "picture.ply", "no_faces": "points.obj", "nan": "nan.obj",
                    "degenerate": "dot.obj", "unsupported": "model.stl"}[kind]
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text_obj":
        p.write_text("Dear diary,\nthis is not a mesh.\n")
    elif kind == "png_ply":
        Image.new("RGB", (8, 8), (255, 0, 0)).save(p, format="PNG")
    elif kind == "no_faces":
        p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    elif kind == "nan":
        p.write_text("v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n")
    elif kind == "degenerate":
        p.write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    elif kind == "unsupported":
        p.write_text("solid x\nendsolid x\n")
    words = {"missing": "no such file", "empty": "empty", "text_obj": "not a valid OBJ",
             "png_ply": "not a valid PLY", "no_faces": "no triangle faces", "nan": "NaN",
             "degenerate": "degenerate", "unsupported": "unsupported"}[kind]
    return p, words


BAD_KINDS = ["missing", "empty", "text_obj", "png_ply", "no_faces", "nan", "degenerate", "unsupported"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_raises_one_line_error(tmp_path, kind):
    path, words = _write_bad(tmp_path, kind)
    with pytest.raises(MeshImportError) as info:
        import_mesh(path, SPEC)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and words in msg


def test_import_files_good_and_bad(samples, tmp_path):
    (tmp_path / "in").mkdir()
    bad = [_write_bad(tmp_path / "in", k)[0] for k in BAD_KINDS]
    good = [samples["crate.obj"], samples["toy_lamp.glb"]]
    out = tmp_path / "out"
    entries, failures = import_files(good[:1] + bad + good[1:], out, SPEC, progress=False)
    assert [e["file"] for e in entries] == ["crate.npz", "toy_lamp.npz"]
    assert {e["source"] for e in entries} == {"crate.obj", "toy_lamp.glb"}
    assert entries[1]["n_parts"] == 3 and entries[0]["n_faces"] == 12
    assert [f[0] for f in failures] == [str(p) for p in bad]
    for path, msg in failures:
        assert "\n" not in msg and msg.startswith(path)
    assert sorted(p.name for p in out.iterdir()) == ["crate.npz", "index.json", "toy_lamp.npz"]
    assert [o["file"] for o in io.read_index(out)["objects"]] == ["crate.npz", "toy_lamp.npz"]
    # all bad: nothing written, not even index.json
    entries, failures = import_files(bad, tmp_path / "none", SPEC, progress=False)
    assert entries == [] and len(failures) == len(bad)
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())


def test_import_files_directories_and_name_clashes(samples, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "crate.ply").write_bytes(samples["vertex_color_snowman.ply"].read_bytes())
    entries, failures = import_files([samples["crate.obj"].parent, other], tmp_path / "out", SPEC,
                                     progress=False)
    assert failures == []
    assert sorted(e["file"] for e in entries) == ["crate.npz", "crate_ply.npz", "toy_lamp.npz",
                                                 "vertex_color_snowman.npz"]
    assert output_names(["a/cow.obj", "b/cow.glb", "c/cow.glb", "d/cow.glb"]) == \
        ["cow.npz", "cow_glb.npz", "cow_glb_2.npz", "cow_glb_3.npz"]
